use aya_ebpf::{macros::map, maps::PerCpuArray};
use portproxy_common::STAT_COUNT;

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Adds one to this CPU's counter `index` (a `portproxy_common::STAT_*`).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the slot belongs to this CPU and XDP programs are not preempted on it.
        unsafe { *counter += 1 };
    }
}
