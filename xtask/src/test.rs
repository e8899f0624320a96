//! `cargo xtask test`: unit tests (also of the minimal build, under OpenWrt's release
//! profile, and for one ARM and one MIPS router CPU under qemu-user), then the privileged
//! network-namespace suite (plus scenarios with a cross-built binary under qemu-user), with a
//! total.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{build, cmd, cross};

const NETNS_TEST_THREADS: &str = "--test-threads=4";

/// Run with the systemd unit's capabilities (dist/systemd/portproxy.service): the socket
/// relay as an unprivileged user with the unit's ambient capabilities alone.
const UNIT_SCENARIOS: [&str; 4] = [
    "natpmp_map::sockets_l3",
    "pcp_map::sockets_l2",
    "upnp_map::sockets_l2",
    "upnp_tcp_relay::sockets_l2",
];
/// ... and the fast path as root bounded to the drop-in's capabilities (fastpath.conf).
const DROP_IN_SCENARIOS: [&str; 2] = ["natpmp_map::fast_path_l3", "upnp_map::fast_path_l2"];

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    cmd::require_root("test")?;
    let bin = build::run(false)?;
    let mut totals = Totals::default();

    // The tests crate is left to the second run, so its namespace tests run once, with
    // PORTPROXY_BIN and a bounded number of threads. --no-fail-fast: one failing test file
    // must not hide the results of the others.
    let mut unit = cmd::cargo();
    unit.args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "portproxy-ebpf",
    ])
    .args(["--exclude", "tests", "--"])
    .args(args);
    let unit = cargo_test(&mut unit, &mut totals);

    // The minimal build (no eBPF object, no IGD server) has tests of its own.
    let mut socket_only = cmd::cargo();
    socket_only
        .args([
            "test",
            "--package",
            "portproxy",
            "--no-default-features",
            "--lib",
            "--",
        ])
        .args(args);
    let socket_only = cargo_test(&mut socket_only, &mut totals);

    // OpenWrt builds release with overflow checks and panic=unwind (the `openwrt` profile):
    // arithmetic that only debug builds checked must hold there too.
    let mut openwrt = cmd::cargo();
    openwrt
        .args([
            "test",
            "--package",
            "portproxy",
            "--profile",
            "openwrt",
            "--lib",
            "--",
        ])
        .args(args);
    let openwrt = cargo_test(&mut openwrt, &mut totals);

    let mut netns = cmd::cargo();
    netns
        .args(["test", "--no-fail-fast", "--package", "tests", "--"])
        .args(args)
        .env("PORTPROXY_BIN", &bin);
    if !args.iter().any(|arg| arg.starts_with("--test-threads")) {
        netns.arg(NETNS_TEST_THREADS);
    }
    let netns = cargo_test(&mut netns, &mut totals);

    let unit_capabilities = systemd_capabilities(&bin, &mut totals);

    // Every codec under libFuzzer for a bounded number of inputs (a few seconds once built).
    let fuzz =
        cmd::run(Command::new("sh").arg(cmd::workspace_root().join("portproxy/fuzz/smoke.sh")));

    let qemu = qemu_checks(args, &mut totals);

    let errors: Vec<_> = [
        unit,
        socket_only,
        openwrt,
        netns,
        unit_capabilities,
        fuzz,
        qemu,
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    for error in &errors {
        eprintln!("error: {error:#}");
    }
    // The total is the last line, for CI.
    let skipped = match totals.ignored {
        0 => String::new(),
        n => format!(", {n} skipped"),
    };
    println!(
        "{} passed, {} failed{skipped}",
        totals.passed, totals.failed
    );
    if !errors.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs lab scenarios with `bin` started as the systemd unit would start it, under `setpriv`:
/// `UNIT_SCENARIOS` as user nobody with the unit's `AmbientCapabilities=` only,
/// `DROP_IN_SCENARIOS` as root within the drop-in's `CapabilityBoundingSet=`.
fn systemd_capabilities(bin: &Path, totals: &mut Totals) -> anyhow::Result<()> {
    let dir = cmd::workspace_root().join("dist/systemd");
    let unit_caps = unit_setting(&dir.join("portproxy.service"), "AmbientCapabilities")?;
    let drop_in_caps = unit_setting(
        &dir.join("portproxy.service.d/fastpath.conf"),
        "CapabilityBoundingSet",
    )?;
    for (name, user, caps, scenarios) in [
        ("unit", Some(65534), unit_caps, &UNIT_SCENARIOS[..]),
        ("drop-in", None, drop_in_caps, &DROP_IN_SCENARIOS[..]),
    ] {
        // CAP_NET_ADMIN CAP_BPF -> +net_admin,+bpf
        let caps = caps
            .split_whitespace()
            .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
            .collect::<Vec<_>>()
            .join(",");
        let setpriv = match user {
            // The state directory stands in for RuntimeDirectory=, owned by the user.
            Some(uid) => format!(
                "prev=\nfor arg in \"$@\"; do\n\
                 \t[ \"$prev\" = --state-dir ] && mkdir -p \"$arg\" && chown {uid}:{uid} \"$arg\"\n\
                 \tprev=$arg\ndone\n\
                 exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all,{caps} \
                 --ambient-caps={caps} --bounding-set=-all,{caps}"
            ),
            None => format!("exec setpriv --bounding-set=-all,{caps}"),
        };
        let wrapper = cmd::target_dir().join(format!("systemd-{name}/portproxy"));
        let script = format!(
            "#!/bin/sh\n# {} with the capabilities of the systemd {name}.\n{setpriv} {} \"$@\"\n",
            bin.display(),
            bin.display()
        );
        cmd::write_script(&wrapper, &script)?;
        let mut netns = cmd::cargo();
        netns
            .args([
                "test",
                "--package",
                "tests",
                "--test",
                "e2e",
                "--",
                "--exact",
            ])
            .args(scenarios)
            .env("PORTPROXY_BIN", &wrapper);
        cargo_test(&mut netns, totals)?;
    }
    Ok(())
}

/// The value of `key=` in a unit file (its last occurrence, as systemd reads it).
fn unit_setting(path: &Path, key: &str) -> anyhow::Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(str::to_string)
        .with_context(|| format!("no {key}= in {}", path.display()))
}

