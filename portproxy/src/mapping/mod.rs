//! The mapping table: one entry per mapping the CGN granted to a LAN host,
//! learned from the grants portproxy relays, and the router's own state that follows
//! it (`effects`): the firewall holes and, in double NAT, the local forwards.
//!
//! `table` is the pure bookkeeping (quotas, expiry, deletes) over a clock given
//! by the caller; [`Mappings`] is the daemon's single instance of it, shared by
//! the relays, the expiry tick and the control socket, and keeps the firewall in
//! step: a hole opens before the grant is passed on to the client, and closes on
//! a delete or, by its own timeout, at expiry.

mod persist;
mod table;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

pub use persist::{read_json, write_json};
pub use table::{Learned, Limits, Refused, Table};

use crate::clock::boot_time as now;
use crate::config::Side;
use crate::effects::firewall::Firewall;
use crate::effects::local_nat::LocalNat;
use crate::proto::Transport;
use crate::stats::{Counter, Stats};

/// What identifies a mapping on the LAN side, and so its firewall hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub host: Ipv4Addr,
    pub proto: Transport,
    pub internal_port: u16,
}

/// `192.168.1.2:8080/tcp`, as the logs and `portproxy forward` name a mapping.
impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host,
            self.internal_port,
            self.proto.name()
        )
    }
}

/// `HOST:PORT/PROTO`, the form `Display` writes; the port is not 0.
impl std::str::FromStr for Key {
    type Err = String;

    fn from_str(s: &str) -> Result<Key, String> {
        let bad = || format!("expected HOST:PORT/PROTO such as 192.168.1.2:8080/tcp, got {s:?}");
        let (addr, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .parse()
            .map_err(|_| format!("{host:?} is not an IPv4 address (in {s:?})"))?;
        let internal_port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(format!(
                    "expected a port number 1-65535, got {port:?} (in {s:?})"
                ));
            }
        };
        let proto = Transport::from_name(proto)
            .ok_or_else(|| format!("expected the protocol tcp or udp, got {proto:?} (in {s:?})"))?;
        Ok(Key {
            host,
            proto,
            internal_port,
        })
    }
}

/// How a mapping was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    NatPmp,
    /// PCP MAP, with the nonce the CGN ties renewals and deletes to.
    PcpMap {
        nonce: [u8; 12],
    },
    /// UPnP AddPortMapping, or AddAnyPortMapping when `any`, with its description, and the
    /// lease portproxy's IGD keeps at the CGN (`None`: the CGN's grant is all there is, as
    /// for a relayed one).
    Upnp {
        any: bool,
        description: String,
        lease: Option<Lease>,
    },
    /// A manual forward (`forwards`), with its description.
    Manual {
        description: String,
    },
}

impl Origin {
    /// How `portproxy mappings` and the mappings file name it.
    pub fn name(&self) -> &'static str {
        match self {
            Origin::NatPmp => "nat-pmp",
            Origin::PcpMap { .. } => "pcp-map",
            Origin::Upnp { any: false, .. } => "upnp-add",
            Origin::Upnp { any: true, .. } => "upnp-add-any",
            Origin::Manual { .. } => "manual",
        }
    }

    /// PCP's nonce, in hex.
    pub fn nonce_hex(&self) -> Option<String> {
        match self {
            Origin::PcpMap { nonce } => Some(hex(nonce)),
            _ => None,
        }
    }

    /// UPnP's NewPortMappingDescription, or a manual forward's.
    pub fn description(&self) -> Option<&str> {
        match self {
            Origin::Upnp { description, .. } | Origin::Manual { description } => Some(description),
            Origin::NatPmp | Origin::PcpMap { .. } => None,
        }
    }
}

/// A nonce in hex, as people and the mappings file see it.
pub fn hex(bytes: &[u8; 12]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a control point asked a mapping made through portproxy's IGD to last: the IGD
/// renews it at the CGN, which grants less at a time, until the lease ends. Kept with the
/// mapping (and in the mappings file), so it outlives a rebuild and a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease asked for, in seconds (0: until deleted, IGD:1's permanent lease).
    pub secs: u32,
    /// When it ends, since boot; `None`: until deleted.
    pub ends: Option<Duration>,
}

