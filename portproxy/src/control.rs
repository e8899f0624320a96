//! The daemon's control socket (`<state-dir>/control.sock`, a Unix stream
//! socket only root can open) and its clients, `portproxy mappings` and `portproxy forward`.
//!
//! The protocol is one request line, answered with one JSON document, then the
//! connection closes:
//! - `mappings`: the mapping table, a JSON array of [`View`]s;
//! - `forwards`: the manual forwards, a JSON array of `forwards::View`s;
//! - `forward-add {SPEC}`: adds the forward `forwards::Spec` (JSON), answers its view;
//! - `forward-change HOST:PORT/PROTO {SPEC}`: changes that forward to SPEC, answers its view;
//! - `forward-del HOST:PORT/PROTO`: deletes a forward, answers `{"deleted": "..."}`.
//!
//! What is refused is answered `{"error": "why"}`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use log::debug;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cli::ForwardCommand;
use crate::forwards::{self, Forwards, Spec, Status};
use crate::mapping::{Key, Mappings, View};

/// A request line longer than this is refused (and the connection closed): room for a
/// forward with the longest description, escaped.
const MAX_REQUEST: u64 = 2048;
/// A client that sends nothing for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Binds the control socket, replacing one a killed run left behind.
pub fn bind(state_dir: &Path) -> Result<UnixListener> {
    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let path = socket_path(state_dir);
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Answers requests until the task is stopped; each connection on its own task.
pub async fn serve(
    listener: UnixListener,
    mappings: Arc<Mappings>,
    forwards: Arc<Forwards>,
) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("control socket")?;
        let mappings = mappings.clone();
        let forwards = forwards.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &mappings, &forwards).await {
                debug!("control socket: {e:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, mappings: &Mappings, forwards: &Forwards) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(read).take(MAX_REQUEST).read_line(&mut line),
    )
    .await
    .context("no request")??;
    let error = |why: String| serde_json::json!({ "error": why }).to_string();
    let request = line.trim();
    let (verb, argument) = request.split_once(' ').unwrap_or((request, ""));
    let reply = match verb {
        "mappings" => serde_json::to_string(&mappings.list().await)?,
        "forwards" => serde_json::to_string(&forwards.list().await)?,
        "forward-add" => match serde_json::from_str::<Spec>(argument) {
            Ok(spec) => match forwards.add(&spec).await {
                Ok(view) => serde_json::to_string(&view)?,
                Err(e) => error(e.to_string()),
            },
            Err(e) => error(format!("not a forward: {e}")),
        },
        "forward-change" => {
            let (key, spec) = argument.split_once(' ').unwrap_or((argument, ""));
            match (key.parse::<Key>(), serde_json::from_str::<Spec>(spec)) {
                (Ok(key), Ok(spec)) => match forwards.change(&key, &spec).await {
                    Ok(view) => serde_json::to_string(&view)?,
                    Err(e) => error(e.to_string()),
                },
                (Err(e), _) => error(e),
                (_, Err(e)) => error(format!("not a forward: {e}")),
            }
        }
        "forward-del" => match argument.parse::<Key>() {
            Ok(key) => match forwards.delete(&key).await {
                Ok(()) => serde_json::json!({ "deleted": key.to_string() }).to_string(),
                Err(e) => error(e.to_string()),
            },
            Err(e) => error(e),
        },
        other => error(format!("unknown request {other:?}")),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    Ok(())
}

/// Removes the socket file (at exit).
pub fn remove(state_dir: &Path) {
    let _ = fs::remove_file(socket_path(state_dir));
}

/// `portproxy mappings [--json]`.
pub fn show_mappings(state_dir: &Path, json: bool) -> Result<()> {
    let text = request(state_dir, "mappings")?;
    if json {
        print!("{text}");
        return Ok(());
    }
    let views: Vec<View> =
        serde_json::from_str(&text).with_context(|| format!("the daemon answered {text:?}"))?;
    print!("{}", table(&views));
    Ok(())
}

/// `portproxy forward add|list|del`.
pub fn forward(state_dir: &Path, command: &ForwardCommand) -> Result<()> {
    match command {
        ForwardCommand::Add {
            target,
            external,
            description,
        } => {
            let spec = Spec {
                host: target.host,
                internal_port: target.internal_port,
                protocol: target.proto.name().to_string(),
                external_port: external.0,
                description: description.clone(),
            };
            let view = answer_or_error(&request(
                state_dir,
                &format!("forward-add {}", serde_json::to_string(&spec)?),
            )?)?;
            let view = settled(state_dir, view)?;
            println!("forward {target} added: {}", show_status(&view.status));
        }
        ForwardCommand::Change {
            target,
            external,
            description,
        } => {
            let all: Vec<forwards::View> = answer_or_error(&request(state_dir, "forwards")?)?;
            let Some(mut spec) = all
                .into_iter()
                .map(|v| v.forward)
                .find(|f| f.forward().is_ok_and(|f| f.key == *target))
            else {
                bail!("there is no forward of {target} (see `portproxy forward list`)");
            };
            if let Some(external) = external {
                spec.external_port = external.0;
            }
            if let Some(description) = description {
                spec.description = description.clone();
            }
            let request_line = format!("forward-change {target} {}", serde_json::to_string(&spec)?);
            let view = settled(
                state_dir,
                answer_or_error(&request(state_dir, &request_line)?)?,
            )?;
            println!("forward {target} changed: {}", show_status(&view.status));
        }
        ForwardCommand::List { json } => {
            let text = request(state_dir, "forwards")?;
            let views: Vec<forwards::View> = answer_or_error(&text)?;
            match json {
                true => print!("{text}"),
                false => print!("{}", forward_table(&views)),
            }
        }
        ForwardCommand::Del { target } => {
            let _: serde_json::Value =
                answer_or_error(&request(state_dir, &format!("forward-del {target}"))?)?;
            println!("forward {target} deleted");
        }
    }
    Ok(())
}

/// `view` once the CGN was asked for it: that takes a moment (up to 1.75 s when the CGN does
/// not answer), and "active" or "failed" says more than "pending".
fn settled(state_dir: &Path, mut view: forwards::View) -> Result<forwards::View> {
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while matches!(view.status, Status::Pending { .. }) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let all: Vec<forwards::View> = answer_or_error(&request(state_dir, "forwards")?)?;
        match all.into_iter().find(|v| v.forward == view.forward) {
            Some(now) => view = now,
            None => break,
        }
    }
    Ok(view)
}

