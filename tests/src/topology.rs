//! The lab: namespaces, links, addresses and routes, the CGN, and their removal.

use std::{
    fmt, fs,
    net::Ipv4Addr,
    path::PathBuf,
    str::FromStr,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    CGN_SOFTWIRE_IP, CPE_SOFTWIRE_IP, Daemon, INET_IP, LAN_GATEWAY, LAN1_IP, LAN2_IP, Netns,
    PUBLIC_IP,
    cgn::{self, CgnKind},
    tunpipe::{TunPipe, open_tun},
};

/// Namespace names are `ppt<pid>x<n>-<role>`: unique per process and per lab, and the pid
/// tells whether a leftover belongs to a dead process.
const PREFIX: &str = "ppt";
const PORTPROXY_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The kind of link between the CPE and the CGN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Softwire {
    /// An Ethernet WAN: a veth (on the CGN side, a port of bridge `softwire`).
    L2,
    /// An L3 tunnel stand-in: a TUN device on each side, joined by a forwarder thread.
    L3,
}

impl fmt::Display for Softwire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Softwire::L2 => "l2",
            Softwire::L3 => "l3",
        })
    }
}

impl FromStr for Softwire {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Softwire> {
        match s {
            "l2" => Ok(Softwire::L2),
            "l3" => Ok(Softwire::L3),
            _ => bail!("unknown softwire kind {s:?} (expected l2 or l3)"),
        }
    }
}

/// How far the CPE's softwire is set up: each stage lacks what the ones after it add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftwireStage {
    /// No device yet.
    Missing,
    /// The device exists but is down (so it has no routes).
    Down,
    /// Up, without an address (so without routes).
    NoAddress,
    /// Up and addressed, without the default route through it.
    NoRoute,
}

/// The CPE's forward filter as OpenWrt's fw4 ships it: established and related flows and
/// everything from the LAN pass, new connections from the softwire are rejected (fw4's
/// zone `wan`, forward REJECT). One rule stands for the include an OpenWrt package adds
/// (`/usr/share/nftables.d/chain-pre/forward/`): accept what portproxy's own table marked
/// as a granted mapping (0x01000000, see portproxy's `firewall.rs`); a table of its own can
/// mark, but never overrule this chain's reject.
const CPE_FIREWALL: &str = r#"
table inet fw4 {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state vmap { established : accept, related : accept, invalid : drop }
        meta mark & 0x01000000 == 0x01000000 accept comment "portproxy: granted mappings"
        iifname "br-lan" accept
        reject
    }
}
"#;

/// The CPE's source NAT as OpenWrt's fw4 writes it for a masqueraded `wan` zone whose
/// device is the softwire: the postrouting chain jumps to the zone's chain, which
/// masquerades IPv4. A NAT444 CPE (or a router behind the provider's) has it.
const CPE_SRCNAT: &str = r#"
table inet fw4 {
    chain srcnat {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "softwire" jump srcnat_wan comment "!fw4: Handle wan IPv4/IPv6 srcnat traffic"
    }
    chain srcnat_wan {
        meta nfproto ipv4 masquerade comment "!fw4: Masquerade IPv4 wan traffic"
    }
}
"#;

/// Options of a [`Lab`].
pub struct LabBuilder {
    softwire: Softwire,
    miniupnpd: cgn::Miniupnpd,
    cpe_firewall: bool,
    nat444: bool,
}

impl LabBuilder {
    /// What the CGN speaks (default: everything miniupnpd does).
    pub fn cgn(mut self, kind: CgnKind) -> LabBuilder {
        self.miniupnpd.kind = kind;
        self
    }

    /// Seconds between miniupnpd's SSDP NOTIFYs (default 60; it also sends them at start).
    pub fn notify_interval(mut self, seconds: u32) -> LabBuilder {
        self.miniupnpd.notify_interval = seconds;
        self
    }

    /// The longest lifetime the CGN grants a PCP mapping (default: miniupnpd's day), so
    /// that a test sees renewals within seconds.
    pub fn pcp_max_lifetime(mut self, seconds: u32) -> LabBuilder {
        self.miniupnpd.pcp_max_lifetime = Some(seconds);
        self
    }

    /// Gives the CPE a forward filter like OpenWrt's fw4 (see `CPE_FIREWALL`): new
    /// connections from the internet reach a LAN host only through a hole portproxy opened.
    pub fn cpe_firewall(mut self) -> LabBuilder {
        self.cpe_firewall = true;
        self
    }