impl Lease {
    /// A lease of `secs` (0: until deleted) from `now`; `None` if its end does not fit
    /// the clock.
    pub fn of(secs: u32, now: Duration) -> Option<Lease> {
        let ends = match secs {
            0 => None,
            secs => Some(now.checked_add(Duration::from_secs(u64::from(secs)))?),
        };
        Some(Lease { secs, ends })
    }
}

/// What the CGN holds for a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// The client's own request, relayed: the CGN granted what the client asked.
    Relayed,
    /// portproxy answered the client and asked the CGN with PCP MAP, with this nonce.
    Pcp { nonce: [u8; 12] },
    /// portproxy answered the client and asked the CGN with NAT-PMP.
    NatPmp,
    /// portproxy answered the client and asked the CGN's IGD (AddPortMapping).
    Upnp,
}

impl Backing {
    pub fn name(self) -> &'static str {
        match self {
            Backing::Relayed => "relayed",
            Backing::Pcp { .. } => "pcp-map",
            Backing::NatPmp => "nat-pmp",
            Backing::Upnp => "upnp",
        }
    }
}

/// A grant from the CGN, matched to the request in flight that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: Key,
    /// External address (unspecified when the protocol does not say) and port.
    pub external: SocketAddrV4,
    /// Granted lifetime in seconds; 0 is a permanent UPnP lease (NAT-PMP and
    /// PCP deletes, their lifetime 0, never become grants).
    pub lifetime: u32,
    pub origin: Origin,
    pub backing: Backing,
    /// The client tuple whose request the CGN answered.
    pub client: SocketAddrV4,
    /// Double NAT: the port of the router's WAN address that the CGN maps to and the router
    /// forwards to the host (`effects::local_nat`); `None` when the CGN maps to the host.
    pub local_port: Option<u16>,
}

/// One mapping. Times are since boot (`CLOCK_BOOTTIME`, which keeps counting
/// through suspend, as lifetimes do at the CGN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub external: SocketAddrV4,
    /// The lifetime last granted, in seconds (0: until deleted).
    pub lifetime: u32,
    /// `None`: until deleted (a permanent UPnP lease).
    pub expires: Option<Duration>,
    pub origin: Origin,
    pub backing: Backing,
    pub client: SocketAddrV4,
    /// As in `Grant`.
    pub local_port: Option<u16>,
    pub first_seen: Duration,
    pub last_seen: Duration,
}

/// One mapping as `portproxy mappings` shows it: times relative to the moment asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub host: Ipv4Addr,
    pub internal_port: u16,
    pub protocol: String,
    pub external_address: Ipv4Addr,
    pub external_port: u16,
    /// `None`: until deleted.
    pub expires_in_secs: Option<u64>,
    /// `nat-pmp`, `pcp-map`, `upnp-add`, `upnp-add-any` or `manual`.
    pub origin: String,
    /// PCP's nonce, in hex.
    pub nonce: Option<String>,
    /// UPnP's NewPortMappingDescription, or a manual forward's description.
    pub description: Option<String>,
    /// What the CGN holds: `relayed` (the client's own request), or the request portproxy
    /// made for it: `pcp-map`, `nat-pmp`.
    #[serde(default)]
    pub upstream: String,
    pub client: SocketAddrV4,
    /// Double NAT: the port of the router's WAN address forwarded to the host.
    #[serde(default)]
    pub local_port: Option<u16>,
    pub first_seen_secs_ago: u64,
    pub last_seen_secs_ago: u64,
}

impl View {
    fn of(e: &Entry, now: Duration) -> View {
        let ago = |t: Duration| now.saturating_sub(t).as_secs();
        View {
            host: e.key.host,
            internal_port: e.key.internal_port,
            protocol: e.key.proto.name().to_string(),
            external_address: *e.external.ip(),
            external_port: e.external.port(),
            expires_in_secs: e.expires.map(|t| t.saturating_sub(now).as_secs()),
            origin: e.origin.name().to_string(),
            nonce: e.origin.nonce_hex(),
            description: e.origin.description().map(str::to_string),
            upstream: e.backing.name().to_string(),
            client: e.client,
            local_port: e.local_port,
            first_seen_secs_ago: ago(e.first_seen),
            last_seen_secs_ago: ago(e.last_seen),
        }
    }
}

