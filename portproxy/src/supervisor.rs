//! Runs the chosen data path and keeps it matching the interfaces, whatever
//! order they come in and however often they flap.
//!
//! The daemon's state is one of (see `status::State`):
//! - *waiting for* something that can still appear: an interface, it being up, its
//!   address, the default route that names the CGN. A router brings its softwire up
//!   late, so this is normal at boot and during a flap; the daemon says once what it
//!   waits for and starts relaying when everything is there.
//! - *relaying*, on the fast path or on sockets.
//! - *retrying*: building the data path failed (a bind, a rule, a program); tried
//!   again with backoff, never abandoned.
//!
//! Every link, IPv4 address or route change (rtnetlink multicast) makes it resolve
//! the configuration again, and so does a timer (in case a change notice was lost,
//! say while the daemon was stopped): a changed configuration rebuilds the data path.
//! A rebuild is transactional: the old data path is fully released (loops and every
//! task they spawned joined, so every socket is closed; the capture rule removed;
//! the programs detached) before the new one binds.
//!
//! Only what a person must fix ends the daemon: a port held by another program at
//! start-up (bad options and missing privileges are refused before this runs).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use log::{info, warn};
use rtnetlink::{Handle, MulticastGroup};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::capture::ReplyCapture;
use crate::cli::Options;
use crate::config::{Config, Resolved};
use crate::control;
use crate::datapath::DataPath;
use crate::fastpath;
use crate::firewall::Firewall;
use crate::mapping::{Limits, Mappings};
use crate::relay::SocketRelay;
use crate::sockets::{self, PortInUse};
use crate::stats::{Counter, Stats};
use crate::status::{DataPathKind, State, Status};

/// Changes come in bursts (a re-created device: link, addresses, routes); act once.
const SETTLE: Duration = Duration::from_millis(250);
/// How often the configuration is resolved again without a change notice.
const RECHECK_WAITING: Duration = Duration::from_secs(1);
const RECHECK_RELAYING: Duration = Duration::from_secs(10);
/// Backoff between failed builds: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A data path running for one configuration.
struct Running {
    cfg: Config,
    data_path: DataPath,
    relay: SocketRelay,
    capture: Option<ReplyCapture>,
    /// Forwards the programs' per-packet log (fast path with `-vv`).
    kernel_log: Option<tokio::task::JoinHandle<()>>,
    /// Learns (and, with firewall holes, delivers) the fast path's grants.
    grants: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(
        opts: &Options,
        cfg: Config,
        handle: &Handle,
        stats: &Arc<Stats>,
        mappings: &Arc<Mappings>,
    ) -> Result<Running> {
        // With firewall holes the programs hold grants back until userspace opened the hole.
        let hold_grants = mappings.has_firewall().await;
        let mut data_path = DataPath::choose(
            opts.xdp,
            &cfg,
            &opts.pin_dir,
            opts.verbose >= 2,
            hold_grants,
        );
        let on_sockets = Arc::new(data_path.socket_share(&cfg));
        // Bind first: a port in use (say, a second portproxy) must fail before the
        // routing rule, which a running instance depends on, is touched.
        let relay = SocketRelay::start(&on_sockets, stats, mappings)?;
        let capture = match on_sockets.nat_pmp {
            true => match ReplyCapture::install(handle, &on_sockets).await {
                Ok(capture) => Some(capture),
                Err(e) => {
                    relay.stop().await;
                    return Err(e);
                }
            },
            false => None,
        };
        let grants = match start_grants(&mut data_path, &cfg, stats, mappings, hold_grants) {
            Ok(grants) => grants,
            Err(e) => {
                relay.stop().await;
                return Err(e);
            }
        };
        let kernel_log = match &mut data_path {
            DataPath::Fast(fast) => fast
                .take_kernel_log()
                .map(|log| tokio::spawn(fastpath::forward_kernel_log(log))),
            DataPath::Sockets(_) => None,
        };
        Ok(Running {
            cfg,
            data_path,
            relay,
            capture,
            kernel_log,
            grants,
        })
    }

