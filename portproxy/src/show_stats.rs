//! `portproxy stats`: the running daemon's data path, hooks, live client
//! entries and counters. Kernel counters and entries are read from the pinned
//! maps; userspace counters from the status file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::status::{DataPathKind, Status};

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    status: Status,
    /// Requests in flight in the kernel's CLIENTS map (fast path only).
    live_entries: Option<usize>,
    /// The fast path's per-reason counters, summed over CPUs.
    kernel_counters: BTreeMap<String, u64>,
}

pub fn run(state_dir: &Path, json: bool) -> Result<()> {
    let status = Status::read(state_dir)?;
    let (live_entries, kernel_counters) = match (&status.data_path, &status.pin_dir) {
        // A socket-only build cannot read the maps of a fast-path daemon that wrote this status.
        #[cfg(feature = "fastpath")]
        (DataPathKind::FastPath, Some(pins)) => (
            Some(count_clients(pins)?),
            crate::fastpath::read_pinned_counters(pins)?
                .iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ),
        _ => (None, BTreeMap::new()),
    };
    let report = Report {
        status,
        live_entries,
        kernel_counters,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

#[cfg(feature = "fastpath")]
fn count_clients(pin_dir: &Path) -> Result<usize> {
    use anyhow::Context as _;
    use aya::maps::{HashMap, Map, MapData};
    use portproxy_common::{ClientKey, ClientValue};

    let path = pin_dir.join("CLIENTS");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let clients: HashMap<_, ClientKey, ClientValue> = Map::LruHashMap(data)
        .try_into()
        .context("CLIENTS is not a hash map of client entries")?;
    Ok(clients.keys().filter(Result::is_ok).count())
}

fn text(report: &Report) -> String {
    let s = &report.status;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = format!(
        "state: {} (for {} s), pid {}\n",
        s.state,
        now.saturating_sub(s.since),
        s.pid
    );
    out += match s.data_path {
        DataPathKind::FastPath => "data path: fast path (eBPF)\n",
        DataPathKind::Sockets => "data path: sockets\n",
        DataPathKind::Stopped => "data path: none\n",
    };
    if let Some(reason) = &s.fallback_reason {
        out += &format!("fallback reason: {reason}\n");
    }
    for hook in &s.hooks {
        out += &format!("hook: {hook}\n");
    }
    if let Some(pins) = &s.pin_dir {
        out += &format!("maps pinned in: {}\n", pins.display());
    }
    if let Some(speaks) = &s.cgn_speaks {
        out += &format!("CGN speaks: {speaks}\n");
    }
    if let Some(plan) = &s.port_control {
        out += &format!("port control: {plan}\n");
    }
    out += &format!(
        "mappings: {} (`portproxy mappings` lists them)\n",
        s.mappings
    );
    if let Some(n) = report.live_entries {
        out += &format!("live client entries: {n}\n");
    }
    for (title, counters) in [
        ("kernel counters", &report.kernel_counters),
        ("userspace counters", &s.counters),
    ] {
        if counters.is_empty() {
            continue;
        }
        out += &format!("{title}:\n");
        for (name, value) in counters {
            out += &format!("{value:>12}  {name}\n");
        }
    }
    out
}
