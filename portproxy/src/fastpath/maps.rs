//! What userspace reads and writes in the programs' maps: `CONFIG`, `STATS`, `CLIENTS`,
//! `RATE`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use aya::Ebpf;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use portproxy_common::{
    ClientKey, ClientValue, Config as MapConfig, FLAG_HOLD_GRANTS, FLAG_PORT_CONTROL,
    FLAG_REPORT_GRANTS, FLAG_SERVE_NATPMP, FLAG_SERVE_PCP, FLAG_SSDP, RATE_REFILL_NS, RateKey,
    RateValue, STAT_COUNT, STAT_EVICTED, STAT_IDS, mask_be,
};

/// `BPF_NOEXIST` (create only).
const BPF_NOEXIST: u32 = 1;

use super::iface;
use crate::config::Config;
use crate::datapath::ToDaemon;
use crate::stats::Counter;

/// Builds the programs' `CONFIG` from the daemon's configuration and the interfaces.
/// `to_daemon`: see `FLAG_HOLD_GRANTS`, `FLAG_SERVE_NATPMP`, `FLAG_SERVE_PCP`.
pub fn map_config(cfg: &Config, to_daemon: ToDaemon) -> anyhow::Result<MapConfig> {
    let be = |addr: Ipv4Addr| u32::from_ne_bytes(addr.octets());
    let lan = iface::link(&cfg.lan.iface)?;
    if lan.is_l3() {
        anyhow::bail!(
            "the LAN interface {} has no Ethernet header (link type {}); the fast path needs an Ethernet LAN",
            cfg.lan.iface,
            lan.kind
        );
    }
    let wan = iface::link(&cfg.wan.iface)?;
    let wan_is_l3 = wan.is_l3();
    let (lan_mac, wan_mac) = (lan.mac, if wan_is_l3 { [0; 6] } else { wan.mac });
    let mut flags = 0;
    if cfg.nat_pmp {
        // The mapping table learns every grant; the firewall needs its hole first.
        flags |= FLAG_PORT_CONTROL | FLAG_REPORT_GRANTS;
        for (on, flag) in [
            (to_daemon.hold_grants, FLAG_HOLD_GRANTS),
            (to_daemon.serve_nat_pmp, FLAG_SERVE_NATPMP),
            (to_daemon.serve_pcp, FLAG_SERVE_PCP),
        ] {
            if on {
                flags |= flag;
            }
        }
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
        lan_mask_be: mask_be(cfg.lan.prefix_len),
        rate_per_sec: cfg.rate_limit,
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

    /// `(fate, value)` for every counter.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        STAT_IDS
            .iter()
            .map(|id| fate(id))
            .zip(self.0.iter().copied())
    }
}

/// The fate a `STATS` slot counts, by its id (`every_stat_has_a_fate` checks all resolve).
fn fate(id: &str) -> Counter {
    Counter::ALL
        .iter()
        .copied()
        .find(|c| c.id() == id)
        .unwrap_or_else(|| panic!("STATS id {id} is not in stats::Counter"))
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (fate, value)) in self.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{value:>10}  {}", fate.label())?;
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

/// What one aging sweep of `CLIENTS` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Idle entries removed.
    pub removed: usize,
    /// Entries the kernel's LRU evicted since the last sweep (also added to
    /// `STATS[STAT_EVICTED]`).
    pub evicted: u64,
}

/// Per LAN address, what a sweep saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    /// `RATE.in_flight` read before walking `CLIENTS`.
    counted: Option<u64>,
    /// Entries found by the walk.
    present: u64,
    /// Idle entries the sweep removed.
    removed: u64,
    /// Idle entries found by the walk but gone when the sweep came to remove them.
    vanished: u64,
}

