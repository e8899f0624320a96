//! Helpers shared by the namespace test files.

use anyhow::{Context as _, Result, bail, ensure};
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};
use tests::{Daemon, DataPath, LAN1_IP, LAN2_IP, Lab, LabBuilder, Netns, PUBLIC_IP, show_output};

/// Generates a test per softwire kind: `both_softwires!(scenario: name_l2, name_l3);` with
/// `fn scenario(Softwire) -> anyhow::Result<()>`, or `both_softwires!(scenario(a, b): ...)`
/// with `fn scenario(Softwire, A, B)`.
#[allow(unused_macros)]
macro_rules! both_softwires {
    ($scenario:ident $(($($arg:expr),+))?: $l2:ident, $l3:ident) => {
        #[test]
        fn $l2() -> anyhow::Result<()> {
            $scenario(tests::Softwire::L2 $($(, $arg)+)?)
        }

        #[test]
        fn $l3() -> anyhow::Result<()> {
            $scenario(tests::Softwire::L3 $($(, $arg)+)?)
        }
    };
}

/// Generates, for `scenario(Softwire, DataPath)`, a module of the same name with one test
/// per data path and softwire kind: `scenario::sockets_l2` ... `scenario::fallback_l3`.
#[allow(unused_macros)]
macro_rules! every_path {
    ($scenario:ident) => {
        mod $scenario {
            use tests::{DataPath, Softwire};

            #[test]
            fn sockets_l2() -> anyhow::Result<()> {
                super::$scenario(Softwire::L2, DataPath::Sockets)
            }
            #[test]
            fn sockets_l3() -> anyhow::Result<()> {
                super::$scenario(Softwire::L3, DataPath::Sockets)
            }
            #[test]
            fn fast_path_l2() -> anyhow::Result<()> {
                super::$scenario(Softwire::L2, DataPath::FastPath)
            }
            #[test]
            fn fast_path_l3() -> anyhow::Result<()> {
                super::$scenario(Softwire::L3, DataPath::FastPath)
            }
            #[test]
            fn fallback_l2() -> anyhow::Result<()> {
                super::$scenario(Softwire::L2, DataPath::Fallback)
            }
            #[test]
            fn fallback_l3() -> anyhow::Result<()> {
                super::$scenario(Softwire::L3, DataPath::Fallback)
            }
        }
    };
}

/// Builds a lab, runs `test` on it, and on failure prints the lab's diagnostics.
pub fn with_lab(builder: LabBuilder, test: impl FnOnce(&mut Lab) -> Result<()>) -> Result<()> {
    let start = Instant::now();
    let mut lab = builder.build()?;
    eprintln!("lab {:?} up in {:?}", lab.softwire(), start.elapsed());
    let result = test(&mut lab);
    lab.report(result)?;
    eprintln!("passed after {:?}", start.elapsed());
    Ok(())
}

/// portproxy's arguments in the lab: the CPE's LAN bridge and softwire, and `-vv`.
#[allow(dead_code)] // not every test file starts portproxy
pub const ARGS: [&str; 5] = ["--lan-iface", "br-lan", "--wan-iface", "softwire", "-vv"];

/// Runs `test`; if it fails, prints `daemon`'s log first.
#[allow(dead_code)] // not every test file starts portproxy
pub fn logged<T>(daemon: &Daemon, test: impl FnOnce() -> Result<T>) -> Result<T> {
    let result = test();
    if result.is_err() {
        eprintln!("=== portproxy log\n{}", daemon.log());
    }
    result
}

/// Builds a lab, starts portproxy in its CPE on `path` (`ARGS` and `extra`) and runs `test`;
/// then `portproxy stats` must show the data path asked for and, on the fast path, each of
/// the `kernel` counters (ids) moved. Prints portproxy's log on failure.
#[allow(dead_code)] // not every test file starts portproxy
pub fn with_portproxy(
    builder: LabBuilder,
    path: DataPath,
    extra: &[&str],
    kernel: &[&str],
    test: impl FnOnce(&mut Lab, &Daemon) -> Result<()>,
) -> Result<()> {
    with_lab(builder, |lab| {
        let args = [&ARGS[..], extra].concat();
        let portproxy = lab.spawn_portproxy_on(path, &args)?;
        logged(&portproxy, || {
            test(lab, &portproxy)?;
            lab.check_data_path(&portproxy, path, kernel)
        })
    })
}

