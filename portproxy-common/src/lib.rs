//! Types shared by the eBPF programs and the userspace controller.
#![no_std]

/// Indexes into the per-CPU `STATS` array: one `u64` counter per packet fate.
pub const STAT_PASSED: u32 = 0;
/// Number of `STATS` entries (its `max_entries`).
pub const STAT_COUNT: u32 = 1;
