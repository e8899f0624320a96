//! `cargo xtask bench`: throughput, latency, flood resilience and footprint of each way of
//! getting NAT-PMP/PCP from the LAN to the CGN, measured in one run, modes interleaved
//! (A B C D A B C D ...), so that the ratios between them compare like with like.
//!
//! Modes: (a) `routing`: clients address the CGN directly and the CPE only forwards;
//! (b) `sockets`: portproxy's socket relay; (c) `fast`: portproxy `--xdp` (reported as
//! unavailable, with the daemon's reason, when it falls back to sockets); (d) `nft`:
//! a hand-written nftables DNAT with conntrack.
//!
//! - `net`: the namespaces (two LAN hosts, CPE, CGN), nftables, thread placement.
//! - `traffic`: responder (sink), generator, raw-socket scale sender, prober.
//! - `sys`: /proc and bpftool readings.
//! - `report`: the table, the targets and the JSON; `chart`: the PNG.

mod chart;
mod igd;
mod net;
mod renewal;
mod report;
mod sys;
mod traffic;

use std::{
    net::SocketAddrV4,
    os::fd::OwnedFd,
    path::PathBuf,
    process::Command,
    sync::{Arc, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;

pub use net::remove_namespaces_of;
use net::{BenchNet, join_within, spawn_in};
use traffic::{GenStats, ProbeResult, Running, SinkStats};

use crate::{CGN_SOFTWIRE_IP, Daemon, LAN_GATEWAY, LAN1_IP, LAN2_IP, PCP_PORT, Softwire};

const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// First source port of the generator's client tuples on each LAN host (up to 16,384).
const GEN_PORT_BASE: u16 = 40000;
/// First source port of the scale test's tuples (32,768 per LAN host): below the
/// generator's, so that every reply to them lands on a closed port (counted as NoPorts).
const SCALE_PORT_BASE: u32 = 1024;
const PIN_DIR_CLIENTS: &str = "/sys/fs/bpf/portproxy/CLIENTS";
/// `--timeout` of the fast path's daemon in the scale test, to see its aging sweep.
const AGING_TIMEOUT_S: u64 = 2;

/// Set by the `bench` binary's SIGINT/SIGTERM handler: the run stops after the current
/// measurement and removes what it built.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    about = "Benchmarks portproxy's data paths against plain routing and nftables DNAT, in namespaces"
)]
pub struct Args {
    /// Short run: every mode once, about a second per measurement; still writes every file.
    #[arg(long)]
    pub smoke: bool,
    /// Where bench.json, bench.png and bench.txt go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Rounds of interleaved modes (A B C D A B C D ...).
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    /// Seconds of each throughput measurement (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Seconds of each latency measurement (one request at a time, one per ms at most).
    #[arg(long, default_value_t = 2.5)]
    pub latency_seconds: f64,
    /// Seconds of each flood measurement.
    #[arg(long, default_value_t = 2.0)]
    pub flood_seconds: f64,
    /// The CPE-CGN link: l2 (veth) or l3 (TUN devices joined by a forwarder thread).
    #[arg(long, default_value = "l2", value_name = "l2|l3")]
    pub softwire: Softwire,
    /// Client source ports per LAN host for the throughput generator (two hosts).
    #[arg(long, default_value_t = 256)]
    pub ports_per_host: u16,
    /// Datagrams per sendmmsg.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Client tuples of the scale test (half on each LAN host).
    #[arg(long, default_value_t = 65536)]
    pub scale_tuples: u32,
    /// Mappings the proxy holds while their client renews them (the `proxy` mode's renewal
    /// measurement).
    #[arg(long, default_value_t = 4096)]
    pub renewal_mappings: u32,
    /// Seconds of each renewal measurement window (idle, then renewing).
    #[arg(long, default_value_t = 10.0)]
    pub renewal_seconds: f64,
    /// Modes to run, comma-separated, of routing, sockets, fast, nft, proxy.
    #[arg(
        long,
        default_value = "routing,sockets,fast,nft,proxy",
        value_delimiter = ','
    )]
    pub modes: Vec<String>,
    /// CPU of the generator and the prober (LAN side) [default: 0].
    #[arg(long)]
    pub cpu_lan: Option<usize>,
    /// CPU of portproxy on the CPE [default: 1, or 0 on one CPU].
    #[arg(long)]
    pub cpu_cpe: Option<usize>,
    /// CPU of the CGN's responder [default: 1, or 0 on one CPU].
    #[arg(long)]
    pub cpu_cgn: Option<usize>,
}

/// Where each party runs.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub lan: usize,
    pub cpe: usize,
    pub cgn: usize,
    pub online: usize,
}