    /// Double NAT (NAT444): the CPE masquerades the LAN out of the softwire like fw4
    /// (`CPE_SRCNAT`), and the CGN has no route to the LAN, so nothing passes between them
    /// that the CPE did not translate. miniupnpd then sees only the CPE's address.
    pub fn nat444(mut self) -> LabBuilder {
        self.nat444 = true;
        self
    }

    /// Builds the lab and starts miniupnpd; everything is removed again on error.
    pub fn build(self) -> Result<Lab> {
        static CLEANUP: Once = Once::new();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        CLEANUP.call_once(remove_stale_labs);

        let prefix = format!(
            "{PREFIX}{}x{}-",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(prefix.trim_end_matches('-'));
        fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
        // From here on, dropping `lab` undoes whatever was done.
        let mut lab = Lab {
            softwire: self.softwire,
            prefix,
            dir,
            daemons: AtomicU32::new(0),
            miniupnpd_options: self.miniupnpd,
            nat444: self.nat444,
            miniupnpd: None,
            cgn_started: Instant::now(),
            pipe: None,
            cgn_tun: None,
            namespaces: Vec::new(),
        };
        for role in ROLES {
            let ns = Netns::create(format!("{}{role}", lab.prefix), role)?;
            lab.namespaces.push(ns);
        }
        lab.wire().context("building the lab's links")?;
        if self.cpe_firewall {
            let path = lab.dir.join("cpe.nft");
            fs::write(&path, CPE_FIREWALL).with_context(|| format!("writing {path:?}"))?;
            lab.cpe().run("nft", &["-f", &path.to_string_lossy()])?;
        }
        if self.nat444 {
            let path = lab.dir.join("cpe-srcnat.nft");
            fs::write(&path, CPE_SRCNAT).with_context(|| format!("writing {path:?}"))?;
            lab.cpe().run("nft", &["-f", &path.to_string_lossy()])?;
        }
        cgn::install_ruleset(lab.cgn(), &lab.dir, self.miniupnpd.kind)?;
        lab.miniupnpd = Some(cgn::start_miniupnpd(lab.cgn(), &lab.dir, self.miniupnpd)?);
        lab.cgn_started = Instant::now();
        Ok(lab)
    }
}

const ROLES: [&str; 5] = ["lan1", "lan2", "cpe", "cgn", "inet"];

/// The lab's CGN runs at least this long before it restarts or reboots. A restart within a
/// few seconds of the start cannot be told from none: the epoch check (RFC 6887 §8.5) allows
/// 2 s and a sixteenth of the time between two answers, so a client that last heard epoch 1
/// and then hears epoch 0 rightly sees no restart. Real CGNs run for days; in the lab a
/// reboot can follow the start by 4 s (`map_client` failed 3 times in 290 runs so).
const CGN_SHORTEST_RUN: Duration = Duration::from_secs(6);

/// One virtual DS-Lite network. See the crate documentation for the picture.
pub struct Lab {
    softwire: Softwire,
    prefix: String,
    dir: PathBuf,
    /// Numbers the log files of spawned daemons.
    daemons: AtomicU32,
    /// miniupnpd's configuration (what the CGN speaks...), kept for [`Lab::restart_cgn`].
    miniupnpd_options: cgn::Miniupnpd,
    /// Double NAT: the CPE masquerades the LAN, the CGN has no route to it.
    nat444: bool,
    miniupnpd: Option<Daemon>,
    /// When the running miniupnpd started (see [`CGN_SHORTEST_RUN`]).
    cgn_started: Instant,
    /// The L3 softwire's forwarder.
    pipe: Option<TunPipe>,
    /// The CGN's end of the L3 softwire while the CPE's end is deleted.
    cgn_tun: Option<std::os::fd::OwnedFd>,
    /// In `ROLES` order.
    namespaces: Vec<Netns>,
}

impl Lab {
    /// A lab with default options.
    pub fn new(softwire: Softwire) -> Result<Lab> {
        Lab::builder(softwire).build()
    }

    pub fn builder(softwire: Softwire) -> LabBuilder {
        LabBuilder {
            softwire,
            miniupnpd: cgn::Miniupnpd {
                notify_interval: 60,
                kind: CgnKind::Everything,
                pcp_max_lifetime: None,
            },
            cpe_firewall: false,
            nat444: false,
        }
    }

