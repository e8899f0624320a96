//! `cargo xtask bench [-- ARGS]`: measures portproxy's data paths against plain routing and
//! an nftables DNAT in a namespace topology of its own, and writes target/bench/bench.{txt,json,png}.
//! See `tests::bench` for what is measured and how.

use std::{process::ExitCode, sync::atomic::Ordering};

use clap::Parser;
use tests::bench::{Args, INTERRUPTED, run};

extern "C" fn on_signal(_: libc::c_int) {
    // A second Ctrl-C kills at once (a later run removes what was left).
    if INTERRUPTED.swap(true, Ordering::Relaxed) {
        // SAFETY: async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic or exits.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