impl Placement {
    fn describe(&self) -> String {
        format!(
            "generator + prober on CPU {} (threads in lan1/lan2), portproxy on CPU {} (taskset), \
             responder on CPU {} (thread in cgn); {} CPUs online. Kernel forwarding, bridging \
             and NAT run in softirq on the CPU of the thread that sent the packet into a veth.",
            self.lan, self.cpe, self.cgn, self.online
        )
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    Routing,
    Sockets,
    Fast(Vec<String>),
    Nft,
    /// `--mode proxy`: portproxy answers the NAT-PMP requests itself and asks the responder
    /// (which speaks NAT-PMP only) as the client: a translated request.
    Proxy,
}

#[derive(Debug, Clone)]
pub struct Mode {
    pub name: String,
    pub kind: Kind,
    /// Set when the mode cannot be measured (the fast path fell back to sockets, the daemon
    /// did not start): shown instead of numbers.
    pub unavailable: Option<String>,
}

/// One throughput measurement.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub window_s: f64,
    pub delivered: u64,
    pub sink_replies: u64,
    pub sent: u64,
    pub send_blocked: u64,
    pub replies: u64,
    pub per_second: Vec<u64>,
    pub busy_ns: u64,
    pub per_cpu_busy_ns: Vec<u64>,
    pub daemon_cpu_ns: Option<u64>,
    pub generator_cpu_ns: u64,
    pub responder_cpu_ns: u64,
    pub cpe_rcvbuf_errors: u64,
    pub cgn_rcvbuf_errors: u64,
}

impl Throughput {
    pub fn pps(&self, n: u64) -> f64 {
        n as f64 / self.window_s
    }
}

/// Everything measured of one mode in one round.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub throughput: Throughput,
    pub latency: ProbeResult,
    pub flood: ProbeResult,
    pub flood_throughput: Throughput,
    pub rss_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    /// The daemon's VmHWM as soon as it is ready: what loading (the fast path's programs,
    /// or the sockets) cost at its peak, before any traffic.
    pub load_hwm_kib: Option<u64>,
    pub bpf_maps: Option<Result<(Vec<String>, u64), String>>,
    pub daemon_counters: Vec<String>,
    pub leftover_rule: bool,
}

/// One pass of the scale test.
#[derive(Debug, Clone, Default)]
pub struct ScalePass {
    pub tuples: u64,
    pub sent: u64,
    pub delivered: u64,
    /// Replies that came back to the LAN hosts (to closed ports: their UDP NoPorts).
    pub replies: u64,
    pub send_s: f64,
    /// From the first send to the last request seen by the sink.
    pub relay_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Scale {
    pub new: ScalePass,
    pub known: ScalePass,
    pub clients_entries: Option<Result<u64, String>>,
    /// Fast path: the daemon's aging of CLIENTS seen from outside.
    pub aging: Option<Result<Aging, String>>,
    pub daemon_counters: Vec<String>,
}

/// The fast path's aging sweep, from outside: entries before, how long until the map was
/// empty, and the daemon's CPU time meanwhile (the sweep plus its 1 s status-file writes).
#[derive(Debug, Clone, Default)]
pub struct Aging {
    pub entries_before: u64,
    pub entries_after: u64,
    pub idle_timeout_s: u64,
    pub emptied_within_s: Option<f64>,
    pub daemon_cpu_ns: u64,
}

/// All results of a mode.
#[derive(Debug, Clone)]
pub struct ModeResult {
    pub mode: Mode,
    pub rounds: Vec<Round>,
    pub scale: Option<Scale>,
    /// The proxy's mappings under renewal.
    pub renewal: Option<std::result::Result<renewal::Renewal, String>>,
    /// The IGD's AddPortMapping calls (measured with the proxy mode).
    pub igd: Option<std::result::Result<igd::IgdLoad, String>>,
}

/// A running daemon, a DNAT ruleset (removed on drop), or nothing: what a mode puts on the CPE.
enum Setup<'a> {
    Nothing,
    Daemon(Daemon),
    Nft(#[allow(dead_code)] NftGuard<'a>),
}

impl Setup<'_> {
    fn pid(&self) -> Option<u32> {
        match self {
            Setup::Daemon(d) => Some(d.pid()),
            _ => None,
        }
    }
}

