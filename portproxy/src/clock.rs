//! The one clock for lifetimes and ages: `CLOCK_BOOTTIME`, the clock
//! `bpf_ktime_get_boot_ns` reads in the programs. It keeps counting through suspend, so
//! mapping lifetimes and the kernel's entry ages compare like for like.

use std::time::Duration;

/// The boot-time clock (`CLOCK_BOOTTIME`), the one `bpf_ktime_get_boot_ns` reads: it keeps
/// counting through suspend, so entry ages compare like for like.
pub fn boot_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME exists on every supported kernel.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_moves_forward() {
        let a = boot_time();
        let b = boot_time();
        assert!(a > Duration::ZERO && b >= a);
    }
}