/// Removes `CLIENTS` entries whose last request or reply is older than `max_idle`
/// (boot-time clock on both sides), brings each address's entry count in `RATE` back to what
/// `CLIENTS` holds, and counts the entries the LRU evicted in `STATS` (`STAT_EVICTED`).
///
/// Evictions: an LRU insert says nothing about what it evicted, and the kernel's LRU does not
/// wait for the table to be full: when its global free list runs below a per-CPU refill
/// target (up to 128 nodes) it evicts that many inactive entries in one go, so a program
/// cannot tell from a live count either. The sweep can: an address's count in `RATE` (entries
/// created by the programs minus those the sweep removed), read before the walk, minus the
/// entries the walk finds, is what vanished without the sweep removing it. Read before the
/// walk, an entry counted there was already in the table, so the walk sees it unless it is
/// gone; entries created during the walk are at most found without being counted (an
/// eviction of the same address in the same sweep is then counted a sweep later or not at
/// all). A `RATE` entry itself forgotten by its LRU (more active addresses than
/// `RATE_MAX_ENTRIES`) restarts from the walk's count.
///
/// Writes to `RATE` replace whole values: a token a program took between this read and write
/// is given back (at most a few per sweep). An address's `RATE` entry with no `CLIENTS`
/// entries and a full bucket is removed (it would be recreated full anyway).
/// Bounded: one walk of each map, saturating arithmetic.
pub fn expire_clients(ebpf: &mut Ebpf, now: Duration, max_idle: Duration) -> anyhow::Result<Sweep> {
    let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    let max_idle_ns = u64::try_from(max_idle.as_nanos()).unwrap_or(u64::MAX);
    let mut seen: BTreeMap<u32, Seen> = BTreeMap::new();
    {
        let rate: HashMap<&MapData, RateKey, RateValue> = map(ebpf, "RATE")?
            .try_into()
            .context("RATE is not a hash of RateKey -> RateValue")?;
        for entry in rate.iter() {
            let (key, value) = entry.context("reading RATE")?;
            seen.entry(key.addr_be).or_default().counted = Some(value.in_flight);
        }
    }
    let mut clients: HashMap<&mut MapData, ClientKey, ClientValue> = map_mut(ebpf, "CLIENTS")?
        .try_into()
        .context("CLIENTS is not a hash of ClientKey -> ClientValue")?;
    // Collect first: deleting while walking the keys restarts the walk (which may then see
    // an entry twice: a set).
    let mut walked = HashSet::new();
    let mut stale = Vec::new();
    for entry in clients.iter() {
        let (key, value) = entry.context("reading CLIENTS")?;
        if !walked.insert(key) {
            continue;
        }
        seen.entry(key.addr_be).or_default().present += 1;
        if is_idle(value.last_seen_ns, now_ns, max_idle_ns) {
            stale.push(key);
        }
    }
    let mut removed = 0;
    for key in stale {
        let addr = seen.entry(key.addr_be).or_default();
        match clients.remove(&key) {
            Ok(()) => {
                removed += 1;
                addr.removed += 1;
            }
            // Evicted by the LRU meanwhile.
            Err(aya::maps::MapError::KeyNotFound) => addr.vanished += 1,
            Err(e) => return Err(e).context("removing an idle CLIENTS entry"),
        }
    }
    let mut rate: HashMap<&mut MapData, RateKey, RateValue> = map_mut(ebpf, "RATE")?
        .try_into()
        .context("RATE is not a hash of RateKey -> RateValue")?;
    let mut evicted = 0u64;
    for (&addr_be, addr) in &seen {
        let key = RateKey { addr_be };
        let current = match rate.get(&key, 0) {
            Ok(value) => Some(value),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => return Err(e).context("reading RATE"),
        };
        let (gone, in_flight) = reconcile(addr, current.map(|v| v.in_flight));
        evicted = evicted.saturating_add(gone);
        let result = match current {
            Some(value) if in_flight == 0 && is_idle(value.last_ns, now_ns, RATE_REFILL_NS) => {
                rate.remove(&key)
            }
            Some(value) if in_flight != value.in_flight => {
                rate.insert(key, RateValue { in_flight, ..value }, 0)
            }
            Some(_) => Ok(()),
            None if in_flight > 0 => rate.insert(
                key,
                RateValue {
                    in_flight,
                    ..RateValue::new(now_ns)
                },
                u64::from(BPF_NOEXIST),
            ),
            None => Ok(()),
        };
        match result {
            // Removed or created by the LRU / a program meanwhile: the next sweep sees it.
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).context("updating RATE"),
        }
    }
    if evicted > 0 {
        add_counter(map_mut(ebpf, "STATS")?, STAT_EVICTED, evicted)?;
    }
    Ok(Sweep { removed, evicted })
}

