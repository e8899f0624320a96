use aya_ebpf::{bindings::TC_ACT_OK, macros::map, maps::PerCpuArray};
use portproxy_common::{STAT_COUNT, STAT_PASSED};

/// One counter per packet fate (`portproxy_common::STAT_*`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Adds one to this CPU's counter `index` (a `portproxy_common::STAT_*`).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the slot belongs to this CPU and BPF programs are not migrated while running.
        unsafe { *counter += 1 };
    }
}

/// Counts the packet as passed and hands it to the stack untouched.
#[inline(always)]
pub fn pass() -> i32 {
    count(STAT_PASSED);
    TC_ACT_OK as i32
}
