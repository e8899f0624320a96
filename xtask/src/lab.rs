//! `cargo xtask lab`: hands over to the tests crate's `lab` binary.

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;

use crate::{build, cmd};

pub fn run(keep: bool, softwire: Option<&str>, xdp: bool, nat444: bool) -> anyhow::Result<()> {
    cmd::require_root("lab")?;
    let bin = build::run(false)?;
    let mut cargo = cmd::cargo();
    cargo
        .args(["run", "--package", "tests", "--bin", "lab", "--"])
        .env("PORTPROXY_BIN", bin);
    if keep {
        cargo.arg("--keep");
    }
    if let Some(softwire) = softwire {
        cargo.args(["--softwire", softwire]);
    }
    if xdp {
        cargo.arg("--xdp");
    }
    if nat444 {
        cargo.arg("--nat444");
    }
    eprintln!("+ {}", cmd::display(&cargo));
    // exec, so that Ctrl-C reaches only the lab, which then removes its namespaces.
    Err(cargo.exec()).context("starting cargo run --bin lab")
}
