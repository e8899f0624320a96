//! `cargo xtask cross`: static portproxy binaries for router CPUs, their sizes against the
//! footprint budget, and the unit tests under qemu-user.
//!
//! Route (no OpenWrt SDK, only package registries reachable): the nightly toolchain builds
//! std for the target from rust-src (`-Z build-std`: rustup has no prebuilt std here for
//! armv7 or the tier-3 MIPS targets), cargo-zigbuild links with zig's musl (both from PyPI,
//! installed by `cargo xtask setup`). Binaries use the `openwrt` profile (opt-level "z",
//! panic=unwind, overflow checks: what OpenWrt's rust-values.mk does) and are stripped.
//! Debian's qemu-user runs them. Each target is built three ways (`Build`): minimal (the
//! daemon alone, for the tightest flash), sockets (what OpenWrt builds) and with the fast path
//! (aya-build embeds a bpfeb object for big-endian mips); the sizes are in the README.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

pub struct Target {
    pub triple: &'static str,
    /// The qemu-user binary that runs it.
    pub qemu: &'static str,
    /// Why this target gets no fast-path build, if it gets none.
    pub no_fast_path: Option<&'static str>,
    /// xz's branch filter that OpenWrt's squashfs uses for this CPU (`flash_size`).
    pub bcj: Option<&'static str>,
}

pub const TARGETS: [Target; 4] = [
    Target {
        triple: "aarch64-unknown-linux-musl",
        qemu: "qemu-aarch64",
        no_fast_path: None,
        bcj: None,
    },
    Target {
        triple: "armv7-unknown-linux-musleabihf",
        qemu: "qemu-arm",
        no_fast_path: None,
        bcj: Some("--arm"),
    },
    Target {
        triple: "mipsel-unknown-linux-musl",
        qemu: "qemu-mipsel",
        no_fast_path: None,
        bcj: None,
    },
    Target {
        triple: "mips-unknown-linux-musl",
        qemu: "qemu-mips",
        no_fast_path: None,
        bcj: None,
    },
];

/// The targets `cargo xtask test` checks under qemu-user: one ARM in the socket build (what
/// OpenWrt builds), one (big-endian) MIPS in the minimal build (what its smallest routers get).
/// The lab scenario runs on the ARM one: qemu 7.2 mistranslates the bridge's link messages
/// for big-endian MIPS (nested attributes come out unparseable) and, for 64-bit targets
/// (aarch64), the ifindex of IP_ADD_MEMBERSHIP; for 32-bit little-endian ARM both are right.
pub const CI_TARGETS: [(&str, Build); 2] = [
    ("armv7-unknown-linux-musleabihf", Build::Sockets),
    ("mips-unknown-linux-musl", Build::Minimal),
];

/// The footprint budget (issue 14, restated 2026-12-01; README "Cross builds and the
/// footprint budget" says why). The builds on sockets are held to the flash they take, at
/// most an eighth of the 8 MB that the smallest routers an OpenWrt release with Rust
/// packages is built for have; the fast path to its stripped size.
const BUDGET_FLASH: u64 = 1024 * 1024;
const BUDGET_STRIPPED: u64 = 4 * 1024 * 1024;

/// What the budget counts.
#[derive(Clone, Copy)]
enum Budget {
    /// `flash_size`, at most this.
    Flash(u64),
    /// The stripped binary, at most this.
    Stripped(u64),
}

impl Budget {
    fn met(self, stripped: u64, flash: u64) -> bool {
        match self {
            Budget::Flash(most) => flash <= most,
            Budget::Stripped(most) => stripped <= most,
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Budget::Flash(most) => write!(f, "{} in flash", mib(*most)),
            Budget::Stripped(most) => write!(f, "{} stripped", mib(*most)),
        }
    }
}