/// Whether `host` may have a mapping (and a hole) at all: a host of the LAN,
/// neither its network nor broadcast address, never one of the CPE's own addresses.
pub fn is_lan_host(host: Ipv4Addr, lan: &Side, own: &[Ipv4Addr]) -> bool {
    let prefix = u32::from(lan.prefix_len.min(32));
    let host_bits = u32::MAX.checked_shr(prefix).unwrap_or(0);
    let edge = prefix < 31
        && (u32::from(host) & host_bits == 0 || u32::from(host) & host_bits == host_bits);
    lan.contains(host) && !edge && !own.contains(&host)
}

struct State {
    table: Table,
    firewall: Option<Firewall>,
    /// Double NAT: the local halves of the mappings.
    local_nat: Option<LocalNat>,
    /// The CGN's external address, from its NAT-PMP public address answers or
    /// PCP grants (NAT-PMP map responses do not carry it).
    public_addr: Option<Ipv4Addr>,
}

/// What the table says that a UPnP subscriber is told of (the IGD's evented variables):
/// the CGN's external address and how many mappings there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub public_addr: Option<Ipv4Addr>,
    pub len: usize,
}

/// The daemon's mapping table and its firewall holes.
pub struct Mappings {
    /// One lock over the table and the firewall, so that the holes change in
    /// the same order as the table.
    state: Mutex<State>,
    /// The table's length, for the status file (read without the lock).
    held: AtomicUsize,
    /// What happened since the table was last saved (`persist`): a mapping added, deleted,
    /// expired or moved; only renewed.
    changed: AtomicBool,
    renewed: AtomicBool,
    /// Changes of `Observed` (see `watch`).
    observed: watch::Sender<Observed>,
    /// Whether `State::local_nat` is there (read without the lock; fixed at start).
    double_nat: bool,
    stats: Arc<Stats>,
}

impl Mappings {
    pub fn new(
        limits: Limits,
        firewall: Option<Firewall>,
        local_nat: Option<LocalNat>,
        stats: Arc<Stats>,
    ) -> Arc<Mappings> {
        Arc::new(Mappings {
            double_nat: local_nat.is_some(),
            state: Mutex::new(State {
                table: Table::new(limits),
                firewall,
                local_nat,
                public_addr: None,
            }),
            held: AtomicUsize::new(0),
            changed: AtomicBool::new(false),
            renewed: AtomicBool::new(false),
            observed: watch::Sender::new(Observed::default()),
            stats,
        })
    }

    /// The external address and the table's length, now and whenever they change.
    pub fn watch(&self) -> watch::Receiver<Observed> {
        self.observed.subscribe()
    }

    /// Tells the watchers what changed (nothing when nothing did); with the lock held, so
    /// changes are seen in their order.
    fn publish(&self, state: &State) {
        let now = Observed {
            public_addr: state.public_addr,
            len: state.table.len(),
        };
        self.observed.send_if_modified(|seen| {
            let changed = *seen != now;
            *seen = now;
            changed
        });
    }

    /// Notes the CGN's external address.
    pub async fn public_address(&self, addr: Ipv4Addr) {
        let mut state = self.state.lock().await;
        state.public_addr = Some(addr);
        self.publish(&state);
    }

    /// The CGN's external address, if known.
    pub async fn known_public_address(&self) -> Option<Ipv4Addr> {
        self.state.lock().await.public_addr
    }

    /// The mapping `key`, if the table has it.
    pub async fn get(&self, key: &Key) -> Option<Entry> {
        self.state.lock().await.table.get(key).cloned()
    }

    /// Whether the router translates the LAN itself, so every mapping has a local half.
    pub fn double_nat(&self) -> bool {
        self.double_nat
    }

    /// The mapping forwarded from the router's `proto` port `port` (double NAT), if any.
    pub async fn by_local_port(&self, proto: Transport, port: u16) -> Option<Entry> {
        let state = self.state.lock().await;
        state
            .table
            .entries()
            .find(|e| e.key.proto == proto && e.local_port == Some(port))
            .cloned()
    }