/// Runs `program` in `ns` and checks that its stdout holds every one of `expected`;
/// returns stdout.
pub fn run_expect(ns: &Netns, program: &str, args: &[&str], expected: &[&str]) -> Result<String> {
    let output = ns.run(program, args)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    for needle in expected {
        if !stdout.contains(needle) {
            bail!(
                "`{program} {}` in {}: expected {needle:?} in its output\n{}",
                args.join(" "),
                ns.role(),
                show_output(&output)
            );
        }
    }
    Ok(stdout)
}

/// The LAN address of `lan1` or `lan2`.
#[allow(dead_code)] // not every test file checks reachability
pub fn lan_addr(host: &Netns) -> Ipv4Addr {
    match host.role() {
        "lan1" => LAN1_IP,
        _ => LAN2_IP,
    }
}

#[allow(dead_code)] // not every test file checks reachability
/// Checks that the CGN maps TCP `external` to `host`:`internal` and that the internet host
/// reaches the service there (answering with its role).
pub fn check_mapping(lab: &Lab, external: u16, host: &Netns, internal: u16) -> Result<()> {
    check_mapping_at(lab, PUBLIC_IP, external, host, internal)
}

#[allow(dead_code)] // not every test file checks reachability
/// `check_mapping` on the CGN's external address `public`.
pub fn check_mapping_at(
    lab: &Lab,
    public: Ipv4Addr,
    external: u16,
    host: &Netns,
    internal: u16,
) -> Result<()> {
    let ruleset = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
    let addr = lan_addr(host);
    ensure!(
        ruleset.contains(&format!("dport {external} dnat ip to {addr}:{internal}")),
        "the CGN has no mapping {external} -> {addr}:{internal}:\n{ruleset}"
    );
    reaches(lab, public, external, host, internal)
}

#[allow(dead_code)] // not every test file checks reachability
/// The internet host reaches `host`'s service on `internal` (answering with its role)
/// through `public`:`external`, at the first try.
pub fn reaches(
    lab: &Lab,
    public: Ipv4Addr,
    external: u16,
    host: &Netns,
    internal: u16,
) -> Result<()> {
    let _server = host.serve_tcp(internal)?;
    check_reply(
        public,
        external,
        host,
        lab.inet().connect_tcp((public, external).into()),
    )
}

#[allow(dead_code)] // not every test file checks reachability
/// `check_mapping` of a mapping portproxy may be asking the CGN for again while it is
/// checked (after a restart, a CGN reboot or an address change, or one it renews): see
/// `reachable_through_renewals`.
pub fn check_mapping_again(lab: &Lab, external: u16, host: &Netns, internal: u16) -> Result<()> {
    check_mapping_again_at(lab, PUBLIC_IP, external, host, internal)
}

#[allow(dead_code)] // not every test file checks reachability
/// `check_mapping_again` on the CGN's external address `public`.
pub fn check_mapping_again_at(
    lab: &Lab,
    public: Ipv4Addr,
    external: u16,
    host: &Netns,
    internal: u16,
) -> Result<()> {
    let to = SocketAddrV4::new(lan_addr(host), internal);
    reachable_through_renewals(lab, public, external, to, host, internal)
}

/// How long the CGN's rule may be missing while miniupnpd replaces it for a renewal.
const RULE_BACK_WITHIN: Duration = Duration::from_secs(2);
/// How often a connection is tried when the CGN replaced its rule meanwhile.
const REPLACED_TRIES: usize = 3;

/// The nftables handle of the CGN's rule that maps TCP `external` to `to`, if it has one.
fn rule_handle(lab: &Lab, external: u16, to: SocketAddrV4) -> Result<Option<String>> {
    let rule = format!("dport {external} dnat ip to {to}");
    let chain = ["-a", "list", "chain", "inet", "nat", "prerouting_miniupnpd"];
    let listing = run_expect(lab.cgn(), "nft", &chain, &[])?;
    Ok(listing
        .lines()
        .find(|l| l.contains(&rule))
        .and_then(|l| l.rsplit_once("# handle "))
        .map(|(_, handle)| handle.trim().to_string()))
}