/// `(entries evicted, entry count to store)` for one address: what it was counted with
/// before the walk but the walk did not find, or found but could not remove, vanished
/// without the sweep; the count to store is the current one less those and the removed
/// ones (entries created since the read stay counted), but never less than what remains in
/// the table (increments lost to a race between CPUs, a forgotten `RATE` entry).
fn reconcile(seen: &Seen, current: Option<u64>) -> (u64, u64) {
    let counted = seen.counted.unwrap_or(0);
    let evicted = counted
        .saturating_sub(seen.present)
        .saturating_add(seen.vanished);
    let remaining = seen
        .present
        .saturating_sub(seen.removed)
        .saturating_sub(seen.vanished);
    let in_flight = current
        .unwrap_or(0)
        .saturating_sub(evicted)
        .saturating_sub(seen.removed)
        .max(remaining);
    (evicted, in_flight)
}

/// Adds `n` to counter `index` of `STATS` (CPU 0's slot), for a counter no program writes.
fn add_counter(map: &mut Map, index: u32, n: u64) -> anyhow::Result<()> {
    let mut array: PerCpuArray<&mut MapData, u64> = map
        .try_into()
        .context("STATS is not a per-CPU array of u64")?;
    let mut values: Vec<u64> = array
        .get(&index, 0)
        .with_context(|| format!("reading STATS[{index}]"))?
        .iter()
        .copied()
        .collect();
    if let Some(first) = values.first_mut() {
        *first = first.saturating_add(n);
    }
    let values = PerCpuValues::try_from(values).context("building per-CPU values")?;
    array
        .set(index, values, 0)
        .with_context(|| format!("writing STATS[{index}]"))
}

