//! Which data path a test runs portproxy on, and what `portproxy stats` says
//! it used: the end-to-end scenarios run on each, and on the fast path they
//! also prove from the kernel's counters that the programs carried the packets.

use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::{Daemon, Lab};

/// The environment variable that makes `--xdp` fall back to sockets.
const FORCE_SOCKETS_ENV: &str = "PORTPROXY_FORCE_SOCKETS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// The socket relay (no `--xdp`).
    Sockets,
    /// `--xdp`: the eBPF programs.
    FastPath,
    /// `--xdp` with the kernel path refused (forced), so the socket relay runs.
    Fallback,
}

impl Lab {
    /// Starts portproxy on `path` with `args`, keeping its status file in the lab's directory.
    pub fn spawn_portproxy_on(&self, path: DataPath, args: &[&str]) -> Result<Daemon> {
        self.spawn_portproxy_on_until(path, args, "ready:")
    }

    /// Like `spawn_portproxy_on`, waiting until portproxy logs a line containing `needle`.
    pub fn spawn_portproxy_on_until(
        &self,
        path: DataPath,
        args: &[&str],
        needle: &str,
    ) -> Result<Daemon> {
        let state_dir = self.dir().join("state");
        let mut all = vec![
            "--state-dir",
            state_dir.to_str().context("lab dir is not UTF-8")?,
        ];
        if path != DataPath::Sockets {
            all.push("--xdp");
        }
        all.extend_from_slice(args);
        let env = (path == DataPath::Fallback).then_some((FORCE_SOCKETS_ENV, "1"));
        self.spawn_portproxy_until(self.cpe(), &all, env, needle)
    }

    /// `portproxy stats --json` of a running daemon, read from inside its mount namespace
    /// (the pins live on the bpffs it mounted there).
    pub fn portproxy_stats(&self, daemon: &Daemon) -> Result<Value> {
        let bin = std::env::var("PORTPROXY_BIN").context("PORTPROXY_BIN is not set")?;
        let state_dir = self.dir().join("state");
        let output = Command::new("nsenter")
            .args([
                "-t",
                &daemon.pid().to_string(),
                "-m",
                "-n",
                &bin,
                "stats",
                "--json",
                "--state-dir",
            ])
            .arg(&state_dir)
            .output()
            .context("running nsenter ... portproxy stats")?;
        ensure!(
            output.status.success(),
            "portproxy stats failed:\n{}",
            crate::show_output(&output)
        );
        serde_json::from_slice(&output.stdout).context("parsing portproxy stats --json")
    }

    /// Checks from `portproxy stats` that `daemon` ran on `path`; on the fast path, that
    /// the programs' count of each fate in `kernel_counters` (ids) is above zero (the programs, not sockets, did the work).
    pub fn check_data_path(
        &self,
        daemon: &Daemon,
        path: DataPath,
        kernel_counters: &[&str],
    ) -> Result<()> {
        let stats = self.portproxy_stats(daemon)?;
        let kind = stats["data_path"].as_str().unwrap_or_default();
        match path {
            DataPath::FastPath => {
                ensure!(
                    kind == "fast_path",
                    "expected the fast path, portproxy stats says:\n{stats:#}"
                );
                for name in kernel_counters {
                    let value = stats["counters"][name]["kernel"].as_u64().unwrap_or(0);
                    ensure!(
                        value > 0,
                        "kernel counter {name:?} is {value}, so the programs did not carry it:\n{stats:#}"
                    );
                }
            }
            DataPath::Sockets => ensure!(kind == "sockets", "expected sockets:\n{stats:#}"),
            DataPath::Fallback => {
                let reason = stats["fallback_reason"].as_str().unwrap_or_default();
                ensure!(
                    kind == "sockets" && reason.contains(FORCE_SOCKETS_ENV),
                    "expected the forced fallback to sockets:\n{stats:#}"
                );
            }
        }
        Ok(())
    }
}

/// One element of portproxy's firewall set (`nft -j list set inet portproxy holes` in the CPE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    pub host: String,
    pub protocol: String,
    pub port: u16,
    /// Seconds left before the kernel removes it; 0 for a hole without a timeout.
    pub expires: u64,
}

/// A port number in nft's JSON, 0 if it is none.
fn port(v: &Value) -> u16 {
    v.as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0)
}

/// One forward of portproxy's double-NAT maps: the CPE's port to a LAN host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub protocol: String,
    pub local_port: u16,
    pub host: String,
    pub internal_port: u16,
    /// Seconds left before the kernel removes it; 0 for one without a timeout.
    pub expires: u64,
}

