//! `portproxy map` in a lab namespace, run as an unprivileged user (nobody) to show it needs
//! no root, with `--json`: its events are read back from its log, one object a line.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{Daemon, Lab, Netns};

/// What `portproxy map` runs as: nobody, no capabilities, no groups.
const UNPRIVILEGED: [&str; 4] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

/// How long `portproxy map` may take to print its first mapping: the probe (1 s), then at
/// most one mapping exchange per protocol (1.75 s each), with room for a loaded machine.
pub const MAPPED_WITHIN: Duration = Duration::from_secs(10);

impl Lab {
    /// `portproxy map --json ARGS` in `ns`, as nobody, in the background; waits until it
    /// prints its first event (mapped, or the error it ends with).
    pub fn spawn_map(&self, ns: &Netns, args: &[&str]) -> Result<Daemon> {
        let bin = std::env::var_os("PORTPROXY_BIN").context("PORTPROXY_BIN is not set")?;
        let mut cmd = ns.command("setpriv");
        cmd.args(UNPRIVILEGED)
            .arg(bin)
            .args(["map", "--json"])
            .args(args);
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let log = self.dir().join(format!("map-{n}-{}.log", ns.role()));
        let mut daemon = Daemon::spawn("portproxy map", cmd, log)?;
        daemon.wait_ready(MAPPED_WITHIN, |d| !map_events(d).is_empty())?;
        Ok(daemon)
    }

    /// `portproxy map --json ARGS` in `ns`, as nobody, to its end: its exit code and events.
    pub fn run_map(&self, ns: &Netns, args: &[&str]) -> Result<(i32, Vec<Value>)> {
        let bin = std::env::var("PORTPROXY_BIN").context("PORTPROXY_BIN is not set")?;
        let mut all: Vec<&str> = UNPRIVILEGED.to_vec();
        all.extend([bin.as_str(), "map", "--json"]);
        all.extend_from_slice(args);
        let output = ns.output("setpriv", &all, Duration::from_secs(30))?;
        let events = parse(&String::from_utf8_lossy(&output.stdout));
        let code = output
            .status
            .code()
            .context("portproxy map killed by a signal")?;
        Ok((code, events))
    }
}

/// The JSON events `portproxy map` printed so far (its log also holds its stderr).
pub fn map_events(daemon: &Daemon) -> Vec<Value> {
    parse(&daemon.log())
}

fn parse(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (at most `within`) for an event after the first `seen` that `wanted` accepts; returns
/// it and how many events there are up to it.
pub fn wait_map_event(
    daemon: &Daemon,
    seen: usize,
    within: Duration,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Result<(Value, usize)> {
    let start = Instant::now();
    loop {
        let events = map_events(daemon);
        if let Some(i) = events.iter().skip(seen).position(&wanted) {
            return Ok((events[seen + i].clone(), seen + i + 1));
        }
        if start.elapsed() > within {
            bail!(
                "no {what} event from portproxy map within {within:?} (after event {seen}):\n{}",
                daemon.log()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}
