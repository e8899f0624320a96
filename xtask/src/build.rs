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

/// Builds the socket-only release binary (no eBPF object, stable Rust alone; the IGD server
/// and `portproxy map` kept) in a target directory of its own, so that it does not replace
/// the default build's binary.
pub fn socket_only_release() -> anyhow::Result<PathBuf> {
    let target_dir = cmd::target_dir().join("socket-only");
    let mut cargo = cmd::cargo();
    cargo
        .args(["build", "--package", "portproxy", "--release"])
        .args([
            "--no-default-features",
            "--features",
            "http-server,map-client",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    cmd::run(&mut cargo)?;
    Ok(target_dir.join("release").join("portproxy"))
}