    /// Releases everything: when this returns, the next data path can bind the same ports.
    async fn stop(self) {
        self.relay.stop().await;
        for task in [self.kernel_log, self.grants].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        if let Some(capture) = self.capture
            && let Err(e) = capture.remove().await
        {
            warn!("removing the reply-capture rule: {e:#}");
        }
        if let DataPath::Fast(fast) = &self.data_path {
            match fast.stats() {
                Ok(counters) => info!("kernel counters:\n{counters}"),
                Err(e) => warn!("reading the kernel counters: {e:#}"),
            }
        }
        // Dropping the fast path detaches its programs and removes its pins.
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

/// On the fast path, the task that takes the programs' grants (`GRANTS`) into the mapping
/// table; with `hold_grants` it delivers them too, from the LAN address and port 5351.
fn start_grants(
    data_path: &mut DataPath,
    cfg: &Config,
    stats: &Arc<Stats>,
    mappings: &Arc<Mappings>,
    hold_grants: bool,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let DataPath::Fast(fast) = data_path else {
        return Ok(None);
    };
    if !cfg.nat_pmp {
        return Ok(None);
    }
    let lan = match hold_grants {
        true => {
            let addr = std::net::SocketAddrV4::new(cfg.lan.addr, cfg.nat_pmp_port);
            Some(sockets::udp_on(&cfg.lan, addr).map_err(|e| {
                sockets::explain_bind(e, "delivery of the fast path's grants", addr, "--nat-pmp")
            })?)
        }
        false => None,
    };
    let grants = fast.take_grants()?;
    Ok(Some(tokio::spawn(fastpath::forward_grants(
        grants,
        Arc::new(cfg.clone()),
        stats.clone(),
        mappings.clone(),
        lan,
    ))))
}

struct Supervisor {
    opts: Options,
    handle: Handle,
    stats: Arc<Stats>,
    /// Outlives every data path: mappings (and their holes) survive a rebuild.
    mappings: Arc<Mappings>,
    running: Option<Running>,
    state: State,
    since: SystemTime,
    retry_delay: Duration,
    next_check: Instant,
}

impl Supervisor {
    /// Brings the data path in line with the interfaces. `Err` only for what ends the
    /// daemon: a port held by another program on the first attempt.
    async fn converge(&mut self, first: bool) -> Result<()> {
        let cfg = match Config::resolve(&self.opts, &self.handle).await {
            Ok(Resolved::Ready(cfg)) => cfg,
            Ok(Resolved::Waiting(what)) => {
                self.stop().await;
                self.enter(State::WaitingFor(what));
                return Ok(());
            }
            Err(e) => {
                self.stop().await;
                self.retry(format!("{e:#}"));
                return Ok(());
            }
        };
        if self.state == State::Relaying && self.running.as_ref().is_some_and(|r| r.cfg == cfg) {
            self.next_check = Instant::now() + RECHECK_RELAYING;
            return Ok(());
        }
        if self.running.is_some() {
            self.stop().await;
            info!("interfaces changed");
        }
        info!("configuration:\n{cfg}");
        match Running::start(&self.opts, cfg, &self.handle, &self.stats, &self.mappings).await {
            Ok(new) => {
                let described = new.describe();
                self.running = Some(new);
                self.retry_delay = RETRY_FIRST;
                self.enter(State::Relaying);
                info!("ready: {described}");
            }
            Err(e) if first && e.chain().any(|c| c.is::<PortInUse>()) => return Err(e),
            Err(e) => self.retry(format!("{e:#}")),
        }
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Records a new state; says so once, not on every check.
    fn enter(&mut self, state: State) {
        self.next_check = Instant::now()
            + match state {
                State::Relaying => RECHECK_RELAYING,
                _ => RECHECK_WAITING,
            };
        if state == self.state {
            return;
        }
        if let State::WaitingFor(_) = state {
            warn!("{state}; relaying starts when it is there");
        }
        self.state = state;
        self.since = SystemTime::now();
    }

    /// Every failed build is logged: the same failure again is worth seeing.
    fn retry(&mut self, why: String) {
        let delay = self.retry_delay;
        warn!("{why}; trying again in {delay:?}");
        self.enter(State::Retrying(why));
        self.next_check = Instant::now() + delay;
        self.retry_delay = (delay * 2).min(RETRY_MAX);
    }

    fn status(&self) -> Status {
        let (kind, reason, hooks, pins) = match self.running.as_ref().map(|r| &r.data_path) {
            Some(DataPath::Fast(fast)) => (
                DataPathKind::FastPath,
                None,
                fast.hooks(),
                Some(self.opts.pin_dir.clone()),
            ),
            Some(DataPath::Sockets(reason)) => {
                (DataPathKind::Sockets, reason.clone(), Vec::new(), None)
            }
            None => (DataPathKind::Stopped, None, Vec::new(), None),
        };
        let since = self
            .since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Status {
            pid: std::process::id(),
            state: self.state.clone(),
            since,
            data_path: kind,
            fallback_reason: reason,
            hooks,
            pin_dir: pins,
            counters: self.stats.snapshot(),
            mappings: self.mappings.len(),
        }
    }

    fn write_status(&self, state_dir: &Path) {
        if let Err(e) = self.status().write(state_dir) {
            warn!("status file for `portproxy stats`: {e:#}");
        }
    }
}

/// The next failure of a running relay; never while nothing runs.
async fn relay_failed(running: &mut Option<Running>) -> anyhow::Error {
    match running {
        Some(r) => r.relay.failed().await,
        None => std::future::pending().await,
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

    let state_dir = opts.state_dir.clone();
    let stats = Arc::new(Stats::default());
    let firewall =
        Firewall::install(opts.firewall, &opts.wan_iface, opts.max_mappings as usize).await?;
    if firewall.is_some() && opts.xdp {
        warn!(
            "firewall: the fast path does not report grants yet; holes open only for what the socket relay carries"
        );
    }
    let limits = Limits {
        total: opts.max_mappings as usize,
        per_host: opts.max_mappings_per_host as usize,
    };
    let mappings = Mappings::new(limits, firewall, stats.clone());
    let control = match control::bind(&state_dir) {
        Ok(listener) => tokio::spawn(control::serve(listener, mappings.clone())),
        Err(e) => {
            mappings.close_firewall().await;
            return Err(e);
        }
    };
    let mut sup = Supervisor {
        opts,
        handle,
        stats,
        mappings: mappings.clone(),
        running: None,
        // The first `enter` logs whatever it is, even relaying.
        state: State::WaitingFor("the first look at the interfaces".into()),
        since: SystemTime::now(),
        retry_delay: RETRY_FIRST,
        next_check: Instant::now(),
    };
    if let Err(e) = sup.converge(true).await {
        control.abort();
        control::remove(&state_dir);
        mappings.close_firewall().await;
        return Err(e);
    }
    // Written before the first check completes, so `portproxy stats` works as soon as
    // "ready" (or "waiting for") shows.
    sup.write_status(&state_dir);

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_aging = Instant::now();
    loop {
        tokio::select! {
            _ = interrupt.recv() => { info!("SIGINT: stopping"); break; }
            _ = terminate.recv() => { info!("SIGTERM: stopping"); break; }
            e = relay_failed(&mut sup.running) => {
                sup.stop().await;
                sup.retry(format!("the relay failed: {e:#}"));
            }
            Some(_) = events.next() => {
                tokio::time::sleep(SETTLE).await;
                while events.try_recv().is_ok() {}
                sup.converge(false).await?;
                sup.write_status(&state_dir);
            }
            _ = tokio::time::sleep_until(sup.next_check) => {
                sup.converge(false).await?;
                sup.write_status(&state_dir);
            }
            _ = tick.tick() => {
                if let Some(Running { cfg, data_path: DataPath::Fast(fast), .. }) = &mut sup.running {
                    // The kernel does not age its entries: sweep a few times per timeout.
                    if last_aging.elapsed() >= (cfg.pending_timeout / 4).max(Duration::from_secs(1)) {
                        last_aging = Instant::now();
                        match fast.expire_idle_clients(cfg.pending_timeout) {
                            Ok(expired) => sup.stats.add_n(Counter::Expired, expired as u64),
                            Err(e) => warn!("aging the fast path's client entries: {e:#}"),
                        }
                    }
                }
                mappings.expire().await;
                sup.write_status(&state_dir);
            }
        }
    }
    Status::remove(&state_dir);
    control.abort();
    control::remove(&state_dir);
    sup.stop().await;
    mappings.close_firewall().await;
    info!("counters:\n{}", sup.stats.report());
    Ok(())
}
