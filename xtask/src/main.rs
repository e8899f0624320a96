//! The project's own commands, used by the README and `.ci/run`:
//! `cargo xtask setup | build [--release] | test [-- ARGS] | lab [--keep] [--softwire l2|l3] [--xdp] | bench [-- ARGS]`.

mod bench;
mod build;
mod cmd;
mod lab;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker).
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
    },
    /// Benchmark the data paths (routing, sockets, fast path, nftables DNAT) into target/bench/.
    Bench {
        /// Passed to the bench binary, e.g. --smoke, --rounds 6, --softwire l3.
        #[arg(last = true)]
        args: Vec<String>,
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
        } => lab::run(keep, softwire.as_deref(), xdp),
        Command::Bench { args } => bench::run(&args),
    };
    // No backtrace (RUST_BACKTRACE may be set): these errors are for the user, not a bug.
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
