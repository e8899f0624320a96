//! `cargo xtask build`: the daemon, whose build script builds and embeds the eBPF object.

use std::path::PathBuf;

use crate::{cmd, setup};

/// Builds `portproxy` and returns the path of the binary.
pub fn run(release: bool) -> anyhow::Result<PathBuf> {
    setup::ensure()?;
    let mut cargo = cmd::cargo();
    cargo.args(["build", "--package", "portproxy"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    let profile = if release { "release" } else { "debug" };
    Ok(cmd::target_dir().join(profile).join("portproxy"))
}