/// For one ARM and one MIPS router CPU: the daemon's unit tests built for it (`openwrt`
/// profile; the ARM one in the socket build, the MIPS one in the minimal build) run under
/// qemu-user; for the ARM one also a static binary, and the lab scenario of
/// tests/tests/router_binary.rs with that binary under qemu-user.
fn qemu_checks(args: &[String], totals: &mut Totals) -> anyhow::Result<()> {
    for (i, (triple, build)) in cross::CI_TARGETS.into_iter().enumerate() {
        let target = cross::target(triple);
        if let Err(reason) = cross::qemu_available(target) {
            println!("skipped: the checks for {triple} under qemu-user: {reason}");
            continue;
        }
        cargo_test(
            cross::unit_tests(target, build).arg("--").args(args),
            totals,
        )?;
        if i != 0 {
            continue;
        }
        let bin = cross::build(target, build)?;
        let wrapper = cross::qemu_wrapper(target, &bin)?;
        let mut netns = cmd::cargo();
        netns
            .args(["test", "--package", "tests", "--test", "router_binary"])
            .env("PORTPROXY_BIN", &wrapper);
        cargo_test(&mut netns, totals)?;
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output and adding up its `test result:` lines.
fn cargo_test(cmd: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    eprintln!("+ {}", cmd::display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", cmd::display(cmd)))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            add(totals, result);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("{} failed ({status})", cmd::display(cmd));
    }
    Ok(())
}

/// Parses e.g. `ok. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
fn add(totals: &mut Totals, result: &str) {
    let counts = result.split_once(". ").map_or("", |(_, counts)| counts);
    for count in counts.split("; ") {
        let Some((n, what)) = count.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => totals.passed += n,
            "failed" => totals.failed += n,
            "ignored" => totals.ignored += n,
            _ => {}
        }
    }
}
