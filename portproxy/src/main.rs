//! portproxy: relays NAT-PMP, PCP and UPnP from a home LAN to the
//! carrier-grade NAT behind a DS-Lite softwire.
//!
//! Where a packet enters: with `--xdp`, the eBPF programs of
//! `portproxy-ebpf` (loaded by `fastpath`); otherwise `relay::port_control`
//! (UDP 5351), `relay::ssdp` (UDP 1900) and `relay::http` (the IGD's TCP
//! ports). Its fate is decided by the codecs in `proto`; it leaves through
//! the sockets made in `sockets`. `datapath` decides which of the two runs.

mod capture;
mod cli;
mod config;
mod datapath;
mod fastpath;
mod netif;
mod proto;
mod relay;
mod show_stats;
mod sockets;
mod stats;
mod status;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use log::{error, info, warn};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::capture::ReplyCapture;
use crate::config::Config;
use crate::datapath::DataPath;
use crate::stats::{Counter, Stats};
use crate::status::{DataPathKind, Status};

fn main() -> ExitCode {
    let opts = cli::Options::parse();
    init_logging(opts.verbose);
    let result = match opts.command {
        Some(cli::Command::Stats { json }) => show_stats::run(&opts.state_dir, json),
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
    check_privileges()?;
    let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    let cfg = Config::resolve(&opts, &handle).await?;
    info!("configuration:\n{cfg}");
    let stats = Arc::new(Stats::default());
    let mut data_path = DataPath::choose(opts.xdp, &cfg, &opts.pin_dir);
    let on_sockets = Arc::new(data_path.socket_share(&cfg));
    // Bind first: a port in use (say, a second portproxy) must fail before the
    // routing rule, which a running instance depends on, is touched.
    let tasks = relay::start(&on_sockets, &stats)?;
    let capture = if on_sockets.nat_pmp { Some(ReplyCapture::install(&handle, &on_sockets).await?) } else { None };
    let outcome = relay_until_signal(&cfg, &opts, &mut data_path, &stats, tasks).await;
    Status::remove(&opts.state_dir);
    if let Some(capture) = capture {
        capture.remove().await.context("removing the reply-capture rule")?;
    }
    if let DataPath::Fast(fast) = &data_path {
        info!("kernel counters:\n{}", fast.stats()?);
    }
    info!("counters:\n{}", stats.report());
    outcome
}

async fn relay_until_signal(
    cfg: &Config,
    opts: &cli::Options,
    data_path: &mut DataPath,
    stats: &Stats,
    mut tasks: JoinSet<Result<()>>,
) -> Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_aging = tokio::time::Instant::now();
    info!(
        "ready: relaying between {} ({}) and the CGN {} via {} ({}) on {}",
        cfg.lan.iface,
        cfg.lan.addr,
        cfg.cgn,
        cfg.wan.iface,
        cfg.wan.addr,
        match data_path {
            DataPath::Fast(_) => "the fast path",
            DataPath::Sockets(_) => "sockets",
        }
    );
    loop {
        tokio::select! {
            _ = interrupt.recv() => { info!("SIGINT: stopping"); return Ok(()); }
            _ = terminate.recv() => { info!("SIGTERM: stopping"); return Ok(()); }
            Some(done) = tasks.join_next() => {
                done.context("a relay task panicked")??;
                bail!("a relay task stopped unexpectedly");
            }
            _ = tick.tick() => {
                // The kernel cannot age its entries: sweep a few times per timeout.
                if let DataPath::Fast(fast) = data_path {
                    if last_aging.elapsed() >= (cfg.pending_timeout / 4).max(Duration::from_secs(1)) {
                        last_aging = tokio::time::Instant::now();
                        let expired = fast.expire_idle_clients(cfg.pending_timeout)?;
                        stats.add_n(Counter::Expired, expired as u64);
                    }
                }
                if let Err(e) = status(cfg, data_path, &opts.pin_dir, stats).write(&opts.state_dir) {
                    warn!("status file for `portproxy stats`: {e:#}");
                }
            }
        }
    }
}

fn status(cfg: &Config, data_path: &DataPath, pin_dir: &Path, stats: &Stats) -> Status {
    let (kind, reason, hooks, pins) = match data_path {
        DataPath::Fast(_) => (
            DataPathKind::FastPath,
            None,
            vec![
                format!("tc_lan_ingress on {} (tc ingress)", cfg.lan.iface),
                format!("tc_wan_ingress on {} (tc ingress)", cfg.wan.iface),
            ],
            Some(pin_dir.to_path_buf()),
        ),
        DataPath::Sockets(reason) => (DataPathKind::Sockets, reason.clone(), Vec::new(), None),
    };
    Status {
        pid: std::process::id(),
        data_path: kind,
        fallback_reason: reason,
        hooks,
        pin_dir: pins,
        counters: stats.snapshot(),
    }
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
