//! The project's own commands, used by the README and `.ci/run`:
//! `cargo xtask setup | build [--release] | test [-- ARGS] | lab [--keep] [--softwire l2|l3] [--xdp] [--nat444] | bench [-- ARGS]
//! | cross [TARGET...] | install [--socket-only] [--root DIR]`.

mod bench;
mod build;
mod cmd;
mod cross;
mod install;
mod lab;
mod setup;
mod test;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker,
    /// cargo-fuzz, ziglang and cargo-zigbuild).
    Setup,
    /// Build the daemon with its embedded eBPF object into target/{debug,release}/portproxy.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the unit tests, then the privileged network-namespace suite (needs root).
    Test {
        /// Passed to the test binaries, e.g. a test name filter or --nocapture.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Start the namespace lab (the `lab` binary of the tests crate) for manual experiments.
    Lab {
        /// Leave the namespaces in place on exit.
        #[arg(long)]
        keep: bool,
        /// Link type of the softwire between the home router and the carrier-grade NAT.
        #[arg(long, value_parser = ["l2", "l3"])]
        softwire: Option<String>,
        /// Run portproxy on the eBPF fast path (--xdp).
        #[arg(long)]
        xdp: bool,
        /// Double NAT: the home router masquerades the LAN like OpenWrt's fw4 (NAT444).
        #[arg(long)]
        nat444: bool,
    },
    /// Benchmark the data paths (routing, sockets, fast path, nftables DNAT) into target/bench/.
    Bench {
        /// Passed to the bench binary, e.g. --smoke, --rounds 6, --softwire l3.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Static router binaries (aarch64, armv7, mipsel, mips; musl) into target/cross/, in the
    /// minimal, sockets and fast-path builds, and their sizes against the footprint budget.
    Cross {
        /// Only these targets (e.g. mipsel-unknown-linux-musl); all four without.
        targets: Vec<String>,
    },
    /// Install the release binary, the systemd unit and /etc/default/portproxy.
    Install {
        /// The socket-only build (no eBPF fast path, no CAP_BPF/CAP_SYS_ADMIN in the unit).
        #[arg(long)]
        socket_only: bool,
        /// Install below this directory instead of / (packaging, trying it out).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build { release } => {
            build::run(release).map(|bin| println!("built {}", bin.display()))
        }
        Command::Test { args } => test::run(&args),
        Command::Lab {
            keep,
            softwire,
            xdp,
            nat444,
        } => lab::run(keep, softwire.as_deref(), xdp, nat444),
        Command::Bench { args } => bench::run(&args),
        Command::Cross { targets } => cross::run(&targets),
        Command::Install { socket_only, root } => install::run(socket_only, &root),
    };
    // No backtrace (RUST_BACKTRACE may be set): these errors are for the user, not a bug.
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