    pub fn softwire(&self) -> Softwire {
        self.softwire
    }

    /// `lan(1)` or `lan(2)`.
    pub fn lan(&self, n: usize) -> &Netns {
        assert!(n == 1 || n == 2, "the lab has lan1 and lan2, not lan{n}");
        &self.namespaces[n - 1]
    }

    pub fn cpe(&self) -> &Netns {
        &self.namespaces[2]
    }

    pub fn cgn(&self) -> &Netns {
        &self.namespaces[3]
    }

    pub fn inet(&self) -> &Netns {
        &self.namespaces[4]
    }

    /// The lab's namespaces, in the order lan1, lan2, cpe, cgn, inet.
    pub fn namespaces(&self) -> &[Netns] {
        &self.namespaces
    }

    /// The lab's own directory (configs, logs); removed with the lab.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Starts `$PORTPROXY_BIN ARGS` in the CPE, its output logged to the lab's directory, and
    /// waits until it logs a line containing `ready:`.
    pub fn spawn_portproxy(&self, args: &[&str]) -> Result<Daemon> {
        self.spawn_portproxy_env(args, None)
    }

    /// Like `spawn_portproxy`, with one extra environment variable for the daemon.
    pub fn spawn_portproxy_env(&self, args: &[&str], env: Option<(&str, &str)>) -> Result<Daemon> {
        self.spawn_portproxy_in(self.cpe(), args, env)
    }

    /// Like `spawn_portproxy_env`, in namespace `ns` (a second relay somewhere in the lab).
    pub fn spawn_portproxy_in(
        &self,
        ns: &Netns,
        args: &[&str],
        env: Option<(&str, &str)>,
    ) -> Result<Daemon> {
        self.spawn_portproxy_until(ns, args, env, "ready:")
    }

    /// Like `spawn_portproxy_in`, waiting until portproxy logs a line containing `needle`.
    pub fn spawn_portproxy_until(
        &self,
        ns: &Netns,
        args: &[&str],
        env: Option<(&str, &str)>,
        needle: &str,
    ) -> Result<Daemon> {
        let Some(bin) = std::env::var_os("PORTPROXY_BIN") else {
            bail!(
                "PORTPROXY_BIN is not set: use `cargo xtask test` or `cargo xtask lab`, which \
                 build portproxy and set it"
            );
        };
        let n = self.daemons.fetch_add(1, Ordering::Relaxed);
        let mut cmd = ns.command(&bin);
        cmd.args(args);
        if let Some((key, value)) = env {
            cmd.env(key, value);
        }
        // The mapping table's file lives in the lab, never in the machine's /var/lib; one
        // per daemon unless a test shares one on purpose.
        if !args.contains(&"--mappings-file") {
            cmd.arg("--mappings-file")
                .arg(self.dir.join(format!("mappings-{n}.json")));
        }
        // The same for the manual forwards.
        if !args.contains(&"--forwards-file") {
            cmd.arg("--forwards-file")
                .arg(self.dir.join(format!("forwards-{n}.json")));
        }
        let log = self.dir.join(format!("portproxy-{n}.log"));
        let mut daemon = Daemon::spawn("portproxy", cmd, log)?;
        daemon.wait_ready(PORTPROXY_READY_TIMEOUT, |d| {
            d.log().lines().any(|line| line.contains(needle))
        })?;
        Ok(daemon)
    }

    /// Restarts the CGN's miniupnpd (SIGTERM, then a fresh start with the same
    /// configuration), as when the AFTR's daemon restarts; waits until it serves again.
    pub fn restart_cgn(&mut self) -> Result<()> {
        self.stop_cgn();
        self.start_cgn()
    }

    /// Stops miniupnpd once it has run for [`CGN_SHORTEST_RUN`].
    fn stop_cgn(&mut self) {
        if let Some(left) = CGN_SHORTEST_RUN.checked_sub(self.cgn_started.elapsed()) {
            std::thread::sleep(left);
        }
        // Dropping the daemon stops it and reaps it.
        self.miniupnpd = None;
    }

    fn start_cgn(&mut self) -> Result<()> {
        self.miniupnpd = Some(cgn::start_miniupnpd(
            self.cgn(),
            &self.dir,
            self.miniupnpd_options,
        )?);
        self.cgn_started = Instant::now();
        Ok(())
    }

