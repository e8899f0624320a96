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
//! Without the `http-server` feature (the minimal build) there is no HTTP server of its own
//! (`lan_http`): no UPnP IGD (`serve::igd` is `serve/no_igd.rs`: UPnP is only relayed) and
//! no API or page (`api` is `no_api.rs`); `--upnp-udp` and `--api` say so once at start.

// The minimal build leaves out the IGD server but not the helpers only it calls (mappings by
// external port, interface counters...): dead code is caught by the default build.
#![cfg_attr(not(feature = "http-server"), allow(dead_code))]

#[cfg(feature = "http-server")]
mod api;
#[cfg(not(feature = "http-server"))]
#[path = "no_api.rs"]
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
#[cfg(feature = "http-server")]
mod lan_http;
#[cfg(feature = "map-client")]
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
use log::{error, warn};

/// The `portproxy` command: the daemon, `portproxy stats`, `mappings` or `map`.
pub fn main() -> ExitCode {
    let opts = cli::Options::parse();
    init_logging(opts.verbose);
    let result = match opts.command.clone() {
        #[cfg(feature = "map-client")]
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

async fn run(mut opts: cli::Options) -> Result<()> {
    opts.check()?;
    without_what_this_build_lacks(&mut opts);
    check_privileges()?;
    supervisor::run(opts).await
}

/// Says in one line each what the options ask for and this build lacks (the minimal build:
/// see `serve::NO_IGD_SERVER`, `api::NO_API`), and goes on without it.
fn without_what_this_build_lacks(opts: &mut cli::Options) {
    if let (true, Some(reason)) = (
        opts.upnp_udp && opts.mode != cli::Mode::Relay,
        serve::NO_IGD_SERVER,
    ) {
        warn!("--upnp-udp: {reason}; UPnP is relayed to the CGN, never answered here");
    }
    if let (true, Some(reason)) = (opts.api, api::NO_API) {
        warn!("--api: {reason}; running without");
        opts.api = false;
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// The default options ask for the API and the IGD; a build without them (the minimal
    /// build) turns the API off instead of failing to start, and `Plan` relays UPnP.
    #[test]
    fn options_this_build_lacks_are_dropped_not_fatal() {
        let mut opts = cli::Options::try_parse_from(["portproxy"]).unwrap();
        assert!(opts.api && opts.upnp_udp);
        without_what_this_build_lacks(&mut opts);
        assert_eq!(opts.api, api::NO_API.is_none());
        let plan = upstream::Plan::choose(
            cli::Mode::Proxy,
            upstream::Speaks {
                pcp: true,
                nat_pmp: false,
                upnp: false,
            },
        );
        let serves_upnp = plan.upnp == upstream::Handling::Serve;
        assert_eq!(serves_upnp, serve::NO_IGD_SERVER.is_none());
    }
}
