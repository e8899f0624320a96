//! portproxy: relays NAT-PMP, PCP and UPnP from a home LAN to the
//! carrier-grade NAT behind a DS-Lite softwire.
//!
//! Where a packet enters: with `--xdp`, the eBPF programs of
//! `portproxy-ebpf` (loaded by `fastpath`); otherwise `relay::port_control`
//! (UDP 5351), `relay::ssdp` (UDP 1900) and `relay::http` (the IGD's TCP
//! ports). Its fate is decided by the codecs in `proto`; it leaves through
//! the sockets made in `sockets`. `datapath` decides which of the two runs; `supervisor` keeps it running
//! and rebuilds it when the interfaces change. What the CGN grants is learned
//! into `mapping` (the table), which opens holes in the CPE's firewall
//! and, in double NAT, forwards ports of its WAN address (`effects`) and answers `portproxy mappings` over `control`.
//! Manual forwards (`forwards`) are kept at the CGN as mappings of the table.
//!
//! The codecs in `proto` are public for the fuzz targets; the binary is `main.rs`.
//!
//! Without the `fastpath` cargo feature (the socket-only build) `fastpath` is
//! `no_fastpath.rs`: `--xdp` then says in one line that this build has no fast path.

mod api;
mod capture;
mod cli;
mod clock;
mod config;
mod control;
mod datapath;
mod effects;
#[cfg(feature = "fastpath")]
mod fastpath;
#[cfg(not(feature = "fastpath"))]
#[path = "no_fastpath.rs"]
mod fastpath;
mod forwards;
mod lan_http;
mod map;
mod mapping;
mod netif;
#[cfg(test)]
mod packaging_tests;
pub mod proto;
mod relay;
mod serve;
mod show_stats;
mod sockets;
mod stats;
mod status;
mod supervisor;
mod upstream;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use log::error;

/// The `portproxy` command: the daemon, `portproxy stats`, `mappings` or `map`.
pub fn main() -> ExitCode {
    let opts = cli::Options::parse();
    init_logging(opts.verbose);
    let result = match opts.command.clone() {
        Some(cli::Command::Map(map)) => return map::run(map),
        Some(cli::Command::Stats { json }) => show_stats::run(&opts.state_dir, json),
        Some(cli::Command::Mappings { json }) => control::show_mappings(&opts.state_dir, json),
        Some(cli::Command::Forward(command)) => control::forward(&opts.state_dir, &command),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run(opts))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        // Keep dependencies' chatter (netlink) out of -vv.
        .filter_module("netlink_proto", log::LevelFilter::Warn)
        .format_timestamp_millis()
        .format_target(false)
        .init();
}

async fn run(opts: cli::Options) -> Result<()> {
    opts.check()?;
    check_privileges()?;
    supervisor::run(opts).await
}

/// Transparent sockets and the routing rule need CAP_NET_ADMIN; ports below
/// 1024 need CAP_NET_BIND_SERVICE. Checked up front for a clear message.
fn check_privileges() -> Result<()> {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    const CAP_NET_ADMIN: u32 = 12;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !has(CAP_NET_ADMIN) || !has(CAP_NET_BIND_SERVICE) {
        bail!("portproxy needs root (CAP_NET_ADMIN and CAP_NET_BIND_SERVICE): run it with sudo");
    }
    Ok(())
}
