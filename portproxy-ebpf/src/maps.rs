//! The maps shared with userspace (layouts in `portproxy_common`). `STATS` is in `stats.rs`.
//!
//! BTF-defined maps (`.maps` section, `#[btf_map]`): the kernel records the key and value
//! types, so `bpftool map dump pinned /sys/fs/bpf/portproxy/CLIENTS` prints
//! `{"key": {"addr_be": ..., "port_be": ..., "kind": ...}, "value": {"mac": ..., ...}}`
//! instead of raw bytes.

use aya_ebpf::{
    btf_maps::{Array, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use portproxy_common::{
    CLIENTS_MAX_ENTRIES, ClientKey, ClientValue, Config, RATE_MAX_ENTRIES, RateKey, RateValue,
};

/// One entry, written by userspace; all zero until it is (the programs then pass everything).
#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

/// LAN clients with a NAT-PMP/PCP exchange in flight: where the CGN's replies go.
/// Userspace may resize it before load; aging removes idle entries, LRU evicts when full.
#[btf_map]
pub static CLIENTS: LruHashMap<ClientKey, ClientValue, { CLIENTS_MAX_ENTRIES as usize }> =
    LruHashMap::new();

/// Per LAN client address: token bucket and `CLIENTS` entry count (`limit`). An LRU of
/// fixed size: memory stays bounded however many source addresses a LAN host makes up.
#[btf_map]
pub static RATE: LruHashMap<RateKey, RateValue, { RATE_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Scratch state of the SSDP search scan (`ssdp::Scan`), one per CPU.
#[btf_map]
pub static SCAN: PerCpuArray<crate::ssdp::Scan, 1> = PerCpuArray::new();

/// The configuration, or `None` while it is unset (flags 0).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let cfg = CONFIG.get(0)?;
    if cfg.flags == 0 { None } else { Some(cfg) }
}