/// The whole benchmark: what the `bench` binary runs.
pub fn run(mut args: Args) -> Result<()> {
    if args.smoke {
        args.rounds = 1;
        args.seconds = args.seconds.min(1.0);
        args.latency_seconds = args.latency_seconds.min(1.0);
        args.flood_seconds = args.flood_seconds.min(1.0);
        args.renewal_seconds = args.renewal_seconds.min(1.0);
    }
    if args.rounds == 0 || args.rounds > 50 || args.seconds <= 0.0 || args.seconds > 60.0 {
        bail!("--rounds must be 1-50 and --seconds 0-60");
    }
    if !(1..=16384).contains(&args.ports_per_host) {
        bail!("--ports-per-host must be 1-16384");
    }
    if args.scale_tuples < 2 || args.scale_tuples > 65536 {
        bail!("--scale-tuples must be 2-65536");
    }
    if !(1..=16384).contains(&args.renewal_mappings)
        || !(0.1..=600.0).contains(&args.renewal_seconds)
    {
        bail!("--renewal-mappings must be 1-16384 and --renewal-seconds 0.1-600");
    }
    let bin = PathBuf::from(std::env::var_os("PORTPROXY_BIN").context(
        "PORTPROXY_BIN is not set: use `cargo xtask bench` (or `cargo xtask test`), which build portproxy and set it",
    )?);
    if !bin.exists() {
        bail!("PORTPROXY_BIN={} does not exist", bin.display());
    }
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (network namespaces, nftables, portproxy)");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let online = sys::online_cpus();
    let other = if online > 1 { 1 } else { 0 };
    let placement = Placement {
        lan: args.cpu_lan.unwrap_or(0),
        cpe: args.cpu_cpe.unwrap_or(other),
        cgn: args.cpu_cgn.unwrap_or(other),
        online,
    };
    for cpu in [placement.lan, placement.cpe, placement.cgn] {
        if cpu >= online {
            bail!("CPU {cpu} is not online ({online} CPUs)");
        }
    }
    let kernel = sys::kernel_release();
    let (layouts, layout_note) = fast_variants(&bin);
    let modes = modes(&args.modes, &layouts)?;
    eprintln!("bench: kernel {kernel}, {}", placement.describe());
    eprintln!("bench: fast path hook layouts: {layout_note}");

    let load_start = sys::loadavg();
    let net = BenchNet::build(args.softwire)?;
    let started = Instant::now();
    let results = measure(&args, &bin, &net, placement, modes);
    let results = results?;
    let (size, stripped) = sys::binary_sizes(&bin, &net.dir)?;
    let report = report::Report {
        args: args.clone(),
        kernel,
        placement,
        bin,
        size,
        stripped,
        layout_note,
        results,
        elapsed_s: started.elapsed().as_secs_f64(),
        load: [load_start, sys::loadavg()],
    };
    drop(net);
    report.write()
}

/// Fast-path variants: one per hook layout if `portproxy --help` offers a choice.
fn fast_variants(bin: &std::path::Path) -> (Vec<(String, Vec<String>)>, String) {
    let default = vec![("fast".to_owned(), vec!["--xdp".to_owned()])];
    let Ok(out) = Command::new(bin).arg("--help").output() else {
        return (
            default,
            "`portproxy --help` did not run; measuring --xdp only".into(),
        );
    };
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    // An option about hooks/layouts/attachment, e.g. `--xdp-mode <MODE> ... [possible values: a, b]`.
    let mut option: Option<String> = None;
    for (i, line) in help.lines().enumerate() {
        let trimmed = line.trim_start();
        let Some(name) = trimmed.split_whitespace().find(|w| w.starts_with("--")) else {
            continue;
        };
        let lower = name.to_lowercase();
        if !["hook", "layout", "attach", "xdp-mode", "fast-path"]
            .iter()
            .any(|k| lower.contains(k))
        {
            continue;
        }
        let name = name
            .trim_end_matches(',')
            .split('=')
            .next()
            .unwrap_or(name)
            .to_owned();
        // Possible values may be on this line or the following ones of the same option.
        let block: String = help.lines().skip(i).take(6).collect::<Vec<_>>().join(" ");
        if let Some(values) = block
            .split_once("[possible values: ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(values, _)| values)
        {
            let variants = values
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| {
                    (
                        format!("fast:{v}"),
                        vec!["--xdp".to_owned(), name.clone(), v],
                    )
                })
                .collect::<Vec<_>>();
            if !variants.is_empty() {
                let note = format!(
                    "`{name}` offers {}: each measured",
                    variants
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return (variants, note);
            }
        }
        option = Some(name);
    }
    match option {
        Some(name) => (
            default,
            format!(
                "`portproxy --help` has {name} but lists no values for it; measuring --xdp only"
            ),
        ),
        None => (
            default,
            "`portproxy --help` offers no choice of hook layout; measuring --xdp as it is".into(),
        ),
    }
}

fn modes(names: &[String], layouts: &[(String, Vec<String>)]) -> Result<Vec<Mode>> {
    let mut modes = Vec::new();
    for name in names {
        let mode = |name: &str, kind| Mode {
            name: name.to_owned(),
            kind,
            unavailable: None,
        };
        match name.trim() {
            "routing" => modes.push(mode("routing", Kind::Routing)),
            "sockets" => modes.push(mode("sockets", Kind::Sockets)),
            "fast" => {
                for (name, args) in layouts {
                    modes.push(mode(name, Kind::Fast(args.clone())));
                }
            }
            "nft" => modes.push(mode("nft", Kind::Nft)),
            "proxy" => modes.push(mode("proxy", Kind::Proxy)),
            other => bail!("unknown mode {other:?} (routing, sockets, fast, nft, proxy)"),
        }
    }
    if modes.is_empty() {
        bail!("no modes to run");
    }
    Ok(modes)
}

/// The shared pieces of a run: the responder and the clients' sockets.
struct Rig<'a> {
    args: &'a Args,
    bin: &'a std::path::Path,
    net: &'a BenchNet,
    placement: Placement,
    sink: Running<SinkStats>,
    sink_thread: Option<thread::JoinHandle<Result<()>>>,
    base: Instant,
    lan1_sockets: Arc<Vec<OwnedFd>>,
    lan2_sockets: Arc<Vec<OwnedFd>>,
    daemons: u32,
    /// What the generator sends in the mode being measured (`generator_payload`).
    payload: &'static [u8],
}