impl Lab {
    /// `portproxy mappings --json` of the daemon running with the lab's state directory.
    pub fn portproxy_mappings(&self) -> Result<Value> {
        let bin = std::env::var("PORTPROXY_BIN").context("PORTPROXY_BIN is not set")?;
        let output = Command::new(&bin)
            .args(["mappings", "--json", "--state-dir"])
            .arg(self.dir().join("state"))
            .output()
            .context("running portproxy mappings")?;
        ensure!(
            output.status.success(),
            "portproxy mappings failed:\n{}",
            crate::show_output(&output)
        );
        serde_json::from_slice(&output.stdout).context("parsing portproxy mappings --json")
    }

    /// The holes in portproxy's nftables set in the CPE; an error if the table is missing.
    pub fn holes(&self) -> Result<Vec<Hole>> {
        let output = self
            .cpe()
            .run("nft", &["-j", "list", "set", "inet", "portproxy", "holes"])?;
        let json: Value =
            serde_json::from_slice(&output.stdout).context("parsing nft -j list set")?;
        let mut holes = Vec::new();
        for object in json["nftables"].as_array().into_iter().flatten() {
            for elem in object["set"]["elem"].as_array().into_iter().flatten() {
                // `{"elem": {"val": {"concat": [...]}, "expires": N}}` with a timeout,
                // `{"concat": [...]}` without one.
                let (concat, inner) = match elem.get("elem") {
                    Some(inner) => (&inner["val"]["concat"], inner),
                    None => (&elem["concat"], elem),
                };
                holes.push(Hole {
                    host: concat[0].as_str().unwrap_or_default().to_string(),
                    protocol: concat[1].as_str().unwrap_or_default().to_string(),
                    port: concat[2]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(0),
                    expires: inner["expires"].as_u64().unwrap_or(0),
                });
            }
        }
        Ok(holes)
    }

    /// The forwards in portproxy's double-NAT maps in the CPE (`table inet portproxy_nat`:
    /// `hosts` and `ports`, each keyed by protocol and local port); an error if the table is
    /// missing.
    pub fn forwards(&self) -> Result<Vec<Forward>> {
        let map = |name: &str| -> Result<Vec<(String, u16, Value, u64)>> {
            let output = self
                .cpe()
                .run("nft", &["-j", "list", "map", "inet", "portproxy_nat", name])?;
            let json: Value =
                serde_json::from_slice(&output.stdout).context("parsing nft -j list map")?;
            let mut elements = Vec::new();
            for object in json["nftables"].as_array().into_iter().flatten() {
                // `[{"elem": {"val": {"concat": [proto, port]}, "expires": N}}, target]` with a
                // timeout, `[{"concat": [proto, port]}, target]` without one.
                for pair in object["map"]["elem"].as_array().into_iter().flatten() {
                    let key = &pair[0];
                    let (concat, inner) = match key.get("elem") {
                        Some(inner) => (&inner["val"]["concat"], inner),
                        None => (&key["concat"], key),
                    };
                    elements.push((
                        concat[0].as_str().unwrap_or_default().to_string(),
                        port(&concat[1]),
                        pair[1].clone(),
                        inner["expires"].as_u64().unwrap_or(0),
                    ));
                }
            }
            Ok(elements)
        };
        let ports = map("ports")?;
        let mut forwards = Vec::new();
        for (protocol, local_port, host, expires) in map("hosts")? {
            let internal_port = ports
                .iter()
                .find(|(p, l, ..)| *p == protocol && *l == local_port)
                .map_or(0, |(_, _, target, _)| port(target));
            forwards.push(Forward {
                protocol,
                local_port,
                host: host.as_str().unwrap_or_default().to_string(),
                internal_port,
                expires,
            });
        }
        ensure!(
            forwards.len() == ports.len(),
            "the maps hosts and ports differ: {forwards:?} {ports:?}"
        );
        Ok(forwards)
    }

    /// Whether portproxy's double-NAT table exists in the CPE.
    pub fn has_local_nat_table(&self) -> Result<bool> {
        let output = self.cpe().run("nft", &["list", "tables"])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l.trim() == "table inet portproxy_nat"))
    }

    /// Whether portproxy's nftables table exists in the CPE.
    pub fn has_portproxy_table(&self) -> Result<bool> {
        let output = self.cpe().run("nft", &["list", "tables"])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l.trim() == "table inet portproxy"))
    }
}
