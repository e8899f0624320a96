//! The daemon's control socket (`<state-dir>/control.sock`, a Unix stream
//! socket only root can open) and `portproxy mappings`, its first client.
//!
//! The protocol is one request line, answered with one JSON document, then the
//! connection closes: `mappings` returns the mapping table as a JSON array of
//! [`View`]s. A JSON API or a web page can sit on this later.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use log::debug;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::mapping::{Mappings, View};

/// A request line longer than this is refused (and the connection closed).
const MAX_REQUEST: u64 = 256;
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
pub async fn serve(listener: UnixListener, mappings: Arc<Mappings>) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("control socket")?;
        let mappings = mappings.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &mappings).await {
                debug!("control socket: {e:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, mappings: &Mappings) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(read).take(MAX_REQUEST).read_line(&mut line),
    )
    .await
    .context("no request")??;
    let reply = match line.trim() {
        "mappings" => serde_json::to_string(&mappings.list().await)?,
        other => serde_json::to_string(
            &serde_json::json!({ "error": format!("unknown request {other:?}") }),
        )?,
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
}