    /// The carrier renumbers: the CGN's external address becomes `new` (in the internet's
    /// /24), and miniupnpd is told with SIGUSR1, as a CGN's address watcher would: it
    /// announces the change (NAT-PMP address announcement, PCP ANNOUNCE with its epoch
    /// reset, RFC 6887 §8.5) and grants on the new address from then on.
    pub fn change_public_address(&mut self, new: Ipv4Addr) -> Result<()> {
        let cgn = self.cgn();
        // Deleting a primary address deletes the secondaries of its subnet with it.
        cgn.ip(&format!("addr del {PUBLIC_IP}/24 dev wan0"))?;
        cgn.ip(&format!("addr add {new}/24 dev wan0"))?;
        let miniupnpd = self
            .miniupnpd
            .as_ref()
            .context("the CGN's miniupnpd is not running")?;
        let pid = i32::try_from(miniupnpd.pid()).context("pid")?;
        // SAFETY: kill(2) on a child this lab started and still owns.
        if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SIGUSR1 to miniupnpd");
        }
        Ok(())
    }

    /// Reboots the CGN as far as its mappings go: miniupnpd stops, its redirections (nft
    /// chains) and lease file are gone, and it starts afresh, with a new epoch and none of
    /// the mappings it had granted; waits until it serves again.
    pub fn reboot_cgn(&mut self) -> Result<()> {
        self.stop_cgn();
        for (table, chain) in [
            ("filter", "miniupnpd"),
            ("nat", "prerouting_miniupnpd"),
            ("nat", "postrouting_miniupnpd"),
        ] {
            self.cgn()
                .run("nft", &["flush", "chain", "inet", table, chain])?;
        }
        let leases = self.dir.join("miniupnpd.leases");
        if leases.exists() {
            fs::remove_file(&leases).with_context(|| format!("removing {leases:?}"))?;
        }
        self.start_cgn()
    }

    /// What a failed test should print: miniupnpd's log, the CGN's nftables ruleset (the
    /// mappings), the CPE's addresses, routes and nftables ruleset (the holes).
    pub fn diagnostics(&self) -> String {
        let show = |ns: &Netns, program: &str, args: &[&str]| {
            let title = format!(
                "=== {} in {}",
                [program, &args.join(" ")].join(" "),
                ns.role()
            );
            match ns.output(program, args, Duration::from_secs(5)) {
                Ok(output) => format!("{title}\n{}", crate::show_output(&output)),
                Err(error) => format!("{title}\n{error:#}"),
            }
        };
        let miniupnpd = self.miniupnpd.as_ref().map_or(String::new(), Daemon::log);
        [
            format!("=== lab {} ({} softwire)", self.prefix, self.softwire),
            show(self.cpe(), "ip", &["-br", "addr"]),
            show(self.cpe(), "ip", &["route"]),
            show(self.cpe(), "nft", &["list", "ruleset"]),
            show(self.cgn(), "ip", &["route"]),
            show(self.cgn(), "nft", &["list", "table", "inet", "nat"]),
            format!("=== miniupnpd log\n{miniupnpd}"),
        ]
        .join("\n")
    }

