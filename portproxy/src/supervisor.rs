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
//! Each build starts with a look at the CGN (`upstream::probe`): what it speaks decides
//! which client protocols are relayed and which are answered here (`upstream::Plan`). The
//! probe is repeated while relaying: every 10 s while the CGN answered nothing, every
//! 5 minutes otherwise; a different answer rebuilds the data path.
//!
//! The API and its page (`--api`) live apart from the data path: served on the LAN address
//! as soon as the LAN has one, bound again when it changes, whatever the softwire does,
//! so that a person can see what the daemon waits for (`RunningApi`).
//!
//! Only what a person must fix ends the daemon: a port held by another program at
//! start-up (bad options and missing privileges are refused before this runs).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use log::{info, warn};
use rtnetlink::{Handle, MulticastGroup};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::{self, ApiServer};
use crate::capture::ReplyCapture;
use crate::cli::{Mode, Options};
use crate::config::{Config, Resolved, Side};
use crate::control;
use crate::datapath::{DataPath, ToDaemon};
use crate::effects::firewall::Firewall;
use crate::effects::local_nat::LocalNat;
use crate::fastpath;
use crate::forwards::Forwards;
use crate::mapping::{self, Limits, Mappings};
use crate::relay::{SocketRelay, Tasks};
use crate::serve::{Events, Identity, IgdServer, Mapper, PortControlServer};
use crate::sockets::{self, PortInUse};
use crate::stats::{Counter, Stats};
use crate::status::{DataPathKind, State, Status};
use crate::upstream::{self, CgnState, Keeper, Plan, Probed};

/// Changes come in bursts (a re-created device: link, addresses, routes); act once.
const SETTLE: Duration = Duration::from_millis(250);
/// How often the configuration is resolved again without a change notice.
const RECHECK_WAITING: Duration = Duration::from_secs(1);
const RECHECK_RELAYING: Duration = Duration::from_secs(10);
/// Backoff between failed builds: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How often a running data path looks at the CGN again: soon while it answered nothing
/// (it may be restarting), rarely once it did.
const REPROBE_SILENT: Duration = Duration::from_secs(10);
const REPROBE: Duration = Duration::from_secs(300);

