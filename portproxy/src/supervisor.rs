//! Runs the chosen data path and keeps it matching the interfaces.
//!
//! On every link, IPv4 address or route change (rtnetlink multicast) the
//! configuration is read again; if it differs, the data path is rebuilt for
//! it: a softwire re-created with a new ifindex, a changed address or a new
//! CGN gateway take effect without a restart. If an interface disappears,
//! relaying stops (and says why) until it is back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use log::{info, warn};
use rtnetlink::{Handle, MulticastGroup};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::capture::ReplyCapture;
use crate::cli::Options;
use crate::config::Config;
use crate::datapath::DataPath;
use crate::relay;
use crate::stats::{Counter, Stats};
use crate::status::{DataPathKind, Status};

/// Changes come in bursts (a re-created device: link, addresses, routes); act once.
const SETTLE: Duration = Duration::from_millis(250);

/// A data path running for one configuration.
struct Running {
    cfg: Config,
    data_path: DataPath,
    tasks: JoinSet<Result<()>>,
    capture: Option<ReplyCapture>,
}

impl Running {
    async fn start(
        opts: &Options,
        cfg: Config,
        handle: &Handle,
        stats: &Arc<Stats>,
    ) -> Result<Running> {
        let data_path = DataPath::choose(opts.xdp, &cfg, &opts.pin_dir);
        let on_sockets = Arc::new(data_path.socket_share(&cfg));
        // Bind first: a port in use (say, a second portproxy) must fail before the
        // routing rule, which a running instance depends on, is touched.
        let tasks = relay::start(&on_sockets, stats)?;
        let capture = match on_sockets.nat_pmp {
            true => Some(ReplyCapture::install(handle, &on_sockets).await?),
            false => None,
        };
        Ok(Running {
            cfg,
            data_path,
            tasks,
            capture,
        })
    }

    async fn stop(mut self) -> Result<()> {
        self.tasks.shutdown().await;
        if let Some(capture) = self.capture {
            capture
                .remove()
                .await
                .context("removing the reply-capture rule")?;
        }
        if let DataPath::Fast(fast) = &self.data_path {
            info!("kernel counters:\n{}", fast.stats()?);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        let on = match self.data_path {
            DataPath::Fast(_) => "the fast path",
            DataPath::Sockets(_) => "sockets",
        };
        format!(
            "relaying between {} ({}) and the CGN {} via {} ({}) on {on}",
            c.lan.iface, c.lan.addr, c.cgn, c.wan.iface, c.wan.addr
        )
    }
}

pub async fn run(opts: Options) -> Result<()> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
    ];
    let (events_connection, _, mut events) =
        rtnetlink::new_multicast_connection(&groups).context("subscribing to interface changes")?;
    tokio::spawn(events_connection);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    let cfg = Config::resolve(&opts, &handle).await?;
    info!("configuration:\n{cfg}");
    let stats = Arc::new(Stats::default());
    let mut running = Some(Running::start(&opts, cfg, &handle, &stats).await?);
    // Written before "ready", so that `portproxy stats` works as soon as that line shows.
    status(running.as_ref(), &opts.pin_dir, &stats).write(&opts.state_dir)?;
    info!(
        "ready: {}",
        running.as_ref().map(Running::describe).unwrap_or_default()
    );

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_aging = tokio::time::Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = interrupt.recv() => { info!("SIGINT: stopping"); break Ok(()); }
            _ = terminate.recv() => { info!("SIGTERM: stopping"); break Ok(()); }
            Some(done) = join_next(&mut running) => {
                if let Err(e) = done.context("a relay task panicked").and_then(|r| r) {
                    break Err(e);
                }
                break Err(anyhow::anyhow!("a relay task stopped unexpectedly"));
            }
            Some(_) = events.next() => {
                tokio::time::sleep(SETTLE).await;
                while events.try_recv().is_ok() {}
                running = follow_interfaces(&opts, &handle, &stats, running).await?;
            }
            _ = tick.tick() => {
                if let Some(Running { cfg, data_path: DataPath::Fast(fast), .. }) = &mut running {
                    // The kernel does not age its entries: sweep a few times per timeout.
                    if last_aging.elapsed() >= (cfg.pending_timeout / 4).max(Duration::from_secs(1)) {
                        last_aging = tokio::time::Instant::now();
                        let expired = fast.expire_idle_clients(cfg.pending_timeout)?;
                        stats.add_n(Counter::Expired, expired as u64);
                    }
                }
                if let Err(e) = status(running.as_ref(), &opts.pin_dir, &stats).write(&opts.state_dir) {
                    warn!("status file for `portproxy stats`: {e:#}");
                }
            }
        }
    };
    Status::remove(&opts.state_dir);
    if let Some(running) = running {
        running.stop().await?;
    }
    info!("counters:\n{}", stats.report());
    outcome
}

/// The next finished relay task, or never while nothing runs.
async fn join_next(
    running: &mut Option<Running>,
) -> Option<Result<Result<()>, tokio::task::JoinError>> {
    match running {
        Some(r) if !r.tasks.is_empty() => r.tasks.join_next().await,
        _ => std::future::pending().await,
    }
}

/// Re-reads the configuration and rebuilds the data path if it changed.
async fn follow_interfaces(
    opts: &Options,
    handle: &Handle,
    stats: &Arc<Stats>,
    running: Option<Running>,
) -> Result<Option<Running>> {
    let cfg = match Config::resolve(opts, handle).await {
        Ok(cfg) => cfg,
        Err(e) => {
            if let Some(old) = running {
                warn!("{e:#}: relaying stops until the interfaces are back");
                old.stop().await?;
            }
            return Ok(None);
        }
    };
    if running.as_ref().is_some_and(|r| r.cfg == cfg) {
        return Ok(running);
    }
    if let Some(old) = running {
        old.stop().await?;
    }
    info!("interfaces changed; new configuration:\n{cfg}");
    match Running::start(opts, cfg, handle, stats).await {
        Ok(new) => {
            info!("{}", new.describe());
            Ok(Some(new))
        }
        Err(e) => {
            warn!("{e:#}: relaying stops until the next interface change");
            Ok(None)
        }
    }
}

fn status(running: Option<&Running>, pin_dir: &Path, stats: &Stats) -> Status {
    let (kind, reason, hooks, pins) = match running.map(|r| (&r.data_path, &r.cfg)) {
        Some((DataPath::Fast(fast), _)) => (
            DataPathKind::FastPath,
            None,
            fast.hooks(),
            Some(pin_dir.to_path_buf()),
        ),
        Some((DataPath::Sockets(reason), _)) => {
            (DataPathKind::Sockets, reason.clone(), Vec::new(), None)
        }
        None => (DataPathKind::Stopped, None, Vec::new(), None),
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