/// The daemon's answer as `T`, or its `{"error": ...}` as an error.
fn answer_or_error<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("the daemon answered {text:?}"))?;
    if let Some(why) = value.get("error").and_then(|e| e.as_str()) {
        bail!("{why}");
    }
    serde_json::from_value(value).with_context(|| format!("the daemon answered {text:?}"))
}

fn show_status(status: &Status) -> String {
    match status {
        Status::Active {
            external,
            expires_in_secs,
        } => match expires_in_secs {
            Some(secs) => format!("active at {external} (grant: {secs}s left, renewed at half)"),
            None => format!("active at {external}"),
        },
        Status::Pending { reason } => format!("pending: {reason}"),
        Status::Failed {
            reason,
            retry_in_secs,
        } => format!("failed: {reason} (trying again in {retry_in_secs}s)"),
    }
}

/// The text form of the forwards: one line each.
fn forward_table(views: &[forwards::View]) -> String {
    if views.is_empty() {
        return "no forwards\n".to_string();
    }
    let mut out = format!(
        "{:<24} {:<8} {:<24} {}\n",
        "forward", "wanted", "description", "status"
    );
    for v in views {
        let f = &v.forward;
        out += &format!(
            "{:<24} {:<8} {:<24} {}\n",
            format!("{}:{}/{}", f.host, f.internal_port, f.protocol),
            f.external_port.map_or("any".to_string(), |p| p.to_string()),
            format!("{:?}", f.description),
            show_status(&v.status),
        );
    }
    out
}