    /// Prints [`Lab::diagnostics`] to stderr if `result` is an error, and passes it on.
    pub fn report<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            eprintln!("{}", self.diagnostics());
        }
        result
    }

    /// Takes the CPE's end of the softwire down, or brings it back up with its address and
    /// default route.
    pub fn set_softwire_up(&self, up: bool) -> Result<()> {
        let cpe = self.cpe();
        if !up {
            return cpe.ip("link set softwire down");
        }
        cpe.ip("link set softwire up")?;
        // Going down flushed the routes through the device.
        self.route_cpe_softwire()
    }

    /// Replaces the CPE's softwire device with a new one of the same name (a new ifindex),
    /// as when a tunnel is torn down and set up again. The CGN side stays as it is.
    pub fn recreate_softwire(&mut self) -> Result<()> {
        self.undo_softwire(SoftwireStage::Missing)?;
        self.redo_softwire(SoftwireStage::Missing)
    }

    /// Takes the CPE's softwire back to `stage`, as a router has it during boot (netifd
    /// creates the DS-Lite device late, then brings it up, addresses and routes it).
    pub fn undo_softwire(&mut self, stage: SoftwireStage) -> Result<()> {
        let cpe = self.cpe();
        match stage {
            SoftwireStage::Missing => self.delete_cpe_softwire(),
            SoftwireStage::Down => cpe.ip("link set softwire down"),
            SoftwireStage::NoAddress => cpe.ip("addr flush dev softwire"),
            SoftwireStage::NoRoute => cpe.ip("route del default"),
        }
    }

    /// Sets the CPE's softwire up again from `stage` (see `undo_softwire`).
    pub fn redo_softwire(&mut self, stage: SoftwireStage) -> Result<()> {
        match stage {
            SoftwireStage::Missing => {
                self.add_cpe_softwire()?;
                self.configure_cpe_softwire()
            }
            SoftwireStage::Down => self.set_softwire_up(true),
            SoftwireStage::NoAddress => self.configure_cpe_softwire(),
            SoftwireStage::NoRoute => self.route_cpe_softwire(),
        }
    }

    fn delete_cpe_softwire(&mut self) -> Result<()> {
        match self.softwire {
            Softwire::L2 => self.cpe().ip("link del softwire"),
            Softwire::L3 => {
                let pipe = self
                    .pipe
                    .take()
                    .context("the L3 softwire has no forwarder")?;
                let [old, cgn_end] = pipe.stop();
                drop(old);
                self.cgn_tun = Some(cgn_end);
                // The device goes with the last reference to its fd, and a process another
                // thread is forking right now may hold a copy until it execs.
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.cpe_softwire_ifindex().is_ok() {
                    if Instant::now() > deadline {
                        bail!("the CPE's old softwire TUN device does not go away");
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            }
        }
    }

    fn add_cpe_softwire(&mut self) -> Result<()> {
        match self.softwire {
            Softwire::L2 => self.add_l2_softwire(),
            Softwire::L3 => {
                let cgn_end = self
                    .cgn_tun
                    .take()
                    .context("the CPE's L3 softwire is not deleted")?;
                let cpe_end = open_tun(self.cpe(), "softwire")?;
                self.pipe = Some(TunPipe::start(cpe_end, cgn_end)?);
                Ok(())
            }
        }
    }

    /// The CPE's softwire ifindex.
    pub fn cpe_softwire_ifindex(&self) -> Result<u32> {
        // if_nametoindex asks through a socket, which is in the calling thread's namespace
        // (unlike /sys, which shows the namespace it was mounted in).
        // SAFETY: the name is a NUL-terminated C string.
        let index = self
            .cpe()
            .enter(|| unsafe { libc::if_nametoindex(c"softwire".as_ptr()) })?;
        if index == 0 {
            bail!("the CPE has no softwire device");
        }
        Ok(index)
    }

    fn wire(&mut self) -> Result<()> {
        let (cpe, cgn, inet) = (self.cpe(), self.cgn(), self.inet());

        // LAN: bridge br-lan in the CPE with a veth port per LAN host.
        wire_lan(cpe, [self.lan(1), self.lan(2)])?;

        // Internet: the CGN's wan0 to the internet host; neither has a default route.
        cgn.ip(&format!(
            "link add wan0 type veth peer name eth0 netns {}",
            inet.name()
        ))?;
        cgn.ip(&format!("addr add {PUBLIC_IP}/24 dev wan0"))?;
        cgn.ip("link set wan0 up")?;
        inet.ip(&format!("addr add {INET_IP}/24 dev eth0"))?;
        inet.ip("link set eth0 up")?;
        cgn.sysctl("net/ipv4/ip_forward", "1")?;

        // The softwire.
        self.pipe = match self.softwire {
            Softwire::L2 => {
                // A bridge on the CGN side keeps its address and ifindex when the CPE's veth
                // is recreated; without snooping, multicast always floods.
                cgn.ip("link add softwire type bridge mcast_snooping 0")?;
                cgn.ip(&format!("addr add {CGN_SOFTWIRE_IP}/29 dev softwire"))?;
                self.add_l2_softwire()?;
                None
            }
            Softwire::L3 => {
                let cpe_end = open_tun(cpe, "softwire")?;
                let cgn_end = open_tun(cgn, "softwire")?;
                cgn.ip(&format!(
                    "addr add {CGN_SOFTWIRE_IP} peer {CPE_SOFTWIRE_IP} dev softwire"
                ))?;
                Some(TunPipe::start(cpe_end, cgn_end)?)
            }
        };
        let cgn = self.cgn();
        cgn.ip("link set softwire up")?;
        if !self.nat444 {
            cgn.ip(&format!(
                "route add 192.168.1.0/24 via {CPE_SOFTWIRE_IP} dev softwire"
            ))?;
        }
        self.configure_cpe_softwire()
    }

    /// A veth `softwire` in the CPE whose peer is a port of the CGN's bridge `softwire`.
    /// Moves the CPE's end of the softwire to `addr` (as when the ISP hands out another B4
    /// address), keeping the CGN's route to the LAN pointing at it.
    pub fn change_cpe_softwire_address(&self, addr: Ipv4Addr) -> Result<()> {
        let (cpe, cgn) = (self.cpe(), self.cgn());
        match self.softwire {
            Softwire::L2 => {
                cpe.ip(&format!("addr del {CPE_SOFTWIRE_IP}/29 dev softwire"))?;
                cpe.ip(&format!("addr add {addr}/29 dev softwire"))?;
                if !self.nat444 {
                    cgn.ip(&format!(
                        "route replace 192.168.1.0/24 via {addr} dev softwire"
                    ))?;
                }
            }
            Softwire::L3 => {
                cpe.ip(&format!(
                    "addr del {CPE_SOFTWIRE_IP} peer {CGN_SOFTWIRE_IP} dev softwire"
                ))?;
                cpe.ip(&format!(
                    "addr add {addr} peer {CGN_SOFTWIRE_IP} dev softwire"
                ))?;
                // A real AFTR reaches its B4 through the tunnel whatever the inner address;
                // the lab's point-to-point TUN knows only the old peer.
                cgn.ip(&format!("route replace {addr}/32 dev softwire"))?;
            }
        }
        // Removing the old address took the default route with it.
        self.route_cpe_softwire()
    }

    fn add_l2_softwire(&self) -> Result<()> {
        let cgn = self.cgn().name();
        self.cpe().ip(&format!(
            "link add softwire type veth peer name sw-cpe netns {cgn}"
        ))?;
        self.cgn().ip("link set sw-cpe master softwire up")
    }

    fn configure_cpe_softwire(&self) -> Result<()> {
        let cpe = self.cpe();
        cpe.ip(&match self.softwire {
            Softwire::L2 => format!("addr add {CPE_SOFTWIRE_IP}/29 dev softwire"),
            Softwire::L3 => {
                format!("addr add {CPE_SOFTWIRE_IP} peer {CGN_SOFTWIRE_IP} dev softwire")
            }
        })?;
        cpe.ip("link set softwire up")?;
        self.route_cpe_softwire()
    }

    fn route_cpe_softwire(&self) -> Result<()> {
        self.cpe().ip(&match self.softwire {
            Softwire::L2 => format!("route replace default via {CGN_SOFTWIRE_IP} dev softwire"),
            Softwire::L3 => "route replace default dev softwire".to_owned(),
        })
    }
}

/// The LAN side shared by the lab and the bench: bridge br-lan (192.168.1.1/24) in the CPE
/// with a veth port per LAN host (192.168.1.2 and .3, default route via the CPE), and IPv4
/// forwarding on in the CPE.
pub(crate) fn wire_lan(cpe: &Netns, lans: [&Netns; 2]) -> Result<()> {
    cpe.ip("link add br-lan type bridge")?;
    cpe.ip(&format!("addr add {LAN_GATEWAY}/24 dev br-lan"))?;
    cpe.ip("link set br-lan up")?;
    for (lan, addr) in lans.into_iter().zip([LAN1_IP, LAN2_IP]) {
        let port = lan.role();
        cpe.ip(&format!(
            "link add {port} type veth peer name eth0 netns {}",
            lan.name()
        ))?;
        cpe.ip(&format!("link set {port} master br-lan up"))?;
        lan.ip(&format!("addr add {addr}/24 dev eth0"))?;
        lan.ip("link set eth0 up")?;
        lan.ip(&format!("route add default via {LAN_GATEWAY}"))?;
    }
    cpe.sysctl("net/ipv4/ip_forward", "1")
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.miniupnpd = None;
        self.pipe = None;
        self.cgn_tun = None;
        self.namespaces.clear();
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("lab cleanup: removing {:?}: {error}", self.dir);
        }
    }
}

/// Removes the namespaces and directories of labs whose process is gone (killed tests).
fn remove_stale_labs() {
    let stale = |name: &str| {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            return false;
        };
        pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists()
    };
    for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            // Netns::drop kills what still runs inside and deletes the namespace.
            drop(Netns::stale(name));
        }
    }
    for entry in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if stale(&entry.file_name().to_string_lossy()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