    /// The mapping of external port `port` for `proto`, if the table has it.
    pub async fn by_external(&self, proto: Transport, port: u16) -> Option<Entry> {
        let state = self.state.lock().await;
        state.table.by_external(proto, port).cloned()
    }

    /// The `index`th mapping, in the table's order (UPnP's GetGenericPortMappingEntry).
    pub async fn nth(&self, index: usize) -> Option<Entry> {
        self.state.lock().await.table.entries().nth(index).cloned()
    }

    /// Every mapping.
    pub async fn entries(&self) -> Vec<Entry> {
        self.state.lock().await.table.entries().cloned().collect()
    }

    /// Every mapping of `host`.
    pub async fn of_host(&self, host: Ipv4Addr) -> Vec<Entry> {
        let state = self.state.lock().await;
        state
            .table
            .entries()
            .filter(|e| e.key.host == host)
            .cloned()
            .collect()
    }

    /// Takes in a grant and opens its hole (and its local forward in double NAT); returns
    /// when they are open (or the grant was refused), so the caller may then pass the
    /// grant on.
    pub async fn granted(&self, mut grant: Grant) -> Result<(), Refused> {
        let now = now();
        let mut state = self.state.lock().await;
        // Double NAT: the local port the mapping had, if a racing request gave it another.
        let forwarded = state.table.get(&grant.key).and_then(|e| e.local_port);
        match grant.external.ip() {
            ip if ip.is_unspecified() => {
                if let Some(public) = state.public_addr {
                    grant.external.set_ip(public);
                }
            }
            ip => state.public_addr = Some(*ip),
        }
        let learned = match state.table.grant(grant.clone(), now) {
            Ok(learned) => learned,
            Err(refused) => {
                // The grant still said the external address.
                self.publish(&state);
                self.stats.add(match refused {
                    Refused::HostQuota => Counter::MappingRefusedQuota,
                    Refused::TableFull => Counter::MappingRefusedFull,
                    Refused::LifetimeOverflow => Counter::MappingRefusedLifetime,
                });
                warn!(
                    "mapping {} granted by the CGN not taken (no firewall hole): {refused:?}",
                    grant.key,
                );
                return Err(refused);
            }
        };
        self.held.store(state.table.len(), Ordering::Relaxed);
        self.publish(&state);
        let entry = learned.entry();
        let lifetime = match grant.lifetime {
            0 => "until deleted".to_string(),
            secs => format!("for {secs}s"),
        };
        match &learned {
            Learned::Renewed(e) if e.external == grant.external => {
                self.renewed.store(true, Ordering::Relaxed);
            }
            _ => self.changed.store(true, Ordering::Relaxed),
        }
        match &learned {
            Learned::Added(_) => {
                self.stats.add(Counter::MappingsAdded);
                info!("mapping {} <- {} {lifetime}", entry.key, entry.external);
            }
            Learned::Renewed(_) => {
                self.stats.add(Counter::MappingsRenewed);
                debug!("mapping {} renewed {lifetime}", entry.key);
            }
        }
        let remaining = entry.expires.map(|t| t.saturating_sub(now));
        if let Some(local_nat) = &state.local_nat
            && let Some(old) = forwarded.filter(|&old| Some(old) != entry.local_port)
            && let Err(e) = local_nat.unforward(old, &entry.key).await
        {
            self.stats.add(Counter::FirewallErrors);
            warn!("{e:#}");
        }
        if let (Some(local_nat), Some(port)) = (&state.local_nat, entry.local_port) {
            if let Err(e) = local_nat.forward(port, &entry.key, remaining).await {
                self.stats.add(Counter::FirewallErrors);
                warn!("{e:#}");
            }
        }
        if let Some(firewall) = &state.firewall {
            if let Err(e) = firewall.open(&entry.key, remaining).await {
                self.stats.add(Counter::FirewallErrors);
                warn!("{e:#}");
            }
        }
        Ok(())
    }

    /// A delete the CGN confirmed: `internal_port` 0 deletes all of the host's
    /// mappings of that protocol (NAT-PMP).
    pub async fn deleted(&self, key: Key) {
        let mut state = self.state.lock().await;
        let gone = if key.internal_port == 0 {
            state.table.remove_all(key.host, key.proto)
        } else {
            state.table.remove(&key).into_iter().collect()
        };
        self.closed(&state, gone).await;
    }