#[allow(dead_code)] // not every test file checks reachability
/// The CGN maps TCP `external` to `to` (the host, or the CPE in double NAT), and the
/// internet host reaches `host`'s service on `internal` through `public`:`external`.
///
/// For a mapping that portproxy (or `portproxy map`) may be asking the CGN for again
/// meanwhile: miniupnpd renews a mapping by deleting its rule and adding it again, so the
/// rule may be missing for a moment, and a connection made in that gap is refused by the
/// CGN. That, and only that, seen as a new handle of the rule, makes it try again (at most
/// `REPLACED_TRIES` times); any other failure fails.
pub fn reachable_through_renewals(
    lab: &Lab,
    public: Ipv4Addr,
    external: u16,
    to: SocketAddrV4,
    host: &Netns,
    internal: u16,
) -> Result<()> {
    let _server = host.serve_tcp(internal)?;
    for _ in 0..REPLACED_TRIES {
        mapped_again(lab, external, *to.ip(), to.port(), RULE_BACK_WITHIN)?;
        let before = rule_handle(lab, external, to)?;
        let reply = match lab.inet().connect_tcp((public, external).into()) {
            Err(e) if rule_handle(lab, external, to)? != before => {
                eprintln!(
                    "the CGN replaced its rule for {external} during a connection ({e:#}); again"
                );
                continue;
            }
            reply => reply,
        };
        return check_reply(public, external, host, reply);
    }
    bail!("the CGN replaced its rule for {external} during each of {REPLACED_TRIES} connections")
}

/// What the internet host's connection to `public`:`external` got must be `host`'s answer.
fn check_reply(public: Ipv4Addr, external: u16, host: &Netns, reply: Result<String>) -> Result<()> {
    let reply = reply?;
    ensure!(
        reply == host.role(),
        "inet reached {reply:?} at {public}:{external} instead of {}",
        host.role()
    );
    Ok(())
}

/// `natpmpc -g GATEWAY -a EXTERNAL INTERNAL tcp LIFETIME` in `ns`, whose output must hold
/// `expected`; returns the output.
#[allow(dead_code)] // not every test file maps with natpmpc
pub fn natpmpc_tcp(
    ns: &Netns,
    external: u16,
    internal: u16,
    lifetime: u32,
    expected: &str,
) -> Result<String> {
    run_expect(
        ns,
        "natpmpc",
        &[
            "-g",
            &tests::LAN_GATEWAY.to_string(),
            "-a",
            &external.to_string(),
            &internal.to_string(),
            "tcp",
            &lifetime.to_string(),
        ],
        &[expected],
    )
}

