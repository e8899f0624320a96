//! `portproxy stats`: the running daemon's data path, hooks, live client
//! entries and counters. The programs' counters and entries are read from the
//! pinned maps, the daemon's counters from the status file; both name a fate the
//! same way (`stats::Counter`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::stats::Counter;
use crate::status::{DataPathKind, Status};

#[derive(Serialize)]
struct Report {
    /// Without its `counters`: they are in `counters` here, with the programs'.
    #[serde(flatten)]
    status: Status,
    #[serde(flatten)]
    counters: Counters,
}

/// Every fate counted, by id, and the requests in flight in the kernel: what `portproxy
/// stats --json` and the API's `/api/counters` show.
#[derive(Serialize)]
pub struct Counters {
    /// Requests in flight in the kernel's CLIENTS map (fast path only).
    pub live_entries: Option<usize>,
    pub counters: BTreeMap<&'static str, Count>,
}

/// The daemon's counters (`daemon`, by id) with the programs' read from the maps pinned
/// where `status` says, when it runs the fast path.
pub fn counters(status: &Status, daemon: &BTreeMap<String, u64>) -> Result<Counters> {
    let (live_entries, kernel): (_, BTreeMap<&str, u64>) =
        match (&status.data_path, &status.pin_dir) {
            // A socket-only build cannot read the maps of a fast-path daemon that wrote this status.
            #[cfg(feature = "fastpath")]
            (DataPathKind::FastPath, Some(pins)) => (
                Some(count_clients(pins)?),
                crate::fastpath::read_pinned_counters(pins)?
                    .iter()
                    .map(|(fate, n)| (fate.id(), n))
                    .collect(),
            ),
            _ => (None, BTreeMap::new()),
        };
    let counters = Counter::ALL
        .iter()
        .map(|fate| {
            let count = Count {
                kernel: kernel.get(fate.id()).copied(),
                daemon: daemon.get(fate.id()).copied(),
            };
            (fate.id(), count)
        })
        .filter(|(_, count)| count.kernel.is_some() || count.daemon.is_some())
        .collect();
    Ok(Counters {
        live_entries,
        counters,
    })
}

/// One fate's count by who counted it; absent where that side does not count it (`kernel`
/// off the fast path).
#[derive(Serialize)]
pub struct Count {
    /// The programs' `STATS`, summed over CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon: Option<u64>,
}

pub fn run(state_dir: &Path, json: bool) -> Result<()> {
    let mut status = Status::read(state_dir)?;
    let daemon = std::mem::take(&mut status.counters);
    let report = Report {
        counters: counters(&status, &daemon)?,
        status,
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
    out += match s.double_nat {
        true => "double NAT: on (answered here, mapped for the WAN address and forwarded)\n",
        false => "double NAT: off\n",
    };
    out += &format!(
        "mappings: {} (`portproxy mappings` lists them)\n",
        s.mappings
    );
    if let Some(n) = report.counters.live_entries {
        out += &format!("live client entries: {n}\n");
    }
    if !report.counters.counters.is_empty() {
        out += &format!("counters:\n{:>12} {:>12}\n", "kernel", "daemon");
    }
    let show = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    for fate in Counter::ALL {
        if let Some(count) = report.counters.counters.get(fate.id()) {
            out += &format!(
                "{:>12} {:>12}  {}\n",
                show(count.kernel),
                show(count.daemon),
                fate.label()
            );
        }
    }
    out
}
