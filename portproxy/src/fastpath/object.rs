//! Loading the embedded eBPF object without parsing the kernel's BTF.
//!
//! aya 0.14's `EbpfLoader::new` always reads and parses `/sys/kernel/btf/vmlinux` (about
//! 15 MB of heap on a 6.x kernel: the daemon peaked at 22-46 MiB while loading) so that it
//! can apply CO-RE relocations. Our programs need none: they read packets and their own maps,
//! never a kernel struct. So the object is loaded on a short-lived thread with a mount
//! namespace of its own, in which `/sys/kernel/btf` is an empty tmpfs: aya finds no kernel
//! BTF and skips the parse, exactly as on a stock OpenWrt kernel, which has none. The maps
//! and programs it creates are file descriptors, valid in every thread of the process.
//!
//! Where that namespace cannot be made (no CAP_SYS_ADMIN, a kernel without mount
//! namespaces), the object is loaded as usual, the parse happens, and its heap is given back.

use std::ffi::CStr;

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};
use log::debug;

use super::EBPF_OBJECT;

const KERNEL_BTF_DIR: &CStr = c"/sys/kernel/btf";
/// aya-log's ring buffer, and its size with `-vv` (room for bursts of log records).
const KERNEL_LOG_MAP: &str = "AYA_LOGS";
const KERNEL_LOG_BYTES: u32 = 1 << 17;

/// Loads the object (maps created, programs not yet loaded) with `CLIENTS` sized for
/// `max_clients`, and the programs' per-packet log lines (`trace` in portproxy-ebpf) on
/// when `kernel_log`: off, the verifier removes them and their ring buffer is one page.
pub fn load(max_clients: u32, kernel_log: bool) -> anyhow::Result<Ebpf> {
    let (level, log_bytes) = match kernel_log {
        // aya-log numbers its levels as the log crate does.
        true => (log::Level::Debug as u8, KERNEL_LOG_BYTES),
        // SAFETY: sysconf has no memory effects.
        false => (0u8, unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32),
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let hidden = hide_kernel_btf();
                if let Err(why) = &hidden {
                    debug!("loading with the kernel's BTF parsed: {why}");
                }
                let ebpf = EbpfLoader::new()
                    .map_max_entries("CLIENTS", max_clients)
                    .override_global(aya_log::LEVEL, &level, true)
                    .map_max_entries(KERNEL_LOG_MAP, log_bytes)
                    .load(EBPF_OBJECT);
                // Hand the parsed BTF back to the system, or it stays in the daemon's RSS.
                // (musl, the routers' C library, has no malloc_trim.)
                #[cfg(target_env = "gnu")]
                if hidden.is_err() {
                    // SAFETY: plain libc call, no pointers.
                    unsafe { libc::malloc_trim(0) };
                }
                ebpf
            })
            .join()
            .expect("the eBPF loading thread panicked")
    })
    .context("loading the embedded eBPF object (creating its maps needs root or CAP_BPF)")
}

/// Gives the calling thread its own mount namespace with an empty `/sys/kernel/btf`.
fn hide_kernel_btf() -> std::io::Result<()> {
    let check = |ret: libc::c_int| match ret {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    };
    // SAFETY: plain syscalls; every pointer is a NUL-terminated string or null, as mount(2)
    // allows. unshare(CLONE_NEWNS) affects only this thread (it unshares CLONE_FS with it).
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // Private, so the tmpfs below is not propagated back to the daemon's namespace.
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        if libc::access(KERNEL_BTF_DIR.as_ptr(), libc::F_OK) != 0 {
            return Ok(()); // no kernel BTF to hide
        }
        check(libc::mount(
            c"none".as_ptr(),
            KERNEL_BTF_DIR.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))
    }
}
