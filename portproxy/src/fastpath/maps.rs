//! What userspace reads and writes in the programs' maps: `CONFIG`, `STATS`, `CLIENTS`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use portproxy_common::{
    ClientKey, ClientValue, Config as MapConfig, FLAG_PORT_CONTROL, FLAG_SSDP, STAT_COUNT,
    STAT_NAMES,
};

use super::iface;
use crate::config::Config;

/// Builds the programs' `CONFIG` from the daemon's configuration and the interfaces.
pub fn map_config(cfg: &Config) -> anyhow::Result<MapConfig> {
    let be = |addr: Ipv4Addr| u32::from_ne_bytes(addr.octets());
    let lan = iface::link(&cfg.lan.iface)?;
    if lan.is_l3() {
        anyhow::bail!(
            "the LAN interface {} has no Ethernet header (link type {}); the fast path needs an Ethernet LAN",
            cfg.lan.iface,
            lan.arphrd
        );
    }
    let wan = iface::link(&cfg.wan.iface)?;
    let wan_is_l3 = wan.is_l3();
    let (lan_mac, wan_mac) = (lan.mac, if wan_is_l3 { [0; 6] } else { wan.mac });
    let mut flags = 0;
    if cfg.nat_pmp {
        flags |= FLAG_PORT_CONTROL;
    }
    if cfg.upnp_udp {
        flags |= FLAG_SSDP;
    }
    Ok(MapConfig {
        lan_addr_be: be(cfg.lan.addr),
        wan_addr_be: be(cfg.wan.addr),
        cgn_addr_be: be(cfg.cgn),
        lan_ifindex: cfg.lan.index,
        wan_ifindex: cfg.wan.index,
        port_control_port_be: cfg.nat_pmp_port.to_be(),
        ssdp_port_be: cfg.ssdp_port.to_be(),
        lan_mac,
        wan_mac,
        wan_is_l3: u8::from(wan_is_l3),
        flags,
        _pad: [0; 2],
    })
}

/// Writes entry 0 of `CONFIG` (the programs pick it up on their next packet).
pub fn write_config(map: &mut Map, value: MapConfig) -> anyhow::Result<()> {
    let mut array: Array<&mut MapData, MapConfig> =
        map.try_into().context("CONFIG is not an array of Config")?;
    array.set(0, value, 0).context("writing CONFIG")
}

/// The `STATS` counters summed over CPUs, indexed by `portproxy_common::STAT_*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; STAT_COUNT as usize]);

impl Counters {
    pub fn read(map: &Map) -> anyhow::Result<Counters> {
        let array: PerCpuArray<&MapData, u64> = map
            .try_into()
            .context("STATS is not a per-CPU array of u64")?;
        let mut counters = Counters::default();
        for (index, slot) in (0..STAT_COUNT).zip(counters.0.iter_mut()) {
            let per_cpu = array
                .get(&index, 0)
                .with_context(|| format!("reading STATS[{index}]"))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(counters)
    }

    /// `(name, value)` for every counter.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        STAT_NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{name:<22} {value}")?;
        }
        Ok(())
    }
}

/// Reads the counters of a running fast path from its pinned `STATS` (for `portproxy stats`,
/// from the daemon's mount namespace).
pub fn read_pinned_counters(pin_dir: &Path) -> anyhow::Result<Counters> {
    let path = pin_dir.join("STATS");
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is the fast path running?)", path.display()))?;
    let map = Map::PerCpuArray(data);
    Counters::read(&map)
}

/// Removes `CLIENTS` entries whose last request or reply is older than `max_idle`
/// (boot-time clock on both sides). Returns how many were removed.
pub fn expire_clients(map: &mut Map, now: Duration, max_idle: Duration) -> anyhow::Result<usize> {
    let mut clients: HashMap<&mut MapData, ClientKey, ClientValue> = map
        .try_into()
        .context("CLIENTS is not a hash of ClientKey -> ClientValue")?;
    let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    let max_idle_ns = u64::try_from(max_idle.as_nanos()).unwrap_or(u64::MAX);
    // Collect first: deleting while walking the keys restarts the walk.
    let mut stale = Vec::new();
    for entry in clients.iter() {
        let (key, value) = entry.context("reading CLIENTS")?;
        if is_idle(value.last_seen_ns, now_ns, max_idle_ns) {
            stale.push(key);
        }
    }
    let mut removed = 0;
    for key in stale {
        match clients.remove(&key) {
            Ok(()) => removed += 1,
            // Evicted by the LRU or refreshed-and-removed meanwhile: fine.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("removing an idle CLIENTS entry"),
        }
    }
    Ok(removed)
}

/// An entry stamped in the future (clock read races with the program) is not idle.
fn is_idle(last_seen_ns: u64, now_ns: u64, max_idle_ns: u64) -> bool {
    now_ns.saturating_sub(last_seen_ns) > max_idle_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_entries() {
        let s = 1_000_000_000;
        assert!(is_idle(0, 31 * s, 30 * s));
        assert!(!is_idle(2 * s, 31 * s, 30 * s));
        assert!(
            !is_idle(40 * s, 31 * s, 30 * s),
            "stamped after `now` was read"
        );
    }

    #[test]
    fn counters_display_every_name() {
        let mut counters = Counters::default();
        counters.0[portproxy_common::STAT_NOTIFY_IN as usize] = 3;
        let text = counters.to_string();
        assert_eq!(text.lines().count(), STAT_COUNT as usize);
        assert!(text.contains("ssdp notify in"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("ssdp notify in") && l.ends_with(" 3")),
            "{text}"
        );
    }
}