/// A data path running for one configuration.
struct Running {
    cfg: Config,
    probed: Probed,
    probed_at: Instant,
    /// Probes of the CGN while this data path ran, the first included.
    probes: u32,
    plan: Plan,
    data_path: DataPath,
    /// What maps and deletes at the CGN through this data path (the API's too).
    mapper: Arc<Mapper>,
    relay: SocketRelay,
    capture: Option<ReplyCapture>,
    /// Forwards the programs' per-packet log (fast path with `-vv`).
    kernel_log: Option<tokio::task::JoinHandle<()>>,
    /// Learns (and, with firewall holes, delivers) the fast path's grants.
    grants: Option<tokio::task::JoinHandle<()>>,
    /// Keeps the mappings at the CGN across its restarts (`upstream::Keeper`).
    keeper: Option<tokio::task::JoinHandle<()>>,
    /// Keeps the manual forwards at the CGN (`Forwards::keep`).
    forwarding: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    #[allow(clippy::too_many_arguments)]
    async fn start(
        opts: &Options,
        cfg: Config,
        probed: Probed,
        handle: &Handle,
        stats: &Arc<Stats>,
        mappings: &Arc<Mappings>,
        forwards: &Arc<Forwards>,
        identity: &Arc<Identity>,
        cgn_state: &Arc<std::sync::Mutex<CgnState>>,
        igd_events: &Arc<Events>,
        restored: bool,
    ) -> Result<Running> {
        let plan = Plan::choose(opts.mode, probed.speaks);
        if cfg.nat_pmp {
            info!("the CGN speaks {}; {plan}", probed.speaks);
        }
        if let Some(addr) = probed.public_addr() {
            mappings.public_address(addr).await;
        }
        // The CGN may have restarted while the line was down; mappings restored from the
        // file are asked for again in any case.
        let (lost, moved) = {
            let mut cgn_state = cgn_state.lock().unwrap();
            let lost = cgn_state.lost_state(cfg.cgn, &probed.epochs);
            (lost, cgn_state.new_wan_address(cfg.wan.addr))
        };
        // In double NAT the CGN maps to the WAN address: a new one needs every mapping again.
        let moved = moved && mappings.double_nat();
        let recreate = (lost || restored || moved) && mappings.len() > 0;
        let serving = cfg.nat_pmp && plan.serves_any();
        // The LAN's IGD is portproxy when SSDP is on and UPnP is not relayed.
        let serving_upnp = cfg.upnp_udp && plan.upnp == upstream::Handling::Serve;
        let to_daemon = ToDaemon {
            // With firewall holes the programs hold grants back until the hole is open.
            hold_grants: mappings.has_firewall().await,
            serve_nat_pmp: plan.nat_pmp == upstream::Handling::Serve,
            serve_pcp: plan.pcp == upstream::Handling::Serve,
            serve_upnp: serving_upnp,
        };
        let hold_grants = to_daemon.hold_grants;
        let mut data_path =
            DataPath::choose(opts.xdp, &cfg, &opts.pin_dir, opts.verbose >= 2, to_daemon);
        let on_sockets = Arc::new(data_path.socket_share(&cfg));
        // Manual forwards are mapped by portproxy in any mode, so with NAT-PMP/PCP on (which
        // the keeper and the reply capture come with) the CGN's IGD is needed even when
        // every client protocol is relayed.
        let mapping_here = serving || serving_upnp || cfg.nat_pmp;
        let igd = match (mapping_here, plan.via, &probed.igd_location) {
            (true, Some(upstream::Via::Upnp), Some(location)) => {
                match upstream::Igd::discover(location, cfg.wan.addr).await {
                    Ok(igd) => Some(Arc::new(igd)),
                    Err(e) => {
                        warn!(
                            "the CGN's IGD: {e:#}; what portproxy maps there itself (answered \
                             clients, manual forwards) gets network failures"
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        // The data path's own (its sockets close with it); requests go as the LAN hosts.
        let exchanges = Arc::new(upstream::Exchanges::new(sockets::Sender::LanHost));
        let mapper = Arc::new(Mapper::new(
            on_sockets.clone(),
            plan.via,
            igd,
            mappings.clone(),
            identity.clone(),
            exchanges.clone(),
        ));
        let server = serving.then(|| Arc::new(PortControlServer::new(plan, mapper.clone())));
        let igd_server = serving_upnp.then(|| {
            Arc::new(IgdServer::new(
                mapper.clone(),
                igd_events.clone(),
                handle.clone(),
                stats.clone(),
            ))
        });
        if !serving_upnp {
            igd_events.end_all();
        }
        // Bind first: a port in use (say, a second portproxy) must fail before the
        // routing rule, which a running instance depends on, is touched.
        let relay = SocketRelay::start(&on_sockets, stats, mappings, server, igd_server)?;
        // Where NAT-PMP/PCP answers, held grants and announcements leave from (LAN address,
        // port 5351): the relay's socket, or one of its own when the programs carry 5351.
        let lan_port_control = match (cfg.nat_pmp, relay.port_control_socket()) {
            (false, _) => None,
            (true, Some(socket)) => Some(socket),
            (true, None) => {
                let addr = std::net::SocketAddrV4::new(cfg.lan.addr, cfg.nat_pmp_port);
                match sockets::udp_on(&cfg.lan, addr) {
                    Ok(socket) => Some(Arc::new(socket)),
                    Err(e) => {
                        relay.stop().await;
                        return Err(sockets::explain_bind(e, "NAT-PMP/PCP", addr, "--nat-pmp"));
                    }
                }
            }
        };
        // On either data path: the CGN's answers to what the daemon asks as a host, and
        // replies the programs find no client for, must come to the CPE, not the LAN.
        let capture = match cfg.nat_pmp || serving_upnp {
            true => match ReplyCapture::install(handle, &cfg).await {
                Ok(capture) => Some(capture),
                Err(e) => {
                    relay.stop().await;
                    return Err(e);
                }
            },
            false => None,
        };
        let held_to = lan_port_control.clone().filter(|_| hold_grants);
        let grants = match start_grants(&mut data_path, &cfg, stats, mappings, held_to) {
            Ok(grants) => grants,
            Err(e) => {
                relay.stop().await;
                return Err(e);
            }
        };
        let kernel_log = match &mut data_path {
            DataPath::Fast(fast, _) => fast
                .take_kernel_log()
                .map(|log| tokio::spawn(fastpath::forward_kernel_log(log))),
            DataPath::Sockets(_) => None,
        };
        let keeper = lan_port_control.map(|lan| {
            let keeper = Keeper {
                cfg: Arc::new(cfg.clone()),
                speaks: probed.speaks,
                plan,
                mappings: mappings.clone(),
                stats: stats.clone(),
                identity: identity.clone(),
                state: cgn_state.clone(),
                exchanges,
                lan,
            };
            tokio::spawn(keeper.run(recreate))
        });
        // The forwards are asked for as their hosts, like what the keeper makes again: the
        // CGN's answers come through the same reply capture.
        let forwarding = match keeper.is_some() {
            true => Some(tokio::spawn(forwards.clone().keep(mapper.clone()))),
            false => {
                forwards
                    .idle("NAT-PMP/PCP is off (--nat-pmp 0): forwards are kept only with it on");
                None
            }
        };
        Ok(Running {
            keeper,
            forwarding,
            cfg,
            probed,
            probed_at: Instant::now(),
            probes: 1,
            plan,
            data_path,
            mapper,
            relay,
            capture,
            kernel_log,
            grants,
        })
    }

    /// Releases everything: when this returns, the next data path can bind the same ports.
    async fn stop(self) {
        self.relay.stop().await;
        for task in [self.kernel_log, self.grants, self.keeper, self.forwarding]
            .into_iter()
            .flatten()
        {
            task.abort();
            let _ = task.await;
        }
        if let Some(capture) = self.capture
            && let Err(e) = capture.remove().await
        {
            warn!("removing the reply-capture rule: {e:#}");
        }
        if let DataPath::Fast(fast, _) = &self.data_path {
            match fast.stats() {
                Ok(counters) => info!("kernel counters:\n{counters}"),
                Err(e) => warn!("reading the kernel counters: {e:#}"),
            }
        }
        // Dropping the fast path detaches its programs and removes its pins.
    }

    /// Soon while the CGN answered nothing, and once soon after the build (a probe during
    /// an interface change may have missed answers), rarely after that.
    fn reprobe_due(&self) -> bool {
        let silent = self.probed.speaks == upstream::Speaks::default();
        let every = match silent || self.probes < 2 {
            true => REPROBE_SILENT,
            false => REPROBE,
        };
        self.probed_at.elapsed() >= every
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        let on = match self.data_path {
            DataPath::Fast(..) => "the fast path",
            DataPath::Sockets(_) => "sockets",
        };
        format!(
            "relaying between {} ({}) and the CGN {} via {} ({}) on {on}",
            c.lan.iface, c.lan.addr, c.cgn, c.wan.iface, c.wan.addr
        )
    }
}

/// On the fast path, the task that takes the programs' grants (`GRANTS`) into the mapping
/// table; with `held_to` (firewall holes on) it delivers them too, from that socket (the
/// LAN address and port 5351).
fn start_grants(
    data_path: &mut DataPath,
    cfg: &Config,
    stats: &Arc<Stats>,
    mappings: &Arc<Mappings>,
    held_to: Option<Arc<tokio::net::UdpSocket>>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let DataPath::Fast(fast, _) = data_path else {
        return Ok(None);
    };
    if !cfg.nat_pmp {
        return Ok(None);
    }
    let grants = fast.take_grants()?;
    Ok(Some(tokio::spawn(fastpath::forward_grants(
        grants,
        Arc::new(cfg.clone()),
        stats.clone(),
        mappings.clone(),
        held_to,
    ))))
}

/// The API served on one LAN address, until that address changes or goes.
struct RunningApi {
    lan: Side,
    /// Its accept loop, which ends only when the listener fails.
    serving: JoinSet<Result<()>>,
    /// Its connections, which end with it.
    tasks: Tasks,
}

impl RunningApi {
    fn start(shared: &Arc<api::Shared>, lan: &Side) -> Result<RunningApi> {
        let server = ApiServer::new(shared.clone(), lan.clone());
        let listener = server.bind()?;
        let tasks = Tasks::default();
        let mut serving = JoinSet::new();
        serving.spawn(server.run(listener, tasks.clone()));
        Ok(RunningApi {
            lan: lan.clone(),
            serving,
            tasks,
        })
    }

    /// Closes the listener and every connection.
    async fn stop(mut self) {
        self.serving.shutdown().await;
        self.tasks.stop().await;
    }
}

/// Why the running API stopped serving (its listener failed); never while none serves.
async fn api_failed(api: &mut Option<RunningApi>) -> anyhow::Error {
    let Some(api) = api else {
        return std::future::pending().await;
    };
    match api.serving.join_next().await {
        Some(Ok(Err(e))) => e,
        Some(Ok(Ok(()))) => anyhow!("it stopped unexpectedly"),
        Some(Err(e)) => anyhow!("it panicked: {e}"),
        None => std::future::pending().await,
    }
}

struct Supervisor {
    opts: Options,
    handle: Handle,
    stats: Arc<Stats>,
    /// Outlives every data path: mappings (and their holes) survive a rebuild.
    mappings: Arc<Mappings>,
    /// The manual forwards, which outlive every data path too.
    forwards: Arc<Forwards>,
    /// The servers' epoch and nonce key, which survive a rebuild too.
    identity: Arc<Identity>,
    /// The CGN's epochs as last seen, which survive a rebuild too.
    cgn_state: Arc<std::sync::Mutex<CgnState>>,
    /// The IGD's event subscriptions, which survive a rebuild too.
    igd_events: Arc<Events>,
    /// The mappings file is read once the LAN is known (only its hosts come back).
    to_restore: bool,
    /// Mappings restored from the file wait to be asked for at the CGN by the first data path.
    restored: bool,
    running: Option<Running>,
    /// The API's settings and sessions, which survive a rebuild (`None`: `--api 0`).
    api: Option<Arc<api::Shared>>,
    /// The API on the LAN address, while it has one (`follow_lan`).
    running_api: Option<RunningApi>,
    /// Why the API could not be bound last, said once.
    api_failure: Option<String>,
    state: State,
    since: SystemTime,
    started: SystemTime,
    /// The status as last written, for the API.
    published: tokio::sync::watch::Sender<Option<Status>>,
    retry_delay: Duration,
    next_check: Instant,
}

impl Supervisor {
    /// Brings the data path in line with the interfaces. `Err` only for what ends the
    /// daemon: a port held by another program on the first attempt.
    async fn converge(&mut self, first: bool) -> Result<()> {
        let cfg = match Config::resolve(&self.opts, &self.handle).await {
            Ok(Resolved::Ready(cfg)) => {
                self.follow_lan(Some(&cfg.lan), first).await?;
                cfg
            }
            Ok(Resolved::Waiting { what, lan }) => {
                self.stop().await;
                self.follow_lan(lan.as_ref(), first).await?;
                self.enter(State::WaitingFor(what));
                return Ok(());
            }
            Err(e) => {
                self.stop().await;
                self.retry(format!("{e:#}"));
                return Ok(());
            }
        };
        let unchanged =
            self.state == State::Relaying && self.running.as_ref().is_some_and(|r| r.cfg == cfg);
        if unchanged && !self.running.as_ref().is_some_and(Running::reprobe_due) {
            self.next_check = Instant::now() + RECHECK_RELAYING;
            return Ok(());
        }
        self.stats.add(Counter::CgnProbes);
        let mut probed = upstream::probe(&cfg).await;
        if unchanged && let Some(running) = &mut self.running {
            // While the data path runs, a look only adds what answers now: an answer lost
            // under load (a flood at the CGN) must not take a protocol away and rebuild.
            // An interface change looks afresh.
            probed.speaks = probed.speaks.union(running.probed.speaks);
            if running.probed.speaks != probed.speaks {
                info!(
                    "the CGN now speaks {} (was: {})",
                    probed.speaks, running.probed.speaks
                );
            }
            let plan = Plan::choose(self.opts.mode, probed.speaks);
            // Relaying both either way: the data path stays as it is.
            if plan == running.plan || !(plan.serves_any() || running.plan.serves_any()) {
                if let Some(addr) = probed.public_addr() {
                    self.mappings.public_address(addr).await;
                }
                running.probed = probed;
                running.probed_at = Instant::now();
                running.probes = running.probes.saturating_add(1);
                running.plan = plan;
                self.next_check = Instant::now() + RECHECK_RELAYING;
                return Ok(());
            }
        }
        if self.running.is_some() {
            self.stop().await;
            if !unchanged {
                info!("interfaces changed");
            }
        }
        info!("configuration:\n{cfg}");
        if std::mem::take(&mut self.to_restore) {
            let own = [cfg.lan.addr, cfg.wan.addr];
            let lan = cfg.lan.clone();
            let allowed = |host| mapping::is_lan_host(host, &lan, &own);
            self.restored = self
                .mappings
                .restore(&self.opts.mappings_file, allowed)
                .await
                > 0;
        }
        let started = Running::start(
            &self.opts,
            cfg,
            probed,
            &self.handle,
            &self.stats,
            &self.mappings,
            &self.forwards,
            &self.identity,
            &self.cgn_state,
            &self.igd_events,
            self.restored,
        )
        .await;
        match started {
            Ok(new) => {
                if let Some(api) = &self.api {
                    api.attach(Some(new.mapper.clone()));
                }
                self.restored = false;
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
            if let Some(api) = &self.api {
                api.attach(None);
            }
            running.stop().await;
        }
    }

    /// Serves the API on `lan`'s address: bound when the LAN has one, bound again when it
    /// changes, closed when it goes, whatever the data path does. A bind that fails is
    /// tried again at the next look at the interfaces; `Err` only for a port held by
    /// another program on the first look, which ends the daemon.
    async fn follow_lan(&mut self, lan: Option<&Side>, first: bool) -> Result<()> {
        let Some(shared) = self.api.clone() else {
            return Ok(());
        };
        if self.running_api.as_ref().map(|api| &api.lan) == lan {
            return Ok(());
        }
        self.stop_api().await;
        let Some(lan) = lan else {
            return Ok(());
        };
        match RunningApi::start(&shared, lan) {
            Ok(api) => {
                info!("api: http://{}:{}/", lan.addr, self.opts.api_port);
                self.running_api = Some(api);
                self.api_failure = None;
            }
            Err(e) if first && e.chain().any(|c| c.is::<PortInUse>()) => return Err(e),
            Err(e) => {
                let why = format!("{e:#}");
                if self.api_failure.as_ref() != Some(&why) {
                    warn!("{why}; trying again at the next look at the interfaces");
                    self.api_failure = Some(why);
                }
            }
        }
        Ok(())
    }

    async fn stop_api(&mut self) {
        if let Some(api) = self.running_api.take() {
            api.stop().await;
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
        self.state = state;
        self.since = SystemTime::now();
        // The status file shows a new state before the log does: whoever reads the log line
        // and then asks `portproxy stats` finds it there.
        self.write_status(&self.opts.state_dir);
        if let State::WaitingFor(_) = &self.state {
            warn!("{}; relaying starts when it is there", self.state);
        }
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
            Some(DataPath::Fast(fast, _)) => (
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
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        Status {
            pid: std::process::id(),
            state: self.state.clone(),
            since: unix(self.since),
            started: unix(self.started),
            data_path: kind,
            fallback_reason: reason,
            hooks,
            pin_dir: pins,
            counters: self.stats.snapshot(),
            mappings: self.mappings.len(),
            cgn_speaks: self.running.as_ref().map(|r| r.probed.speaks),
            port_control: self
                .running
                .as_ref()
                .filter(|r| r.cfg.nat_pmp)
                .map(|r| r.plan.to_string()),
            double_nat: self.mappings.double_nat(),
        }
    }

    fn write_status(&self, state_dir: &Path) {
        let status = self.status();
        if let Err(e) = status.write(state_dir) {
            warn!("status file for `portproxy stats`: {e:#}");
        }
        self.published.send_replace(Some(status));
    }
}

/// The next failure of a running relay; never while nothing runs.
async fn relay_failed(running: &mut Option<Running>) -> anyhow::Error {
    match running {
        Some(r) => r.relay.failed().await,
        None => std::future::pending().await,
    }
}

pub async fn run(mut opts: Options) -> Result<()> {
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
    let local_nat =
        match LocalNat::install(opts.double_nat, &opts.wan_iface, opts.max_mappings as usize).await
        {
            Ok(local_nat) => local_nat,
            Err(e) => {
                if let Some(firewall) = firewall {
                    firewall.remove().await;
                }
                return Err(e);
            }
        };
    // In double NAT the CGN cannot reach LAN addresses: every request is answered here and
    // mapped for the router's WAN address (`LocalNat::install` said why, once).
    if local_nat.is_some() && opts.mode != Mode::Proxy {
        if opts.mode == Mode::Relay {
            warn!("--mode relay cannot work in double NAT; answering NAT-PMP, PCP and UPnP here");
        }
        opts.mode = Mode::Proxy;
    }
    let limits = Limits {
        total: opts.max_mappings as usize,
        per_host: opts.max_mappings_per_host as usize,
    };
    let mappings = Mappings::new(limits, firewall, local_nat, stats.clone());
    // A forwards file that cannot be read ends the daemon: a person must fix it, and
    // running without the forwards would overwrite it at the next change.
    let forwards = match Forwards::load(opts.forwards_file.clone(), mappings.clone()) {
        Ok(forwards) => forwards,
        Err(e) => {
            mappings.close_firewall().await;
            return Err(e.context("the manual forwards (--forwards-file): fix or remove the file"));
        }
    };
    let control = match control::bind(&state_dir) {
        Ok(listener) => tokio::spawn(control::serve(listener, mappings.clone(), forwards.clone())),
        Err(e) => {
            mappings.close_firewall().await;
            return Err(e);
        }
    };
    let igd_events = Arc::new(Events::new(&mappings, stats.clone()));
    let published = tokio::sync::watch::Sender::new(None);
    let api = match opts.api {
        true => {
            let shared = api::Shared::new(
                &opts,
                published.subscribe(),
                stats.clone(),
                handle.clone(),
                mappings.clone(),
                forwards.clone(),
            );
            match shared {
                Ok(shared) => Some(Arc::new(shared)),
                Err(e) => {
                    control.abort();
                    control::remove(&state_dir);
                    mappings.close_firewall().await;
                    return Err(e);
                }
            }
        }
        false => None,
    };
    let mut sup = Supervisor {
        opts,
        handle,
        stats,
        api,
        running_api: None,
        api_failure: None,
        published,
        started: SystemTime::now(),
        mappings: mappings.clone(),
        forwards,
        identity: Arc::new(Identity::default()),
        cgn_state: Arc::default(),
        igd_events,
        to_restore: true,
        restored: false,
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
    sup.write_status(&state_dir);

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_aging = Instant::now();
    let mut last_save = Instant::now();
    loop {
        tokio::select! {
            _ = interrupt.recv() => { info!("SIGINT: stopping"); break; }
            _ = terminate.recv() => { info!("SIGTERM: stopping"); break; }
            e = relay_failed(&mut sup.running) => {
                sup.stop().await;
                sup.retry(format!("the relay failed: {e:#}"));
            }
            e = api_failed(&mut sup.running_api) => {
                warn!("the API failed: {e:#}; binding it again at the next look at the interfaces");
                sup.stop_api().await;
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
                if let Some(Running { cfg, data_path: DataPath::Fast(fast, _), .. }) = &mut sup.running {
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
                if mappings.save(&sup.opts.mappings_file, last_save.elapsed(), false).await {
                    last_save = Instant::now();
                }
                sup.write_status(&state_dir);
            }
        }
    }
    Status::remove(&state_dir);
    control.abort();
    control::remove(&state_dir);
    sup.stop().await;
    sup.stop_api().await;
    // A daemon that never got to read the file must not overwrite it with nothing.
    if !sup.to_restore {
        mappings
            .save(&sup.opts.mappings_file, last_save.elapsed(), true)
            .await;
    }
    mappings.close_firewall().await;
    info!("counters:\n{}", sup.stats.report());
    Ok(())
}