/// The generator's request: a public address request (answered by the CGN through the
/// relays), or for the proxy a map request, which it translates and asks the CGN for.
fn generator_payload(kind: &Kind) -> &'static [u8] {
    match kind {
        Kind::Proxy => &traffic::MAP_REQUEST,
        _ => &traffic::PUBLIC_ADDRESS_REQUEST,
    }
}

impl Drop for Rig<'_> {
    fn drop(&mut self) {
        self.sink.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.sink_thread.take() {
            if let Err(e) = join_within(handle, Duration::from_secs(2), "the responder") {
                eprintln!("bench: {e:#}");
            }
        }
    }
}

fn measure(
    args: &Args,
    bin: &std::path::Path,
    net: &BenchNet,
    placement: Placement,
    mut modes: Vec<Mode>,
) -> Result<Vec<ModeResult>> {
    let base = Instant::now();
    let sink = Running::<SinkStats>::new();
    let (stop, stats) = (sink.stop.clone(), sink.stats.clone());
    let sink_thread = spawn_in(net.cgn(), "responder", placement.cgn, move || {
        traffic::respond(PCP_PORT, &stop, &stats, base)
    })?;
    let mut rig = Rig {
        args,
        bin,
        net,
        placement,
        sink,
        sink_thread: Some(sink_thread),
        base,
        lan1_sockets: Arc::new(traffic::client_sockets(
            net.lan(1),
            GEN_PORT_BASE,
            args.ports_per_host,
        )?),
        lan2_sockets: Arc::new(traffic::client_sockets(
            net.lan(2),
            GEN_PORT_BASE,
            args.ports_per_host,
        )?),
        daemons: 0,
        payload: &traffic::PUBLIC_ADDRESS_REQUEST,
    };
    // The responder answers and the path works, before anything is timed.
    let check = rig.latency(cgn_target(), Duration::from_millis(200), 5)?;
    if check.answered == 0 {
        bail!("the CGN responder does not answer over plain routing");
    }

    let mut results: Vec<ModeResult> = modes
        .iter()
        .map(|m| ModeResult {
            mode: m.clone(),
            rounds: Vec::new(),
            scale: None,
            renewal: None,
            igd: None,
        })
        .collect();
    for round in 0..args.rounds {
        for (mode, result) in modes.iter_mut().zip(results.iter_mut()) {
            if mode.unavailable.is_some() {
                continue;
            }
            check_interrupted()?;
            eprintln!("bench: round {}/{} {}", round + 1, args.rounds, mode.name);
            match rig.round(mode) {
                Ok(Some(r)) => result.rounds.push(r),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("bench: {} failed: {e:#}", mode.name);
                    mode.unavailable = Some(format!("measurement failed: {e:#}"));
                }
            }
            result.mode = mode.clone();
        }
    }
    for (mode, result) in modes.iter_mut().zip(results.iter_mut()) {
        if mode.unavailable.is_some() {
            continue;
        }
        check_interrupted()?;
        eprintln!("bench: scale {} ({} tuples)", mode.name, args.scale_tuples);
        match rig.scale(mode) {
            Ok(scale) => result.scale = Some(scale),
            Err(e) => eprintln!("bench: scale {} failed: {e:#}", mode.name),
        }
        if matches!(mode.kind, Kind::Proxy) {
            eprintln!(
                "bench: {} mappings under renewal ({} s windows)",
                args.renewal_mappings, args.renewal_seconds
            );
            result.renewal = Some(rig.renewal().map_err(|e| {
                eprintln!("bench: renewal failed: {e:#}");
                format!("{e:#}")
            }));
            eprintln!(
                "bench: {} AddPortMapping calls to the IGD",
                args.renewal_mappings
            );
            result.igd = Some(rig.igd().map_err(|e| {
                eprintln!("bench: igd failed: {e:#}");
                format!("{e:#}")
            }));
        }
        result.mode = mode.clone();
    }
    Ok(results)
}

fn cgn_target() -> SocketAddrV4 {
    SocketAddrV4::new(CGN_SOFTWIRE_IP, PCP_PORT)
}

fn target(kind: &Kind) -> SocketAddrV4 {
    match kind {
        Kind::Routing => cgn_target(),
        _ => SocketAddrV4::new(LAN_GATEWAY, PCP_PORT),
    }
}

