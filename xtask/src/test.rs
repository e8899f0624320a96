//! `cargo xtask test`: unit tests, then the privileged network-namespace suite, with a total.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{build, cmd};

const NETNS_TEST_THREADS: &str = "--test-threads=4";

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
    // PORTPROXY_BIN and a bounded number of threads.
    let mut unit = cmd::cargo();
    unit.args(["test", "--workspace", "--exclude", "portproxy-ebpf"])
        .args(["--exclude", "tests", "--"])
        .args(args);
    let unit = cargo_test(&mut unit, &mut totals);

    let mut netns = cmd::cargo();
    netns
        .args(["test", "--package", "tests", "--"])
        .args(args)
        .env("PORTPROXY_BIN", &bin);
    if !args.iter().any(|arg| arg.starts_with("--test-threads")) {
        netns.arg(NETNS_TEST_THREADS);
    }
    let netns = cargo_test(&mut netns, &mut totals);

    // Every codec under libFuzzer for a bounded number of inputs (a few seconds once built).
    let fuzz =
        cmd::run(Command::new("sh").arg(cmd::workspace_root().join("portproxy/fuzz/smoke.sh")));

    let errors: Vec<_> = [unit, netns, fuzz]
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