    /// A UPnP DeletePortMapping the CGN confirmed (it names the external port).
    pub async fn deleted_external(&self, proto: Transport, external_port: u16) {
        let mut state = self.state.lock().await;
        let gone = state.table.remove_external(proto, external_port);
        self.closed(&state, gone.into_iter().collect()).await;
    }

    /// Counts and logs deleted entries and closes their holes and local forwards.
    async fn closed(&self, state: &State, gone: Vec<Entry>) {
        self.held.store(state.table.len(), Ordering::Relaxed);
        self.publish(state);
        if !gone.is_empty() {
            self.changed.store(true, Ordering::Relaxed);
        }
        for entry in &gone {
            self.stats.add(Counter::MappingsDeleted);
            info!("mapping {} deleted", entry.key);
            if let Some(firewall) = &state.firewall {
                if let Err(e) = firewall.close(&entry.key).await {
                    self.stats.add(Counter::FirewallErrors);
                    warn!("{e:#}");
                }
            }
            if let (Some(local_nat), Some(port)) = (&state.local_nat, entry.local_port) {
                if let Err(e) = local_nat.unforward(port, &entry.key).await {
                    self.stats.add(Counter::FirewallErrors);
                    warn!("{e:#}");
                }
            }
        }
    }

    /// Drops the mappings whose lifetime ran out. Their holes and local forwards have
    /// closed by their own timeouts already.
    pub async fn expire(&self) {
        let mut state = self.state.lock().await;
        let expired = state.table.expire(now());
        self.held.store(state.table.len(), Ordering::Relaxed);
        self.publish(&state);
        if !expired.is_empty() {
            self.changed.store(true, Ordering::Relaxed);
        }
        for entry in expired {
            self.stats.add(Counter::MappingsExpired);
            info!("mapping {} expired", entry.key);
        }
    }

    /// Puts back the mappings saved in `path` whose host `allowed` takes (holes included);
    /// how many. The keeper then asks the CGN for them again.
    pub async fn restore(&self, path: &Path, allowed: impl Fn(Ipv4Addr) -> bool) -> usize {
        let limit = self.state.lock().await.table.limits().total;
        let grants = match persist::load(path, limit, now()) {
            Ok(grants) => grants,
            Err(e) => {
                warn!("not restoring the mappings: {e:#}");
                return 0;
            }
        };
        // A mapping made with double NAT (a local half) cannot be kept without, nor one made
        // for the host itself with: the CGN maps to the wrong address. Its client asks again.
        let (fits, other): (Vec<Grant>, Vec<Grant>) = grants
            .into_iter()
            .partition(|g| g.local_port.is_some() == self.double_nat);
        if !other.is_empty() {
            warn!(
                "not restoring {} mappings made {} double NAT",
                other.len(),
                if self.double_nat { "without" } else { "with" }
            );
        }
        let mut restored = 0;
        for grant in fits.into_iter().filter(|g| allowed(g.key.host)) {
            if self.granted(grant).await.is_ok() {
                restored += 1;
            }
        }
        // Restoring is no change to write back.
        self.changed.store(false, Ordering::Relaxed);
        self.renewed.store(false, Ordering::Relaxed);
        if restored > 0 {
            info!("restored {restored} mappings from {}", path.display());
        }
        restored
    }

    /// Writes the table to `path` if it changed and the last write was `since` ago or more
    /// (see `persist`), or always with `force` (at exit).
    pub async fn save(&self, path: &Path, since: Duration, force: bool) -> bool {
        let due = force
            || (self.changed.load(Ordering::Relaxed) && since >= persist::SAVE_CHANGED)
            || (self.renewed.load(Ordering::Relaxed) && since >= persist::SAVE_RENEWED);
        if !due {
            return false;
        }
        self.changed.store(false, Ordering::Relaxed);
        self.renewed.store(false, Ordering::Relaxed);
        // Written from the table itself, a mapping at a time: no copy of it in memory.
        let state = self.state.lock().await;
        if let Err(e) = persist::save(path, state.table.entries(), now()) {
            self.stats.add(Counter::SaveErrors);
            warn!("saving the mappings: {e:#}");
        }
        true
    }