impl<'a> Rig<'a> {
    /// Puts the mode's relay on the CPE. `Ok(Err(reason))` when the mode is unavailable.
    fn setup(&mut self, mode: &Mode) -> Result<std::result::Result<Setup<'a>, String>> {
        match &mode.kind {
            Kind::Routing => Ok(Ok(Setup::Nothing)),
            Kind::Nft => {
                let net: &'a BenchNet = self.net;
                net.nft_dnat(true)?;
                Ok(Ok(Setup::Nft(NftGuard(net))))
            }
            Kind::Sockets => match self.spawn_daemon(&[]) {
                Ok(d) => Ok(Ok(Setup::Daemon(d))),
                Err(e) => Ok(Err(format!("portproxy did not start: {e:#}"))),
            },
            Kind::Proxy => {
                // Every generator tuple's mapping goes into the table: room for all of them.
                let args = [
                    "--mode",
                    "proxy",
                    "--max-mappings",
                    "65536",
                    "--max-mappings-per-host",
                    "65536",
                ]
                .map(String::from);
                match self.spawn_daemon(&args) {
                    Ok(d) => Ok(Ok(Setup::Daemon(d))),
                    Err(e) => Ok(Err(format!("portproxy --mode proxy did not start: {e:#}"))),
                }
            }
            Kind::Fast(extra) => {
                let daemon = match self.spawn_daemon(extra) {
                    Ok(d) => d,
                    Err(e) => return Ok(Err(format!("portproxy --xdp did not start: {e:#}"))),
                };
                match fast_path_state(&daemon.log()) {
                    Ok(()) => Ok(Ok(Setup::Daemon(daemon))),
                    Err(reason) => Ok(Err(reason)),
                }
            }
        }
    }

    fn spawn_daemon(&mut self, extra: &[String]) -> Result<Daemon> {
        self.daemons += 1;
        let mut cmd = self.net.cpe().command("taskset");
        cmd.args(["-c", &self.placement.cpe.to_string()])
            .arg(self.bin)
            .args(["--lan-iface", "br-lan", "--wan-iface", "softwire"])
            // SSDP off unless the measurement wants it (the IGD's).
            .args(match extra.iter().any(|a| a == "--upnp-udp") {
                true => &[][..],
                false => &["--upnp-udp", "0"][..],
            })
            .args([
                // Room for the scale test's 65,536 client tuples on both data paths, and no
                // per-host rate limit: the generator is one host sending as fast as it can,
                // and the bench measures the data path (the limiter has its own tests).
                "--max-clients",
                "65536",
                "--rate-limit",
                "0",
                "-v",
            ])
            .arg("--mappings-file")
            .arg(self.net.dir.join(format!("mappings-{}.json", self.daemons)))
            .arg("--forwards-file")
            .arg(self.net.dir.join(format!("forwards-{}.json", self.daemons)))
            .args(extra);
        let log = self.net.dir.join(format!("portproxy-{}.log", self.daemons));
        let mut daemon = Daemon::spawn("portproxy", cmd, log)?;
        daemon.wait_ready(DAEMON_READY_TIMEOUT, |d| d.log().contains("ready:"))?;
        Ok(daemon)
    }

    /// Stops the daemon (SIGTERM), returns its exit counters, and removes a reply-capture
    /// rule it might have left.
    fn teardown(&self, setup: Setup<'_>) -> Result<(Vec<String>, bool)> {
        let counters = match setup {
            Setup::Daemon(daemon) => {
                let log = daemon.log();
                drop(daemon);
                // The daemon logs its counters while exiting; read the file again after.
                let log_after = std::fs::read_to_string(
                    self.net.dir.join(format!("portproxy-{}.log", self.daemons)),
                )
                .unwrap_or(log);
                exit_counters(&log_after)
            }
            other => {
                drop(other);
                Vec::new()
            }
        };
        let leftover = self.net.remove_leftover_capture_rule()?;
        Ok((counters, leftover))
    }

    fn round(&mut self, mode: &mut Mode) -> Result<Option<Round>> {
        let setup = match self.setup(mode)? {
            Ok(setup) => setup,
            Err(reason) => {
                eprintln!("bench: {}: {reason}", mode.name);
                mode.unavailable = Some(reason);
                return Ok(None);
            }
        };
        let pid = setup.pid();
        let dst = target(&mode.kind);
        self.payload = generator_payload(&mode.kind);
        let mut round = Round::default();
        if let Some(pid) = pid {
            round.load_hwm_kib = Some(sys::memory_kib(pid)?.1);
        }
        let outcome = (|| -> Result<()> {
            let all: Vec<Arc<Vec<OwnedFd>>> =
                vec![self.lan1_sockets.clone(), self.lan2_sockets.clone()];
            round.throughput = self.throughput(&all, dst, pid, self.args.seconds, None)?;
            if let Some(pid) = pid {
                round.bpf_maps = Some(sys::bpf_maps(pid));
            }
            round.latency =
                self.latency(dst, Duration::from_secs_f64(self.args.latency_seconds), 20)?;
            let flood = vec![self.lan2_sockets.clone()];
            let (flood_tp, flood_probe) = {
                let mut probe_result = None;
                let tp = self.throughput(
                    &flood,
                    dst,
                    pid,
                    self.args.flood_seconds,
                    Some(&mut probe_result),
                )?;
                (tp, probe_result.unwrap_or_default())
            };
            round.flood_throughput = flood_tp;
            round.flood = flood_probe;
            if let Some(pid) = pid {
                let (rss, hwm) = sys::memory_kib(pid)?;
                round.rss_kib = Some(rss);
                round.hwm_kib = Some(hwm);
            }
            Ok(())
        })();
        let (counters, leftover) = self.teardown(setup)?;
        round.daemon_counters = counters;
        round.leftover_rule = leftover;
        if leftover {
            eprintln!(
                "bench: {}: the daemon left its reply-capture rule; removed",
                mode.name
            );
        }
        outcome?;
        Ok(Some(round))
    }

    /// Runs the generator on `sockets` against `dst` for a 0.5 s warm-up plus `seconds`;
    /// with `probe`, the prober on lan1 runs during the window (the flood test).
    fn throughput(
        &self,
        sockets: &[Arc<Vec<OwnedFd>>],
        dst: SocketAddrV4,
        daemon: Option<u32>,
        seconds: f64,
        probe: Option<&mut Option<ProbeResult>>,
    ) -> Result<Throughput> {
        let warmup = if self.args.smoke { 0.3 } else { 0.5 };
        let total = Duration::from_secs_f64(warmup + seconds + 2.0);
        let gen_ = Running::<GenStats>::new();
        let mut handles = Vec::new();
        // One generator thread drives every socket given (they live in their own namespaces).
        {
            let (stop, stats) = (gen_.stop.clone(), gen_.stats.clone());
            let sockets: Vec<Arc<Vec<OwnedFd>>> = sockets.to_vec();
            let batch = self.args.batch;
            let payload = self.payload;
            handles.push(spawn_in(
                self.net.lan(1),
                "generator",
                self.placement.lan,
                move || {
                    let all: Vec<&OwnedFd> = sockets.iter().flat_map(|s| s.iter()).collect();
                    let owned: Vec<OwnedFd> = all
                        .iter()
                        .map(|fd| fd.try_clone())
                        .collect::<std::io::Result<_>>()?;
                    traffic::generate(
                        &owned,
                        dst,
                        payload,
                        batch,
                        &stop,
                        Instant::now() + total,
                        &stats,
                    )
                },
            )?);
        }
        thread::sleep(Duration::from_secs_f64(warmup));
        let sink = &self.sink.stats;
        let snap = || -> Result<Snapshot> {
            Ok(Snapshot {
                at: Instant::now(),
                delivered: sink.requests.load(Ordering::Relaxed),
                sink_replies: sink.replies.load(Ordering::Relaxed),
                sent: gen_.stats.sent.load(Ordering::Relaxed),
                blocked: gen_.stats.send_blocked.load(Ordering::Relaxed),
                replies: gen_.stats.replies.load(Ordering::Relaxed),
                busy: sys::CpuBusy::read()?,
                daemon_ns: daemon.map(sys::process_cpu_ns).transpose()?,
                gen_ns: sys::thread_cpu_ns(gen_.stats.tid.load(Ordering::Relaxed)),
                sink_ns: sys::thread_cpu_ns(sink.tid.load(Ordering::Relaxed)),
                cpe_rcvbuf: rcvbuf_errors(self.net.cpe()),
                cgn_rcvbuf: rcvbuf_errors(self.net.cgn()),
            })
        };
        let probe_handle = match probe {
            Some(_) => {
                let stop = gen_.stop.clone();
                let duration = Duration::from_secs_f64(seconds);
                Some(spawn_in(
                    self.net.lan(1),
                    "prober",
                    self.placement.lan,
                    move || {
                        traffic::probe(
                            dst,
                            Duration::from_millis(2),
                            Duration::from_secs(1),
                            duration,
                            0,
                            &stop,
                        )
                    },
                )?)
            }
            None => None,
        };
        let a = snap()?;
        let mut per_second = Vec::new();
        let mut last = a.delivered;
        let window = Duration::from_secs_f64(seconds);
        while a.at.elapsed() < window {
            let left = window.saturating_sub(a.at.elapsed());
            thread::sleep(left.min(Duration::from_secs(1)));
            let now = sink.requests.load(Ordering::Relaxed);
            per_second.push(now - last);
            last = now;
        }
        let b = snap()?;
        let probe_result = match probe_handle {
            Some(h) => Some(join_within(h, Duration::from_secs(5), "the prober")?),
            None => None,
        };
        gen_.stop.store(true, Ordering::Relaxed);
        for h in handles {
            join_within(h, Duration::from_secs(5), "the generator")?;
        }
        if let (Some(slot), Some(result)) = (probe, probe_result) {
            *slot = Some(result);
        }
        // Let queues drain before the next measurement.
        thread::sleep(Duration::from_millis(100));
        let (busy_ns, per_cpu_busy_ns) = b.busy.since(&a.busy);
        Ok(Throughput {
            window_s: b.at.duration_since(a.at).as_secs_f64(),
            delivered: b.delivered - a.delivered,
            sink_replies: b.sink_replies - a.sink_replies,
            sent: b.sent - a.sent,
            send_blocked: b.blocked - a.blocked,
            replies: b.replies - a.replies,
            per_second,
            busy_ns,
            per_cpu_busy_ns,
            daemon_cpu_ns: a
                .daemon_ns
                .zip(b.daemon_ns)
                .map(|(a, b)| b.saturating_sub(a)),
            generator_cpu_ns: b.gen_ns.saturating_sub(a.gen_ns),
            responder_cpu_ns: b.sink_ns.saturating_sub(a.sink_ns),
            cpe_rcvbuf_errors: b.cpe_rcvbuf.saturating_sub(a.cpe_rcvbuf),
            cgn_rcvbuf_errors: b.cgn_rcvbuf.saturating_sub(a.cgn_rcvbuf),
        })
    }

    /// The prober alone: one request at a time, at most one per millisecond.
    fn latency(&self, dst: SocketAddrV4, duration: Duration, warmup: u32) -> Result<ProbeResult> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = spawn_in(self.net.lan(1), "prober", self.placement.lan, move || {
            traffic::probe(
                dst,
                Duration::from_millis(1),
                Duration::from_millis(200),
                duration,
                warmup,
                &stop,
            )
        })?;
        join_within(handle, duration + Duration::from_secs(10), "the prober")
    }

    /// 65,536 (by default) client tuples, each sending one request, twice: new tuples,
    /// then the same ones again.
    fn scale(&mut self, mode: &mut Mode) -> Result<Scale> {
        // The fast path's aging is watched after the passes: a short idle timeout makes the
        // daemon sweep every second.
        let mut mode_for_scale = mode.clone();
        if let Kind::Fast(args) = &mut mode_for_scale.kind {
            args.extend(["--timeout".to_owned(), AGING_TIMEOUT_S.to_string()]);
        }
        let setup = match self.setup(&mode_for_scale)? {
            Ok(s) => s,
            Err(reason) => {
                mode.unavailable = Some(reason);
                bail!("{}: unavailable", mode.name);
            }
        };
        let pid = setup.pid();
        let dst = target(&mode.kind);
        let raw1 = traffic::raw_socket(self.net.lan(1))?;
        let raw2 = traffic::raw_socket(self.net.lan(2))?;
        let per_host = self.args.scale_tuples / 2;
        let mut scale = Scale::default();
        let outcome = (|| -> Result<()> {
            scale.new = self.scale_pass(&raw1, &raw2, per_host, dst)?;
            scale.known = self.scale_pass(&raw1, &raw2, per_host, dst)?;
            if let (Some(pid), Kind::Fast(_)) = (pid, &mode.kind) {
                scale.clients_entries = Some(sys::clients_entries(pid, PIN_DIR_CLIENTS));
                scale.aging = Some(watch_aging(pid));
            }
            Ok(())
        })();
        let (counters, _) = self.teardown(setup)?;
        scale.daemon_counters = counters;
        outcome?;
        Ok(scale)
    }

    fn scale_pass(
        &self,
        raw1: &OwnedFd,
        raw2: &OwnedFd,
        per_host: u32,
        dst: SocketAddrV4,
    ) -> Result<ScalePass> {
        let sink = &self.sink.stats;
        let before = sink.requests.load(Ordering::Relaxed);
        let replies_before = self.lan_noports();
        let (r1, r2) = (raw1.try_clone()?, raw2.try_clone()?);
        let start = Instant::now();
        let start_ns = start.duration_since(self.base).as_nanos() as u64;
        let handle = spawn_in(
            self.net.lan(1),
            "scale",
            self.placement.lan,
            move || -> Result<u64> {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut sent = 0;
                // Both hosts, 1024 tuples at a time each.
                let mut port = SCALE_PORT_BASE;
                let end = SCALE_PORT_BASE + per_host;
                while port < end && Instant::now() < deadline {
                    let next = (port + 1024).min(end);
                    for (fd, ip) in [(&r1, LAN1_IP), (&r2, LAN2_IP)] {
                        sent += traffic::send_from_tuples(
                            fd,
                            ip,
                            port..next,
                            dst,
                            &traffic::PUBLIC_ADDRESS_REQUEST,
                            deadline,
                        )?;
                    }
                    port = next;
                }
                Ok(sent)
            },
        )?;
        let sent = join_within(handle, Duration::from_secs(30), "the scale sender")?;
        let send_s = start.elapsed().as_secs_f64();
        // Wait until the sink has seen nothing new for 300 ms (at most 5 s).
        let mut last = sink.requests.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        let wait_start = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(300)
            && wait_start.elapsed() < Duration::from_secs(5)
        {
            thread::sleep(Duration::from_millis(20));
            let now = sink.requests.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        let delivered = last - before;
        // Replies: wait until the LAN hosts' NoPorts stop moving too (at most 2 s more).
        let mut replies = self.lan_noports();
        let wait_start = Instant::now();
        while wait_start.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(100));
            let now = self.lan_noports();
            if now == replies {
                break;
            }
            replies = now;
        }
        let last_ns = sink.last_request_ns.load(Ordering::Relaxed);
        let relay_s = if delivered > 0 && last_ns > start_ns {
            (last_ns - start_ns) as f64 / 1e9
        } else {
            0.0
        };
        Ok(ScalePass {
            tuples: u64::from(per_host) * 2,
            sent,
            delivered,
            replies: replies.saturating_sub(replies_before),
            send_s,
            relay_s,
        })
    }

    /// Datagrams the LAN hosts got for closed ports (replies to the scale test's tuples).
    fn lan_noports(&self) -> u64 {
        [self.net.lan(1), self.net.lan(2)]
            .into_iter()
            .filter_map(|ns| sys::udp_counters(ns).ok()?.get("NoPorts").copied())
            .sum()
    }
}

