//! `cargo xtask bench [-- ARGS]`: builds portproxy for release, then hands over to the tests
//! crate's `bench` binary, which measures every data path in namespaces of its own and writes
//! target/bench/bench.{txt,json,png}.

use std::{os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::Context as _;

use crate::{build, cmd};

/// The chart's font (plotters draws text with it; no system font libraries needed).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    cmd::require_root("bench")?;
    let bin = build::run(true)?;
    if !Path::new(FONT).exists() {
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "fonts-dejavu-core"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let out = cmd::target_dir().join("bench");
    let mut cargo = cmd::cargo();
    cargo
        .args([
            "run",
            "--release",
            "--package",
            "tests",
            "--bin",
            "bench",
            "--",
        ])
        .arg("--out")
        .arg(&out)
        .args(args)
        .env("PORTPROXY_BIN", bin);
    eprintln!("+ {}", cmd::display(&cargo));
    // exec, so that Ctrl-C reaches the benchmark, which then removes its namespaces.
    Err(cargo.exec()).context("starting cargo run --bin bench")
}