/// `natpmpc ... -a EXTERNAL INTERNAL tcp 600` in `ns`, which must report a mapping to
/// INTERNAL on whatever public port; returns the public port.
#[allow(dead_code)] // not every test file maps with natpmpc
pub fn natpmpc_map_any(ns: &Netns, external: u16, internal: u16) -> Result<u16> {
    let out = natpmpc_tcp(
        ns,
        external,
        internal,
        600,
        &format!("protocol TCP to local port {internal}"),
    )?;
    out.lines()
        .find_map(|l| {
            l.strip_prefix("Mapped public port ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no mapped public port in natpmpc's output:\n{out}"))
}

/// `natpmpc ... -a EXTERNAL INTERNAL tcp 600` in `ns`, which must report the mapping;
/// returns its output.
#[allow(dead_code)] // not every test file maps with natpmpc
pub fn natpmpc_map(ns: &Netns, external: u16, internal: u16) -> Result<String> {
    let expected = format!("Mapped public port {external} protocol TCP to local port {internal}");
    natpmpc_tcp(ns, external, internal, 600, &expected)
}

/// `natpmpc ... -a EXTERNAL INTERNAL tcp 0` in `ns`: a delete, which must be confirmed.
#[allow(dead_code)] // not every test file deletes with natpmpc
pub fn natpmpc_delete(ns: &Netns, external: u16, internal: u16) -> Result<()> {
    let expected = format!("Mapped public port 0 protocol TCP to local port {internal} liftime 0");
    natpmpc_tcp(ns, external, internal, 0, &expected).map(drop)
}

#[allow(dead_code)] // not every test file reboots the CGN
/// Waits (at most `within`) until the CGN maps TCP `external` to `host`:`internal` again.
pub fn mapped_again(
    lab: &Lab,
    external: u16,
    host: Ipv4Addr,
    internal: u16,
    within: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let rule = format!("dport {external} dnat ip to {host}:{internal}");
    loop {
        let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
        if nat.contains(&rule) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!(
                "the CGN did not map {external} -> {host}:{internal} again within {within:?}:\n{nat}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[allow(dead_code)] // not every test file silences the CGN
/// Makes the CGN drop (`silent`) or answer again what reaches its port 5351, as a CGN that
/// stops answering for a while.
pub fn cgn_silent(lab: &Lab, silent: bool) -> Result<()> {
    if !silent {
        return lab
            .cgn()
            .run("nft", &["delete", "table", "inet", "silent"])
            .map(drop);
    }
    let table = lab.dir().join("silent.nft");
    std::fs::write(
        &table,
        "table inet silent {\n    chain input {\n        type filter hook input priority -20; policy accept;\n        udp dport 5351 drop\n    }\n}\n",
    )?;
    let table = table.to_str().context("UTF-8 lab dir")?;
    lab.cgn().run("nft", &["-f", table]).map(drop)
}

#[allow(dead_code)] // only the persistence scenarios take the router down
/// How the router goes down in the scenarios where the table and the forwards survive.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// portproxy restarted (SIGTERM, then started again): it removes its tables itself.
    Restart,
    /// portproxy crashes (SIGKILL) once its mappings file is written: its tables stay until
    /// the next start replaces them.
    Crash,
    /// The router reboots: portproxy dies without a word (SIGKILL), its firewall table goes
    /// with the rest of the CPE's ruleset, and meanwhile the CGN reboots too, losing every
    /// mapping.
    Reboot,
}

#[allow(dead_code)] // only the persistence scenarios take the router down
impl Down {
    /// Takes `portproxy` down this way.
    pub fn take(self, lab: &mut Lab, mut portproxy: Daemon) -> Result<()> {
        match self {
            Down::Restart => drop(portproxy),
            Down::Crash | Down::Reboot => {
                // Long enough for the mappings file's next write (at most 10 s after a change).
                std::thread::sleep(Duration::from_secs(11));
                portproxy.kill()?;
                if self == Down::Reboot {
                    lab.cpe()
                        .run("nft", &["delete", "table", "inet", "portproxy"])?;
                    lab.reboot_cgn()?;
                }
            }
        }
        Ok(())
    }
}

#[allow(dead_code)] // only the persistence scenarios take the router down
/// The mappings file that both runs of portproxy share in `across_a_restart`.
pub fn shared_mappings_file(lab: &Lab) -> PathBuf {
    lab.dir().join("shared-mappings.json")
}

#[allow(dead_code)] // only the persistence scenarios take the router down
/// A persistence scenario: portproxy runs on `path` (`ARGS`, `extra`, and a mappings file
/// and a forwards file that both runs share) while `before` sets things up; `down` takes it
/// down; a second portproxy with the same arguments runs while `after` checks, given what
/// `before` returned. Prints the log of the one whose part failed (and the CPE's ruleset
/// while the second runs).
pub fn across_a_restart<T>(
    lab: &mut Lab,
    path: DataPath,
    extra: &[&str],
    before: impl FnOnce(&mut Lab) -> Result<T>,
    down: impl FnOnce(&mut Lab, Daemon) -> Result<()>,
    after: impl FnOnce(&Lab, &Daemon, T) -> Result<()>,
) -> Result<()> {
    let mappings = shared_mappings_file(lab);
    let forwards = lab.dir().join("shared-forwards.json");
    let files = [
        "--mappings-file",
        mappings.to_str().context("UTF-8 lab dir")?,
        "--forwards-file",
        forwards.to_str().context("UTF-8 lab dir")?,
    ];
    let args = [&ARGS[..], &files, extra].concat();
    let first = lab.spawn_portproxy_on(path, &args)?;
    let set_up = logged(&first, || before(lab))?;
    down(lab, first)?;
    let second = lab.spawn_portproxy_on(path, &args)?;
    logged(&second, || after(lab, &second, set_up)).inspect_err(|_| {
        let ruleset = run_expect(lab.cpe(), "nft", &["list", "ruleset"], &[])
            .unwrap_or_else(|e| format!("({e:#})"));
        eprintln!("=== the CPE's ruleset while the second portproxy runs\n{ruleset}");
    })
}

#[allow(dead_code)] // not every test file rebuilds the data path
/// Waits (at most 10 s) until portproxy's log holds `needle` at least `count` times.
pub fn wait_for_log(daemon: &Daemon, needle: &str, count: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.log().matches(needle).count() < count {
        ensure!(
            Instant::now() < deadline,
            "portproxy never logged {needle:?} {count} times"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
