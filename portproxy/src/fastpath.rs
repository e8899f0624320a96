//! The eBPF fast path: the object built from `portproxy-ebpf`, embedded in the daemon.

use anyhow::Context as _;
use aya::{Ebpf, programs::Xdp};

/// ELF object holding every eBPF program and map (built by `build.rs`).
pub const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portproxy"));

/// Loads the embedded object and its programs into the kernel without attaching anything,
/// to tell whether the fast path can run here.
pub fn probe() -> anyhow::Result<String> {
    raise_memlock_limit();
    let mut ebpf = Ebpf::load(EBPF_OBJECT)
        .context("loading the embedded eBPF object (creating its maps needs root or CAP_BPF)")?;
    let xdp_lan: &mut Xdp = ebpf
        .program_mut("xdp_lan")
        .context("program xdp_lan missing from the eBPF object")?
        .try_into()
        .context("xdp_lan is not an XDP program")?;
    xdp_lan
        .load()
        .context("loading program xdp_lan into the kernel (verifier)")?;
    let programs = ebpf.programs().count();
    Ok(format!(
        "eBPF object loads ({programs} program{}, verifier OK)",
        if programs == 1 { "" } else { "s" }
    ))
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
