//! The daemon's status file (`<state-dir>/status.json`): which data path runs,
//! why, on which hooks, and the daemon's counters. Rewritten every second;
//! `portproxy stats` reads it next to the pinned maps.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::upstream::Speaks;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPathKind {
    FastPath,
    Sockets,
    /// Nothing relays: see `State`.
    Stopped,
}

/// What the daemon is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum State {
    Relaying,
    /// For something that can still appear: an interface, its address, the route to the CGN.
    WaitingFor(String),
    /// Building the data path failed (why); tried again with backoff.
    Retrying(String),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Relaying => write!(f, "relaying"),
            State::WaitingFor(what) => write!(f, "waiting for {what}"),
            State::Retrying(why) => write!(f, "retrying: {why}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    #[serde(flatten)]
    pub state: State,
    /// When the daemon entered `state`, in seconds since the Unix epoch.
    pub since: u64,
    /// When the daemon started, in seconds since the Unix epoch.
    #[serde(default)]
    pub started: u64,
    pub data_path: DataPathKind,
    /// Why `--xdp` ended up on sockets, if it did.
    pub fallback_reason: Option<String>,
    /// Where each eBPF program is attached (empty on sockets).
    pub hooks: Vec<String>,
    /// Where the maps are pinned (fast path only).
    pub pin_dir: Option<PathBuf>,
    /// The daemon's counters by id (`stats::Counter`): the socket relay's, the mapping
    /// table's, entries aged out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, u64>,
    /// Mappings in the table now.
    #[serde(default)]
    pub mappings: usize,
    /// What the CGN answered when last probed (none before the first probe).
    #[serde(default)]
    pub cgn_speaks: Option<Speaks>,
    /// Who answers NAT-PMP and PCP clients (see `upstream::Plan`).
    #[serde(default)]
    pub port_control: Option<String>,
    /// Whether the router translates the LAN itself (`--double-nat`), so every mapping is
    /// answered here and forwarded from the WAN address.
    #[serde(default)]
    pub double_nat: bool,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

impl Status {
    /// Replaces the file atomically, so a reader never sees half of it.
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let tmp = state_dir.join("status.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path(state_dir))
            .with_context(|| format!("writing {}", path(state_dir).display()))
    }

    pub fn read(state_dir: &Path) -> Result<Status> {
        let file = path(state_dir);
        let text = fs::read(&file).with_context(|| {
            format!(
                "reading {} (is portproxy running with --state-dir {}?)",
                file.display(),
                state_dir.display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", file.display()))
    }

    pub fn remove(state_dir: &Path) {
        let _ = fs::remove_file(path(state_dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("portproxy-status-{}", std::process::id()));
        let status = Status {
            pid: 7,
            state: State::WaitingFor("softwire to come up".into()),
            since: 1_700_000_000,
            started: 1_699_999_000,
            data_path: DataPathKind::Sockets,
            fallback_reason: Some("no BPF".into()),
            hooks: vec![],
            pin_dir: None,
            counters: BTreeMap::from([("x".to_string(), 3)]),
            mappings: 2,
            cgn_speaks: Some(Speaks {
                pcp: true,
                nat_pmp: false,
                upnp: true,
            }),
            port_control: Some("NAT-PMP answered here".into()),
            double_nat: true,
        };
        status.write(&dir).unwrap();
        let read = Status::read(&dir).unwrap();
        assert_eq!(
            (read.pid, read.data_path, read.counters["x"]),
            (7, DataPathKind::Sockets, 3)
        );
        assert_eq!(read.state, status.state);
        assert!(read.double_nat);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(path(&dir)).unwrap()).unwrap();
        assert_eq!(
            (&json["state"], &json["detail"]),
            (&"waiting_for".into(), &"softwire to come up".into())
        );
        Status::remove(&dir);
        assert!(
            Status::read(&dir)
                .unwrap_err()
                .to_string()
                .contains("is portproxy running")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