/// OpenWrt's squashfs (include/image.mk): each 256 KiB block of a file compressed on its own
/// with xz, `-Xpreset 9 -Xe -Xlc 0 -Xlp 2 -Xpb 2`, and a branch filter on arm and x86.
const SQUASHFS_BLOCK: usize = 256 * 1024;
const SQUASHFS_LZMA2: &str = "--lzma2=preset=9e,lc=0,lp=2,pb=2,dict=256KiB";

const PROFILE: &str = "openwrt";

/// For every target. Measured on mips (socket-only, in 2026-12 before the daemon grew to
/// 2.71 MiB): 2.44 MiB as rustc's default static-pie, 2.09 MiB non-PIE, 1.80 MiB adding the
/// std features above and no panic locations.
const RUSTFLAGS: [&str; 3] = [
    // rustc's musl targets link its own crt objects, which a build of std from source does
    // not have: let zig supply them, as it supplies musl.
    "-Clink-self-contained=no",
    // A static executable at a fixed address: MIPS position-independent code goes through
    // the GOT for every call and global (15 % of the binary).
    "-Crelocation-model=static",
    // Panic messages without file and line (the strings of every panic site).
    "-Zlocation-detail=none",
];

/// netlink-packet-route's derived `Debug` of every message, attribute and enum variant:
/// with `-Zfmt-debug=shallow` it prints type and variant names only (0.18 MiB less on
/// mipsel). Only for that crate: core's `Option` and `Result`, and portproxy's own types,
/// keep printing their values in log lines. portproxy never prints netlink messages;
/// rtnetlink's rare "unexpected message" errors name the message's type only.
const SHALLOW_DEBUG: &str =
    r#"profile.openwrt.package.netlink-packet-route.rustflags=["-Zfmt-debug=shallow"]"#;

/// The three builds a router can get, by cargo features.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The daemon alone (`--no-default-features`): no fast path, no HTTP server of its own,
    /// no `portproxy map`.
    Minimal,
    /// Everything but the fast path: what OpenWrt builds.
    Sockets,
    /// The default features.
    FastPath,
}

impl Build {
    pub const ALL: [Build; 3] = [Build::Minimal, Build::Sockets, Build::FastPath];

    fn name(self) -> &'static str {
        match self {
            Build::Minimal => "minimal",
            Build::Sockets => "sockets",
            Build::FastPath => "fast path",
        }
    }

    fn budget(self) -> Budget {
        match self {
            Build::Minimal | Build::Sockets => Budget::Flash(BUDGET_FLASH),
            Build::FastPath => Budget::Stripped(BUDGET_STRIPPED),
        }
    }

    /// Its cargo feature arguments.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Build::Minimal => &["--no-default-features"],
            Build::Sockets => &[
                "--no-default-features",
                "--features",
                "http-server,map-client",
            ],
            Build::FastPath => &[],
        }
    }

    /// The binary's name in `out_dir()` is portproxy-<triple><suffix>.
    fn suffix(self) -> &'static str {
        match self {
            Build::Minimal => "-minimal",
            Build::Sockets => "-sockets",
            Build::FastPath => "",
        }
    }
}

pub fn target(triple: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.triple == triple)
        .expect("a triple from TARGETS")
}