/// Watches CLIENTS empty itself through the daemon's aging (at most 10 s).
fn watch_aging(pid: u32) -> std::result::Result<Aging, String> {
    let entries = || sys::clients_entries(pid, PIN_DIR_CLIENTS);
    let before = entries()?;
    let cpu_before = sys::process_sched_ns(pid);
    let start = Instant::now();
    let mut after = before;
    let mut emptied = None;
    while start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(200));
        after = entries()?;
        if after == 0 {
            emptied = Some(start.elapsed().as_secs_f64());
            break;
        }
    }
    Ok(Aging {
        entries_before: before,
        entries_after: after,
        idle_timeout_s: AGING_TIMEOUT_S,
        emptied_within_s: emptied,
        daemon_cpu_ns: sys::process_sched_ns(pid).saturating_sub(cpu_before),
    })
}

/// Removes the DNAT ruleset when dropped.
struct NftGuard<'a>(&'a BenchNet);

impl Drop for NftGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.nft_dnat(false) {
            eprintln!("bench: removing the DNAT ruleset: {e:#}");
        }
    }
}

struct Snapshot {
    at: Instant,
    delivered: u64,
    sink_replies: u64,
    sent: u64,
    blocked: u64,
    replies: u64,
    busy: sys::CpuBusy,
    daemon_ns: Option<u64>,
    gen_ns: u64,
    sink_ns: u64,
    cpe_rcvbuf: u64,
    cgn_rcvbuf: u64,
}

