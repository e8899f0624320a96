//! With the `fastpath` feature (the default): builds `portproxy-ebpf` for the BPF target
//! (nightly + bpf-linker, through aya-build; bpfel or bpfeb as the target's byte order needs)
//! and leaves the object at `$OUT_DIR/portproxy`, which `fastpath.rs` embeds. Without it
//! (`--no-default-features`, the socket-only build) there is nothing to build.

#[cfg(feature = "fastpath")]
fn main() -> anyhow::Result<()> {
    use std::{env, path::PathBuf};

    use anyhow::Context as _;
    use aya_build::{Package, Toolchain};

    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = PathBuf::from(manifest_dir).join("../portproxy-ebpf");
    let root_dir = root_dir
        .to_str()
        .context("non-UTF-8 path to portproxy-ebpf")?;
    let package = Package {
        name: "portproxy-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Nightly).context(
        "building portproxy-ebpf (if bpf-linker or rust-src is missing: cargo xtask setup)",
    )
}

#[cfg(not(feature = "fastpath"))]
fn main() {}