/// `cargo xtask cross [TARGET...]`: every target (or those named) in each build (the fast
/// path where it builds); then the size table, also written to target/cross/sizes.txt.
pub fn run(only: &[String]) -> anyhow::Result<()> {
    if let Some(unknown) = only
        .iter()
        .find(|t| !TARGETS.iter().any(|k| k.triple == *t))
    {
        bail!(
            "unknown target {unknown}: one of {}",
            TARGETS.map(|t| t.triple).join(", ")
        );
    }
    setup::ensure()?;
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let chosen = TARGETS
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t.triple));
    for target in chosen {
        for build in Build::ALL {
            if build == Build::FastPath
                && let Some(reason) = target.no_fast_path
            {
                rows.push(format!(
                    "| {} | fast path | - | - | {} | not built: {reason} |",
                    target.triple,
                    build.budget()
                ));
                continue;
            }
            let started = Instant::now();
            match self::build(target, build) {
                Ok(bin) => rows.push(size_row(target, build, &bin, started.elapsed())?),
                Err(error) => {
                    eprintln!("error: {error:#}");
                    failed.push(format!("{} ({})", target.triple, build.name()));
                    rows.push(format!(
                        "| {} | {} | - | - | {} | BUILD FAILED (see above) |",
                        target.triple,
                        build.name(),
                        build.budget()
                    ));
                }
            }
        }
    }
    let mut table = String::from(
        "| target | build | stripped | in flash | budget | verdict (build time) |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        writeln!(table, "{row}").expect("writing to a String");
    }
    let path = out_dir().join("sizes.txt");
    fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{table}\n(also in {})", path.display());
    if !failed.is_empty() {
        bail!("builds failed: {}", failed.join(", "));
    }
    Ok(())
}

fn size_row(target: &Target, build: Build, bin: &Path, took: Duration) -> anyhow::Result<String> {
    let stripped = fs::metadata(bin)
        .with_context(|| format!("reading {}", bin.display()))?
        .len();
    let flash = flash_size(target, bin)?;
    let verdict = if build.budget().met(stripped, flash) {
        "met"
    } else {
        "MISSED"
    };
    Ok(format!(
        "| {} | {} | {} | {} | {} | {verdict} ({} s) |",
        target.triple,
        build.name(),
        mib(stripped),
        mib(flash),
        build.budget(),
        took.as_secs()
    ))
}

/// The bytes `bin` takes in a router's flash: its blocks as OpenWrt's squashfs compresses
/// them (`SQUASHFS_BLOCK`), a block that does not shrink stored as it is. (An opkg install
/// into the jffs2 overlay compresses less well; the image's squashfs is where a package
/// built into the firmware lives.)
fn flash_size(target: &Target, bin: &Path) -> anyhow::Result<u64> {
    let data = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let scratch = out_dir().join("squashfs-block");
    let mut total = 0;
    for block in data.chunks(SQUASHFS_BLOCK) {
        fs::write(&scratch, block).with_context(|| format!("writing {}", scratch.display()))?;
        let mut xz = Command::new("xz");
        xz.args(["--format=raw", "--stdout", "--keep"])
            .args(target.bcj)
            .arg(SQUASHFS_LZMA2)
            .arg(&scratch);
        let out = xz
            .output()
            .with_context(|| format!("running {} (xz-utils)", cmd::display(&xz)))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                cmd::display(&xz),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let compressed = out.stdout.len();
        total += compressed.min(block.len()) as u64;
    }
    fs::remove_file(&scratch).ok();
    Ok(total)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Where the binaries are collected: target/cross/portproxy-<triple>[-minimal|-sockets].
pub fn out_dir() -> PathBuf {
    cmd::target_dir().join("cross")
}

/// Builds portproxy for `target` and copies it to `out_dir()`; returns that path.
pub fn build(target: &Target, build: Build) -> anyhow::Result<PathBuf> {
    let mut cargo = zigbuild(target, "zigbuild");
    cargo.args(build.features());
    cmd::run(&mut cargo)?;
    let built = cmd::target_dir()
        .join(target.triple)
        .join(PROFILE)
        .join("portproxy");
    let out = out_dir().join(format!("portproxy-{}{}", target.triple, build.suffix()));
    fs::create_dir_all(out_dir()).context("creating target/cross")?;
    fs::copy(&built, &out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    remove_pdr(&out)?;
    check_static(&out)?;
    Ok(out)
}

/// Deletes the `.pdr` section: LLVM writes a MIPS procedure descriptor for every function
/// (for GNU debuggers; nothing loads it) and the linker's strip keeps it, 0.18 MiB of a
/// socket-only mipsel binary. The tool is the nightly's `rust-objcopy` (llvm-objcopy, part
/// of the toolchain; it finds its libLLVM in the sysroot). A no-op for other targets.
fn remove_pdr(bin: &Path) -> anyhow::Result<()> {
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot")?;
    let sysroot = PathBuf::from(sysroot.trim());
    let host = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))
        .and_then(|out| {
            Some(
                out.lines()
                    .find_map(|l| l.strip_prefix("host: "))?
                    .to_string(),
            )
        })
        .context("rustc +nightly -vV: no host line")?;
    let objcopy = sysroot
        .join("lib/rustlib")
        .join(host)
        .join("bin/rust-objcopy");
    cmd::run(
        Command::new(objcopy)
            .arg("--remove-section=.pdr")
            .arg(bin)
            .env("LD_LIBRARY_PATH", sysroot.join("lib")),
    )
}