fn rcvbuf_errors(ns: &crate::Netns) -> u64 {
    sys::udp_counters(ns)
        .ok()
        .and_then(|c| c.get("RcvbufErrors").copied())
        .unwrap_or(0)
}

/// Whether the daemon's log shows the fast path running; the reason when it fell back.
/// The daemon's `ready:` line ends with the data path it chose ("on the fast path" or
/// "on sockets"); a fallback is one `--xdp: ...; relaying on sockets` line.
pub fn fast_path_state(log: &str) -> std::result::Result<(), String> {
    let message = |line: &str| -> String {
        let line = line.split_once("] ").map_or(line, |(_, m)| m);
        let line = line.strip_prefix("--xdp: ").unwrap_or(line);
        line.strip_suffix("; relaying on sockets")
            .unwrap_or(line)
            .trim()
            .to_owned()
    };
    let fell_back = log.lines().find(|l| {
        let l = l.to_lowercase();
        l.contains("--xdp") && (l.contains("relaying on sockets") || l.contains("fall"))
    });
    if let Some(line) = fell_back {
        return Err(format!("fast path unavailable: {}", message(line)));
    }
    let ready = log
        .lines()
        .find(|l| l.contains("ready:"))
        .unwrap_or_default();
    if ready.trim_end().ends_with("on the fast path") {
        return Ok(());
    }
    if ready.trim_end().ends_with("on sockets") {
        return Err("fast path unavailable: the daemon says it relays on sockets".into());
    }
    // An older daemon: its loader's line tells.
    if log.lines().any(|l| l.contains("fast path: tc_lan_ingress")) {
        return Ok(());
    }
    Err(
        "fast path unavailable: the daemon's log does not say that the fast path is attached"
            .into(),
    )
}

