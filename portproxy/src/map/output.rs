//! What `portproxy map` prints: one line per event on stdout, as text or (`--json`) as one
//! JSON object; failures it keeps trying after, and the final error, also on stderr.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde_json::{Value, json};

use crate::proto::Transport;
use crate::upstream::{Failure, Via};

/// The protocol's name for people.
pub fn title(via: Via) -> &'static str {
    match via {
        Via::Pcp => "PCP",
        Via::NatPmp => "NAT-PMP",
        Via::Upnp => "UPnP IGD",
    }
}

/// The protocol's name in JSON.
fn id(via: Via) -> &'static str {
    match via {
        Via::Pcp => "pcp",
        Via::NatPmp => "nat-pmp",
        Via::Upnp => "upnp",
    }
}

/// The mapping being printed: what is the same in every event.
#[derive(Debug, Clone, Copy)]
pub struct Subject {
    pub via: Via,
    pub transport: Transport,
    pub internal: SocketAddrV4,
    pub gateway: Ipv4Addr,
}

impl Subject {
    fn json(&self, event: &str) -> Value {
        json!({
            "event": event,
            "protocol": id(self.via),
            "transport": self.transport.name(),
            "internal": self.internal.to_string(),
            "gateway": self.gateway.to_string(),
        })
    }

    fn text(&self) -> String {
        format!(
            "{} ({} via {})",
            self.internal,
            title(self.via),
            self.gateway
        )
    }
}

pub struct Printer {
    pub json: bool,
}

impl Printer {
    /// A grant: `event` is mapped, renewed, recreated or changed (`before`: the old external).
    pub fn granted(
        &self,
        subject: &Subject,
        event: &str,
        external: SocketAddrV4,
        lifetime: u32,
        before: Option<SocketAddrV4>,
    ) {
        if self.json {
            let mut v = subject.json(event);
            v["external"] = json!(external.to_string());
            v["external_address"] = json!(external.ip().to_string());
            v["external_port"] = json!(external.port());
            v["lifetime"] = json!(lifetime);
            if let Some(before) = before {
                v["previous"] = json!(before.to_string());
            }
            println!("{v}");
            return;
        }
        let what = match (event, before) {
            ("changed", Some(before)) => format!("changed (was {before}):"),
            ("recreated", _) => "re-created (the gateway had lost it):".to_string(),
            (event, _) => event.to_string(),
        };
        println!(
            "{what} {} {external} -> {}, lifetime {lifetime} s",
            subject.transport.name(),
            subject.text()
        );
    }

    /// The mapping was deleted (`external`: the port it had, where known).
    pub fn deleted(&self, subject: &Subject, external: Option<u16>) {
        if self.json {
            let mut v = subject.json("deleted");
            if let Some(port) = external {
                v["external_port"] = json!(port);
            }
            println!("{v}");
            return;
        }
        let port = external.map(|p| format!(" port {p}")).unwrap_or_default();
        println!(
            "deleted {}{port} -> {}",
            subject.transport.name(),
            subject.text()
        );
    }

    /// A renewal failed; tried again in `retry_in`.
    pub fn failed(&self, subject: &Subject, failure: Failure, retry_in: Duration) {
        let secs = retry_in.as_secs();
        if self.json {
            let mut v = subject.json("failed");
            v["error"] = json!(failure.to_string());
            v["retry_in"] = json!(secs);
            println!("{v}");
        }
        eprintln!(
            "portproxy map: renewing {} {}: {failure}; trying again in {secs} s",
            subject.transport.name(),
            subject.text()
        );
    }

    /// The error that ends the command, with its exit status.
    pub fn error(&self, message: &str, status: u8) {
        if self.json {
            println!(
                "{}",
                json!({"event": "error", "error": message, "exit": status})
            );
        }
        eprintln!("portproxy map: {message}");
    }
}
