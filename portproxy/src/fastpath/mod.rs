//! The eBPF fast path: the kernel doing what the socket relay does (see `portproxy-ebpf`).
//!
//! `FastPath::start` loads the object built from `portproxy-ebpf` (embedded here), writes its
//! `CONFIG`, attaches `tc_wan_ingress` and `tc_lan_ingress` (TC, TCX on Linux >= 6.6) and, where
//! they fit, `xdp_lan` / `xdp_wan` in front of them (the layout and its reasons are in
//! `loader`), and pins the maps; dropping the handle detaches everything and removes the pins.
//!
//! - `grants`: the CGN's grants the programs hand over (`GRANTS`), into the mapping table.
//! - `iface`: what the programs need to know about an interface (MAC, L2 or L3).
//! - `loader`: loading, attaching, pinning, detaching.
//! - `maps`: `CONFIG` contents, `STATS` counters, `CLIENTS` aging.
//! - `object`: loading the embedded object without parsing the kernel's BTF.

mod grants;
mod iface;
mod loader;
mod maps;
mod object;

use anyhow::Context as _;
use aya::{Ebpf, programs::SchedClassifier};

pub use grants::{Grants, forward as forward_grants};
pub use loader::{FastPath, KernelLog};
pub use maps::read_pinned_counters;

/// ELF object holding every eBPF program and map (built by `build.rs`).
pub const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portproxy"));

/// Programs, in the order they are attached (WAN first: replies must be handled before
/// requests leave).
pub const PROGRAMS: [&str; 2] = ["tc_wan_ingress", "tc_lan_ingress"];

/// Loads one TC program (runs the verifier).
fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("{name} is not a TC (sched_cls) program"))?;
    program
        .load()
        .with_context(|| format!("loading program {name} into the kernel (verifier)"))?;
    Ok(program)
}

/// Writes the programs' log records (one per relayed packet, `-vv`) to the daemon's log as
/// they arrive; runs until cancelled.
pub async fn forward_kernel_log(log: KernelLog) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the fd is the ring buffer map's, owned by `log` for as long as the AsyncFd
    // holds it, and `as_raw_fd` always returns that one.
    let mut log = match unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) } {
        Ok(log) => log,
        Err(e) => {
            log::warn!("the fast path's per-packet log is not shown: {e}");
            return;
        }
    };
    while let Ok(mut ready) = log.readable_mut().await {
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

/// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK (64 KiB by default);
/// newer ones use memory cgroups and ignore it. Failing here is not fatal: the load reports it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid, initialised struct.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_embedded() {
        assert!(
            EBPF_OBJECT.starts_with(b"\x7fELF"),
            "embedded eBPF object is not ELF ({} bytes)",
            EBPF_OBJECT.len()
        );
    }
}