    /// Every mapping, as shown to people.
    pub async fn list(&self) -> Vec<View> {
        let now = now();
        let state = self.state.lock().await;
        state.table.entries().map(|e| View::of(e, now)).collect()
    }

    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether grants open firewall holes (so they must be learned before delivery).
    pub async fn has_firewall(&self) -> bool {
        self.state.lock().await.firewall.is_some()
    }

    /// Removes the firewall and local NAT tables, closing every hole and forward (at exit).
    pub async fn close_firewall(&self) {
        let mut state = self.state.lock().await;
        if let Some(firewall) = state.firewall.take() {
            firewall.remove().await;
        }
        if let Some(local_nat) = state.local_nat.take() {
            local_nat.remove().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_hosts_only_never_the_cpe() {
        let lan = Side {
            iface: "br-lan".into(),
            index: 1,
            addr: Ipv4Addr::new(192, 168, 1, 1),
            prefix_len: 24,
        };
        let own = [Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(192, 0, 0, 2)];
        assert!(is_lan_host(Ipv4Addr::new(192, 168, 1, 2), &lan, &own));
        for not in [
            Ipv4Addr::new(192, 168, 1, 1),
            Ipv4Addr::new(192, 168, 1, 0),
            Ipv4Addr::new(192, 168, 1, 255),
            Ipv4Addr::new(192, 168, 2, 2),
            Ipv4Addr::new(192, 0, 0, 2),
        ] {
            assert!(!is_lan_host(not, &lan, &own), "{not}");
        }
    }

    #[tokio::test]
    async fn mappings_come_back_only_with_the_nat_they_were_made_with() {
        let path =
            std::env::temp_dir().join(format!("portproxy-restore-nat-{}.json", std::process::id()));
        let host = Ipv4Addr::new(192, 168, 1, 2);
        let entry = |internal_port, local_port| Entry {
            key: Key {
                host,
                proto: Transport::Tcp,
                internal_port,
            },
            external: SocketAddrV4::new(Ipv4Addr::new(203, 0, 114, 1), internal_port),
            lifetime: 600,
            expires: Some(now() + Duration::from_secs(600)),
            origin: Origin::NatPmp,
            backing: Backing::NatPmp,
            client: SocketAddrV4::new(host, 40000),
            local_port,
            first_seen: now(),
            last_seen: now(),
        };
        let saved = [entry(8080, None), entry(8081, Some(9081))];
        persist::save(&path, saved.iter(), now()).unwrap();
        let limits = Limits {
            total: 8,
            per_host: 8,
        };
        let mappings = Mappings::new(limits, None, None, Arc::default());
        assert_eq!(mappings.restore(&path, |_| true).await, 1);
        assert_eq!(mappings.entries().await[0].key.internal_port, 8080);
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn watchers_see_the_address_and_the_count_change_and_nothing_else() {
        let mappings = Mappings::new(
            Limits {
                total: 8,
                per_host: 8,
            },
            None,
            None,
            Arc::default(),
        );
        let mut watch = mappings.watch();
        let public = Ipv4Addr::new(203, 0, 113, 1);
        mappings.public_address(public).await;
        assert!(watch.has_changed().unwrap());
        assert_eq!(
            *watch.borrow_and_update(),
            Observed {
                public_addr: Some(public),
                len: 0
            }
        );
        // The same address again is no change.
        mappings.public_address(public).await;
        assert!(!watch.has_changed().unwrap());
        let host = Ipv4Addr::new(192, 168, 1, 2);
        let key = Key {
            host,
            proto: Transport::Tcp,
            internal_port: 8080,
        };
        let grant = Grant {
            key,
            external: SocketAddrV4::new(public, 9080),
            lifetime: 600,
            origin: Origin::NatPmp,
            backing: Backing::Relayed,
            client: SocketAddrV4::new(host, 40000),
            local_port: None,
        };
        mappings.granted(grant.clone()).await.unwrap();
        assert_eq!(watch.borrow_and_update().len, 1);
        // A renewal changes neither.
        mappings.granted(grant).await.unwrap();
        assert!(!watch.has_changed().unwrap());
        mappings.deleted(key).await;
        assert_eq!(watch.borrow_and_update().len, 0);
    }
}
