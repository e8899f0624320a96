//! portproxy: relays NAT-PMP, PCP and UPnP from a home LAN to the
//! carrier-grade NAT behind a DS-Lite softwire.
//!
//! Where a packet enters: `relay::port_control` (UDP 5351), `relay::ssdp`
//! (UDP 1900) and `relay::http` (the IGD's TCP ports). Its fate is decided by
//! the codecs in `proto`; it leaves through the sockets made in `sockets`.

mod capture;
mod cli;
mod config;
mod fastpath;
mod netif;
mod proto;
mod relay;
mod sockets;
mod stats;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use log::{error, info, warn};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::capture::ReplyCapture;
use crate::config::Config;
use crate::stats::Stats;

fn main() -> ExitCode {
    let opts = cli::Options::parse();
    init_logging(opts.verbose);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = runtime.context("starting the async runtime").and_then(|rt| rt.block_on(run(opts)));
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
    check_privileges()?;
    let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    let cfg = Arc::new(Config::resolve(&opts, &handle).await?);
    info!("configuration:\n{cfg}");
    if opts.xdp {
        match fastpath::probe() {
            Ok(what) => warn!("--xdp: {what}, but the kernel data path is not part of this version yet; relaying on sockets"),
            Err(e) => warn!("--xdp: the eBPF fast path cannot run here ({e:#}); relaying on sockets"),
        }
    }
    let stats = Arc::new(Stats::default());
    // Bind first: a port in use (say, a second portproxy) must fail before the
    // routing rule, which a running instance depends on, is touched.
    let tasks = relay::start(&cfg, &stats)?;
    let capture = if cfg.nat_pmp { Some(ReplyCapture::install(&handle, &cfg).await?) } else { None };
    let outcome = relay_until_signal(&cfg, tasks).await;
    if let Some(capture) = capture {
        capture.remove().await.context("removing the reply-capture rule")?;
    }
    info!("counters:\n{}", stats.report());
    outcome
}

async fn relay_until_signal(cfg: &Config, mut tasks: JoinSet<Result<()>>) -> Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    info!(
        "ready: relaying between {} ({}) and the CGN {} via {} ({})",
        cfg.lan.iface, cfg.lan.addr, cfg.cgn, cfg.wan.iface, cfg.wan.addr
    );
    tokio::select! {
        _ = interrupt.recv() => info!("SIGINT: stopping"),
        _ = terminate.recv() => info!("SIGTERM: stopping"),
        Some(done) = tasks.join_next() => {
            done.context("a relay task panicked")??;
            bail!("a relay task stopped unexpectedly");
        }
    }
    Ok(())
}

/// Transparent sockets and the routing rule need CAP_NET_ADMIN; ports below
/// 1024 need CAP_NET_BIND_SERVICE. Checked up front for a clear message.
fn check_privileges() -> Result<()> {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
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
