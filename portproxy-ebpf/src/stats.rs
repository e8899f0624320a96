use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use portproxy_common::STAT_COUNT;

/// One counter per packet fate (`portproxy_common::STAT_*`).
#[btf_map]
static STATS: PerCpuArray<u64, { STAT_COUNT as usize }> = PerCpuArray::new();

/// Adds one to this CPU's counter `index` (a `portproxy_common::STAT_*`).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the slot belongs to this CPU and BPF programs are not migrated while running.
        unsafe { *counter += 1 };
    }
}