/// Runs the daemon's unit tests for `target` under qemu-user, in `build` (not the fast path:
/// its tests load programs into the kernel, which qemu-user does not translate).
pub fn unit_tests(target: &Target, build: Build) -> Command {
    let mut cargo = zigbuild(target, "test");
    cargo
        .args(build.features())
        .arg("--lib")
        .env(env_key(target.triple, "RUNNER"), target.qemu);
    cargo
}

/// `cargo-zigbuild SUBCOMMAND` for `target` with the nightly toolchain, building std from
/// rust-src, under `nice` (builds share the machine).
fn zigbuild(target: &Target, subcommand: &str) -> Command {
    let mut cargo = Command::new("nice");
    cargo
        .arg(setup::cargo_zigbuild())
        .arg(subcommand)
        .args(["--profile", PROFILE, "--package", "portproxy"])
        .args(["--target", target.triple])
        .arg("-Zbuild-std=std,panic_unwind")
        // std without its backtrace printer (addr2line, gimli, miniz: about 75 KB on x86-64).
        .arg("-Zbuild-std-features=panic-unwind,optimize_for_size")
        .args(["-Zprofile-rustflags", "--config", SHALLOW_DEBUG])
        .current_dir(cmd::workspace_root())
        // cargo-zigbuild runs $CARGO, which `cargo xtask` sets to the stable cargo: let the
        // rustup proxy on PATH pick the nightly instead.
        .env_remove("CARGO")
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .env(env_key(target.triple, "RUSTFLAGS"), RUSTFLAGS.join(" "));
    cargo
}

/// e.g. CARGO_TARGET_MIPS_UNKNOWN_LINUX_MUSL_RUNNER.
fn env_key(triple: &str, what: &str) -> String {
    format!(
        "CARGO_TARGET_{}_{what}",
        triple.to_uppercase().replace('-', "_")
    )
}

/// A script that runs the cross-built `bin` under qemu-user, for PORTPROXY_BIN: the lab
/// starts it like a native binary (`exec` keeps the pid, so signals reach portproxy).
pub fn qemu_wrapper(target: &Target, bin: &Path) -> anyhow::Result<PathBuf> {
    let path = out_dir().join(format!("qemu-{}", target.triple));
    let script = format!("#!/bin/sh\nexec {} {} \"$@\"\n", target.qemu, bin.display());
    cmd::write_script(&path, &script)?;
    Ok(path)
}

/// Whether qemu-user can run `target`'s binaries here, or why not.
pub fn qemu_available(target: &Target) -> Result<(), String> {
    match cmd::output(Command::new(target.qemu).arg("--version")) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{} not found (Debian package qemu-user; cargo xtask setup installs it)",
            target.qemu
        )),
    }
}

/// Fails unless `file` says `bin` is statically linked (a router has no musl of this build).
fn check_static(bin: &Path) -> anyhow::Result<()> {
    let out = cmd::output(Command::new("file").arg("-b").arg(bin))
        .with_context(|| format!("running file {}", bin.display()))?;
    if !out.contains("statically linked") {
        bail!("{} is not statically linked: {}", bin.display(), out.trim());
    }
    Ok(())
}
