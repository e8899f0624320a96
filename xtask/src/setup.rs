//! `cargo xtask setup`: installs what building and testing need. Idempotent, and cheap to
//! check (`ensure`) before every build. See docs/toolchain.md for the why.

use std::{env, fs, os::unix::fs::symlink, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Debian packages: miniupnpd and the clients for the namespace tests, tools for the fast path.
/// (miniupnpd-nftables ships only the binary; the service and its debconf questions live in
/// the separate `miniupnpd` package, which is not installed, so nothing starts in the background.)
const PACKAGES: &[&str] = &[
    "miniupnpd-nftables",
    "miniupnpc",
    "natpmpc",
    // gssdp-discover: GUPnP's SSDP client, a second one besides miniupnpc's for the IGD tests.
    "gupnp-tools",
    "bpftool",
    "nftables",
    "iproute2",
    "tcpdump",
    // Cross builds: qemu-user runs the router binaries (`cargo xtask cross`, the qemu checks
    // of `cargo xtask test`); file tells that they are static; xz measures what they take in
    // a router's flash.
    "qemu-user",
    "file",
    "xz-utils",
    // Packaging tests: systemd-analyze verifies the systemd unit, shellcheck the init script.
    "systemd",
    "shellcheck",
    // The web page's test: headless Chromium driven over WebDriver (tests/tests/api.rs).
    "chromium",
    "chromium-driver",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The fuzz smoke run of `cargo xtask test` (portproxy/fuzz) needs it.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const NIGHTLY: [&str; 2] = ["--toolchain", "nightly"];
/// Cross builds: zig links against its own musl; cargo-zigbuild drives cargo with it. Both come
/// from PyPI (pip), the only registry here that has them.
const PIP_PACKAGES: [(&str, &str); 2] = [("ziglang", "0.17.1"), ("cargo-zigbuild", "0.24.1")];

pub fn run() -> anyhow::Result<()> {
    cmd::require_root("setup")?;
    packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    pip_packages()
}

/// Runs setup if the cheap check finds something missing.
pub fn ensure() -> anyhow::Result<()> {
    let mut missing = missing_packages();
    if !rust_src_installed() {
        missing.push("rust-src (nightly)".into());
    }
    if !bpf_linker_works() {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    if !cargo_fuzz_works() {
        missing.push(format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
    }
    missing.extend(missing_pip_packages());
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("missing: {}; running setup", missing.join(", "));
    run()
}

fn missing_packages() -> Vec<String> {
    // Exits non-zero when a package is unknown to dpkg; the lines it does print still count.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(PACKAGES)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let installed: Vec<&str> = out
        .lines()
        .filter(|line| line.ends_with(" ok installed"))
        .filter_map(|line| line.split(' ').next())
        .collect();
    PACKAGES
        .iter()
        .filter(|package| !installed.contains(package))
        .map(|package| package.to_string())
        .collect()
}

fn packages() -> anyhow::Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        println!("ok: Debian packages {}", PACKAGES.join(" "));
        return Ok(());
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src_installed() -> bool {
    cmd::output(
        Command::new("rustup")
            .args(["component", "list", "--installed"])
            .args(NIGHTLY),
    )
    .is_some_and(|out| out.lines().any(|line| line.starts_with("rust-src")))
}

fn rust_src() -> anyhow::Result<()> {
    if rust_src_installed() {
        println!("ok: rust-src for nightly");
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["component", "add", "rust-src"])
            .args(NIGHTLY),
    )
}

fn bpf_linker_works() -> bool {
    cmd::output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|out| out.trim() == format!("bpf-linker {BPF_LINKER_VERSION}"))
}

/// bpf-linker must use the nightly's own LLVM. It is built against a prefix of symlinks to the
/// nightly's libLLVM, outside target/ because the binary keeps the prefix as its RUNPATH.
fn bpf_linker() -> anyhow::Result<()> {
    let (prefix, llvm_major) = llvm_prefix()?;
    if bpf_linker_works() {
        println!(
            "ok: bpf-linker {BPF_LINKER_VERSION} (LLVM prefix {})",
            prefix.display()
        );
        return Ok(());
    }
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--locked", "--force", "--no-default-features"])
            .arg(format!("--features=llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_works() {
        bail!("bpf-linker --version does not report {BPF_LINKER_VERSION} after installing it");
    }
    Ok(())
}

fn cargo_fuzz_works() -> bool {
    cmd::output(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|out| out.trim() == format!("cargo-fuzz {CARGO_FUZZ_VERSION}"))
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if cargo_fuzz_works() {
        println!("ok: cargo-fuzz {CARGO_FUZZ_VERSION}");
        return Ok(());
    }
    cmd::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION])
            .args(["--locked", "--force"]),
    )
}

fn missing_pip_packages() -> Vec<String> {
    PIP_PACKAGES
        .iter()
        .filter(|(name, version)| {
            let shown = cmd::output(Command::new("python3").args(["-m", "pip", "show", name]));
            !shown.is_some_and(|out| out.lines().any(|l| l == format!("Version: {version}")))
        })
        .map(|(name, version)| format!("{name}=={version}"))
        .collect()
}

fn pip_packages() -> anyhow::Result<()> {
    let missing = missing_pip_packages();
    if missing.is_empty() {
        println!("ok: PyPI packages ziglang, cargo-zigbuild");
        return Ok(());
    }
    cmd::run(
        Command::new("python3")
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(&missing),
    )
}

/// The cargo-zigbuild that pip installed: in the scripts directory of the python3 on PATH
/// (which need not be on PATH itself).
pub fn cargo_zigbuild() -> PathBuf {
    let scripts = cmd::output(Command::new("python3").args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]))
    .unwrap_or_default();
    PathBuf::from(scripts.trim()).join("cargo-zigbuild")
}

/// Makes `$HOME/.cache/portproxy/llvm-prefix/lib` hold `libLLVM.so` (to link bpf-linker) and
/// the library's soname (to run it), both pointing into the nightly's sysroot. Returns the
/// prefix and LLVM's major version.
fn llvm_prefix() -> anyhow::Result<(PathBuf, String)> {
    let sysroot =
        cmd::output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .context("no nightly toolchain (rustup toolchain list)")?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    let soname = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    // e.g. libLLVM.so.22.1-rust-1.97.0-nightly
    let llvm_major = soname["libLLVM.so.".len()..]
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();

    let home = env::var_os("HOME").context("HOME not set")?;
    let prefix = PathBuf::from(home).join(".cache/portproxy/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let library = sysroot_lib.join(&soname);
    for name in ["libLLVM.so", soname.as_str()] {
        let link = prefix_lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == library) {
            continue;
        }
        let _ = fs::remove_file(&link);
        symlink(&library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
        println!("linked {} -> {}", link.display(), library.display());
    }
    Ok((prefix, llvm_major))
}
