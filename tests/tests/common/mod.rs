//! Helpers shared by the namespace test files.

use anyhow::{Context as _, Result, bail, ensure};
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};
use tests::{Daemon, LAN1_IP, LAN2_IP, Lab, LabBuilder, Netns, PUBLIC_IP, show_output};

/// Generates a test per softwire kind: `both_softwires!(scenario: name_l2, name_l3);` with
/// `fn scenario(Softwire) -> anyhow::Result<()>`.
#[allow(unused_macros)]
macro_rules! both_softwires {
    ($scenario:ident: $l2:ident, $l3:ident) => {
        #[test]
        fn $l2() -> anyhow::Result<()> {
            $scenario(tests::Softwire::L2)
        }

        #[test]
        fn $l3() -> anyhow::Result<()> {
            $scenario(tests::Softwire::L3)
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
    let addr = if host.role() == "lan1" {
        LAN1_IP
    } else {
        LAN2_IP
    };
    ensure!(
        ruleset.contains(&format!("dport {external} dnat ip to {addr}:{internal}")),
        "the CGN has no mapping {external} -> {addr}:{internal}:\n{ruleset}"
    );
    let _server = host.serve_tcp(internal)?;
    let reply = lab
        .inet()
        .connect_tcp(SocketAddr::from((public, external)))?;
    ensure!(
        reply == host.role(),
        "inet reached {reply:?} instead of {}",
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

#[allow(dead_code)] // only the persistence scenarios take the router down
/// How the router goes down in the scenarios where the table and the forwards survive.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// portproxy restarted (SIGTERM, then started again).
    Restart,
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
            Down::Reboot => {
                // Long enough for the mappings file's next write (at most 10 s after a change).
                std::thread::sleep(Duration::from_secs(11));
                portproxy.kill()?;
                lab.cpe()
                    .run("nft", &["delete", "table", "inet", "portproxy"])?;
                lab.reboot_cgn()?;
            }
        }
        Ok(())
    }
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
