//! Flood resilience, applied by whichever hook actually relays a packet (once per packet: an
//! XDP program that hands a packet on to TC has charged nothing; see `xdp`).
//!
//! - Rate: every NAT-PMP/PCP request and M-SEARCH costs its source address one token of its
//!   bucket in `RATE` (`Config::rate_per_sec` sustained, twice that at once, 0 = no limit;
//!   `portproxy_common::RateValue::take`); none left: `STAT_DROP_RATE_LIMIT`.
//! - Quota: a request for a tuple not yet in `CLIENTS` needs the address to hold fewer than
//!   `CLIENT_QUOTA` entries (`RateValue::in_flight`); otherwise `STAT_DROP_CLIENT_QUOTA`.
//!   `port_control::remember` checks and counts it.
//!
//! The bucket is updated without a lock (the BPF target has no atomic read-modify-write in
//! Rust's `core`, and `bpf_spin_lock` would cost every packet): two CPUs charging the same
//! address at the same instant may both read the same value, so at most one extra packet
//! per CPU gets through, and an entry count may come out one low. Both err towards letting a
//! client through, and the daemon's aging sweep recounts the entries from `CLIENTS`.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_boot_ns};
use portproxy_common::{RateKey, RateValue};

use crate::maps::RATE;

/// The boot-time clock (the one `CLIENTS` and `RATE` are stamped with).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The bucket of a LAN address, charged one token.
pub struct Charged(*mut RateValue);

impl Charged {
    /// `CLIENTS` entries the address holds.
    #[inline(always)]
    pub fn in_flight(&self) -> u64 {
        // SAFETY: points into a `RATE` value for the rest of this program run (RCU).
        unsafe { (*self.0).in_flight }
    }

    /// One more `CLIENTS` entry for the address.
    #[inline(always)]
    pub fn add_entry(&self) {
        // SAFETY: as above.
        unsafe { (*self.0).in_flight += 1 };
    }
}

/// Takes a token from `addr_be`'s bucket (created full on its first packet) at
/// `rate_per_sec` (0: none taken, never over the limit; the bucket still counts entries). `None`: over
/// the limit (the caller drops and counts `STAT_DROP_RATE_LIMIT`). `Err`: the bucket could
/// not be created, which only a flood of spoofed sources evicting it again at once can cause.
#[inline(always)]
pub fn charge(addr_be: u32, now_ns: u64, rate_per_sec: u32) -> Result<Option<Charged>, i64> {
    let key = RateKey { addr_be };
    let bucket = match RATE.get_ptr_mut(&key) {
        Some(bucket) => bucket,
        None => {
            // Another CPU may have created it meanwhile (EEXIST): use theirs.
            let _ = RATE.insert(&key, &RateValue::new(now_ns), u64::from(BPF_NOEXIST));
            RATE.get_ptr_mut(&key).ok_or(-1i64)?
        }
    };
    // SAFETY: points into the map value for the rest of this program run (RCU).
    Ok(unsafe { (*bucket).take(now_ns, rate_per_sec) }.then_some(Charged(bucket)))
}