fn map<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a Map> {
    ebpf.map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
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

    fn seen(counted: Option<u64>, present: u64, removed: u64, vanished: u64) -> Seen {
        Seen {
            counted,
            present,
            removed,
            vanished,
        }
    }

    #[test]
    fn reconcile_counts_what_vanished() {
        // Nothing happened: nothing to write.
        assert_eq!(reconcile(&seen(Some(3), 3, 0, 0), Some(3)), (0, 3));
        // Two idle entries removed by the sweep.
        assert_eq!(reconcile(&seen(Some(3), 3, 2, 0), Some(3)), (0, 1));
        // Counted 5, walk found 2: 3 evicted; one created since the read stays counted.
        assert_eq!(reconcile(&seen(Some(5), 2, 0, 0), Some(6)), (3, 3));
        // Found by the walk, gone before removal: evicted.
        assert_eq!(reconcile(&seen(Some(2), 2, 1, 1), Some(2)), (1, 0));
        // Created during the walk (found, not yet counted at the read): no eviction.
        assert_eq!(reconcile(&seen(Some(1), 2, 0, 0), Some(2)), (0, 2));
        // An increment lost to a race: the table's contents win.
        assert_eq!(reconcile(&seen(Some(1), 3, 0, 0), Some(1)), (0, 3));
        // RATE entry forgotten by its LRU: restart from the table.
        assert_eq!(reconcile(&seen(None, 4, 1, 0), None), (0, 3));
        // RATE entry but nothing in the table (all evicted): count them, store 0.
        assert_eq!(reconcile(&seen(Some(64), 0, 0, 0), Some(64)), (64, 0));
        // Saturating everywhere.
        assert_eq!(
            reconcile(&seen(Some(u64::MAX), 0, 0, u64::MAX), Some(0)),
            (u64::MAX, 0)
        );
    }

    #[test]
    fn counters_display_every_label() {
        let mut counters = Counters::default();
        counters.0[portproxy_common::STAT_NOTIFY_IN as usize] = 3;
        let text = counters.to_string();
        assert_eq!(text.lines().count(), STAT_COUNT as usize);
        assert!(
            text.lines()
                .any(|l| l == "         3  ssdp notifies relayed to the LAN"),
            "{text}"
        );
    }

    #[test]
    fn every_stat_has_a_fate() {
        let fates: Vec<_> = STAT_IDS.iter().map(|id| fate(id)).collect();
        // ... and every fate only the programs count has its slot.
        for only_kernel in Counter::ALL.iter().filter(|c| !Counter::DAEMON.contains(c)) {
            assert!(
                fates.contains(only_kernel),
                "{} has no slot",
                only_kernel.id()
            );
        }
    }

    /// The sweep on real maps: `tc_lan_ingress` run (BPF_PROG_TEST_RUN) on requests from more
    /// addresses than a small `CLIENTS` holds; the sweep counts what the LRU evicted and
    /// brings the per-address counts back to the table. Needs root (CAP_BPF).
    #[test]
    fn sweep_counts_lru_evictions() {
        use aya::EbpfLoader;
        use aya::programs::{SchedClassifier, TestRun, TestRunOptions};

        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading eBPF programs needs root (CAP_BPF)");
            return;
        }
        const CAPACITY: u32 = 16;
        const CLIENTS_SENT: u8 = 100;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("CLIENTS", CAPACITY)
            .load(super::super::EBPF_OBJECT)
            .unwrap();
        let be = |a: [u8; 4]| u32::from_ne_bytes(a);
        let cfg = MapConfig {
            lan_addr_be: be([192, 168, 1, 1]),
            wan_addr_be: be([192, 0, 0, 2]),
            cgn_addr_be: be([192, 0, 0, 1]),
            lan_ifindex: 11,
            wan_ifindex: 12,
            port_control_port_be: 5351u16.to_be(),
            ssdp_port_be: 1900u16.to_be(),
            lan_mac: [2, 0, 0, 0, 0, 1],
            wan_mac: [2, 0, 0, 0, 1, 1],
            wan_is_l3: 1,
            flags: FLAG_PORT_CONTROL,
            _pad: [0; 2],
            // The clients below are 10.0.0.n: any source.
            lan_mask_be: 0,
            rate_per_sec: portproxy_common::RATE_PER_SEC as u32,
        };
        write_config(ebpf.map_mut("CONFIG").unwrap(), cfg).unwrap();
        let program: &mut SchedClassifier = ebpf
            .program_mut("tc_lan_ingress")
            .unwrap()
            .try_into()
            .unwrap();
        program.load().unwrap();
        // NAT-PMP public address request from 10.0.0.n:40000 (UDP checksum absent).
        let request = |n: u8| {
            let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, n, 8, 0];
            p.extend_from_slice(&[0x45, 0, 0, 30, 0, 0, 0, 0, 64, 17, 0, 0]);
            p.extend_from_slice(&[10, 0, 0, n, 192, 168, 1, 1]);
            p.extend_from_slice(&40000u16.to_be_bytes());
            p.extend_from_slice(&5351u16.to_be_bytes());
            p.extend_from_slice(&[0, 10, 0, 0, 0, 0]);
            p
        };
        for n in 1..=CLIENTS_SENT {
            let input = request(n);
            let mut out = vec![0u8; input.len() + 64];
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(&input),
                    data_out: Some(&mut out),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(result.return_value, 7, "request from 10.0.0.{n} redirected");
        }
        let present = {
            let clients: HashMap<&MapData, ClientKey, ClientValue> =
                ebpf.map("CLIENTS").unwrap().try_into().unwrap();
            clients.keys().filter_map(Result::ok).count() as u64
        };
        assert!(present <= u64::from(CAPACITY), "{present} entries");
        eprintln!("{CLIENTS_SENT} tuples into a CLIENTS of {CAPACITY}: {present} left");
        let sweep = expire_clients(
            &mut ebpf,
            crate::clock::boot_time(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let evicted = u64::from(CLIENTS_SENT) - present;
        assert_eq!(
            sweep,
            Sweep {
                removed: 0,
                evicted
            }
        );
        let counters = Counters::read(ebpf.map("STATS").unwrap()).unwrap();
        assert_eq!(counters.0[STAT_EVICTED as usize], evicted);
        assert_eq!(
            counters.0[portproxy_common::STAT_NATPMP_TO_CGN as usize],
            u64::from(CLIENTS_SENT)
        );
        // Every address's count now matches the table; a second sweep finds nothing new.
        let rate: HashMap<&MapData, RateKey, RateValue> =
            ebpf.map("RATE").unwrap().try_into().unwrap();
        let counted: u64 = rate
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.in_flight)
            .sum();
        assert_eq!(counted, present);
        let again = expire_clients(
            &mut ebpf,
            crate::clock::boot_time(),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(again, Sweep::default());
        // Everything idle: all removed, counts back to 0, the counter unchanged.
        let swept = expire_clients(&mut ebpf, crate::clock::boot_time(), Duration::ZERO).unwrap();
        assert_eq!(
            swept,
            Sweep {
                removed: present as usize,
                evicted: 0
            }
        );
        let counters = Counters::read(ebpf.map("STATS").unwrap()).unwrap();
        assert_eq!(counters.0[STAT_EVICTED as usize], evicted);
    }
}