/// The `counters:` block portproxy -v logs at exit.
fn exit_counters(log: &str) -> Vec<String> {
    let mut lines = log.lines().skip_while(|l| !l.contains("counters:"));
    lines.next();
    lines
        .take_while(|l| !l.starts_with('['))
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_is_detected() {
        let log = "[2026-01-01T00:00:00.000Z WARN ] --xdp: the fast path cannot run here (attaching tc_lan_ingress to br-lan: EPERM); relaying on sockets\n[.. INFO ] ready: relaying between br-lan (192.168.1.1) and the CGN 192.0.0.1 via softwire (192.0.0.2) on sockets";
        let reason = fast_path_state(log).unwrap_err();
        assert_eq!(
            reason,
            "fast path unavailable: the fast path cannot run here (attaching tc_lan_ingress to br-lan: EPERM)"
        );
        assert!(
            fast_path_state("[x INFO ] ready: relaying between a and b on the fast path\n").is_ok()
        );
        assert!(fast_path_state("[x INFO ] ready: relaying between a and b on sockets").is_err());
        assert!(fast_path_state("[x INFO ] ready: relaying").is_err());
    }

    #[test]
    fn counters_block() {
        let log = "[t INFO ] SIGTERM: stopping\n[t INFO ] counters:\n        12  nat-pmp requests relayed to the CGN\n         3  dropped: client over its rate limit\n";
        assert_eq!(
            exit_counters(log),
            [
                "12  nat-pmp requests relayed to the CGN",
                "3  dropped: client over its rate limit"
            ]
        );
    }
}