fn request(state_dir: &Path, what: &str) -> Result<String> {
    use std::io::{Read, Write};
    let path = socket_path(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {} (is portproxy running with --state-dir {}?)",
            path.display(),
            state_dir.display()
        )
    })?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.write_all(format!("{what}\n").as_bytes())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .context("reading the daemon's answer")?;
    if reply.is_empty() {
        bail!("the daemon closed the control socket without an answer");
    }
    Ok(reply)
}

/// The text form: one line per mapping.
fn table(views: &[View]) -> String {
    if views.is_empty() {
        return "no mappings\n".to_string();
    }
    let mut out = format!(
        "{:<22} {:<5} {:<22} {:>8}  {:<12} {:<8} {}\n",
        "LAN host", "proto", "external", "expires", "origin", "upstream", "client"
    );
    for v in views {
        out += &format!(
            "{:<22} {:<5} {:<22} {:>8}  {:<12} {:<8} {}{}\n",
            format!("{}:{}", v.host, v.internal_port),
            v.protocol,
            format!("{}:{}", v.external_address, v.external_port),
            v.expires_in_secs
                .map_or("never".to_string(), |s| format!("{s}s")),
            v.origin,
            match v.local_port {
                // Double NAT: the CGN maps to this router's port, forwarded to the host.
                Some(port) => format!("{} :{port}", v.upstream),
                None => v.upstream.clone(),
            },
            v.client,
            v.description
                .as_ref()
                .map_or(String::new(), |d| format!(" {d:?}")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    #[test]
    fn text_table_has_one_line_per_mapping() {
        assert_eq!(table(&[]), "no mappings\n");
        let v = View {
            host: Ipv4Addr::new(192, 168, 1, 2),
            internal_port: 8080,
            protocol: "tcp".into(),
            external_address: Ipv4Addr::new(203, 0, 114, 1),
            external_port: 9080,
            expires_in_secs: Some(599),
            origin: "nat-pmp".into(),
            nonce: None,
            description: None,
            upstream: "relayed".into(),
            client: SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 40000),
            local_port: None,
            first_seen_secs_ago: 1,
            last_seen_secs_ago: 1,
        };
        let double_nat = View {
            local_port: Some(9081),
            upstream: "pcp-map".into(),
            ..v.clone()
        };
        assert!(table(&[double_nat]).contains("pcp-map :9081"));
        let text = table(&[v]);
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("192.168.1.2:8080"), "{text}");
        assert!(text.contains("203.0.114.1:9080"), "{text}");
        assert!(text.contains("599s"), "{text}");
    }

    #[test]
    fn forward_table_says_the_status() {
        assert_eq!(forward_table(&[]), "no forwards\n");
        let forward = Spec {
            host: Ipv4Addr::new(192, 168, 1, 2),
            internal_port: 8080,
            protocol: "tcp".into(),
            external_port: None,
            description: "web".into(),
        };
        let views = [
            forwards::View {
                forward: forward.clone(),
                status: Status::Active {
                    external: SocketAddrV4::new(Ipv4Addr::new(203, 0, 114, 1), 9080),
                    expires_in_secs: Some(3599),
                },
            },
            forwards::View {
                forward: Spec {
                    external_port: Some(22),
                    ..forward
                },
                status: Status::Failed {
                    reason: "the CGN does not answer".into(),
                    retry_in_secs: 4,
                },
            },
        ];
        let text = forward_table(&views);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("192.168.1.2:8080/tcp"), "{text}");
        assert!(text.contains("any"), "{text}");
        assert!(text.contains("active at 203.0.114.1:9080"), "{text}");
        assert!(
            text.contains("failed: the CGN does not answer (trying again in 4s)"),
            "{text}"
        );
        // The JSON API's form of a status: tagged by state.
        let json = serde_json::to_value(&views[0]).unwrap();
        assert_eq!(json["status"]["state"], "active");
        assert_eq!(json["status"]["external"], "203.0.114.1:9080");
        assert_eq!(json["external_port"], serde_json::Value::Null);
    }
}
