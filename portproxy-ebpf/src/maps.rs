//! The maps shared with userspace (layouts in `portproxy_common`). `STATS` is in `stats.rs`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use portproxy_common::{CLIENTS_MAX_ENTRIES, ClientKey, ClientValue, Config};

/// One entry, written by userspace; all zero until it is (the programs then pass everything).
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// LAN clients with a NAT-PMP/PCP exchange in flight: where the CGN's replies go.
/// Userspace may resize it before load; aging removes idle entries, LRU evicts when full.
#[map]
pub static CLIENTS: LruHashMap<ClientKey, ClientValue> =
    LruHashMap::with_max_entries(CLIENTS_MAX_ENTRIES, 0);

/// The configuration, or `None` while it is unset (flags 0).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let cfg = CONFIG.get(0)?;
    if cfg.flags == 0 { None } else { Some(cfg) }
}
