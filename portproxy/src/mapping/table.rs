//! The table itself: pure bookkeeping over a clock passed in by the caller
//! (`now`, time since boot), so that it can be tested with a fake clock and
//! knows nothing about sockets or the firewall.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use super::{Entry, Grant, Key};
use crate::proto::Transport;

/// How many mappings the table holds: in total and per LAN host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    pub per_host: usize,
}

/// Why a grant was not taken into the table (and so gets no firewall hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The host already holds `Limits::per_host` mappings.
    HostQuota,
    /// The table holds `Limits::total` mappings.
    TableFull,
    /// The lifetime does not fit the clock (a malicious or broken server).
    LifetimeOverflow,
}

/// What a grant did to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// A mapping the table did not have.
    Added(Entry),
    /// A mapping it had, with a new expiry (and perhaps a new external port).
    Renewed(Entry),
}

impl Learned {
    pub fn entry(&self) -> &Entry {
        match self {
            Learned::Added(e) | Learned::Renewed(e) => e,
        }
    }
}

#[derive(Debug)]
pub struct Table {
    entries: BTreeMap<Key, Entry>,
    per_host: HashMap<Ipv4Addr, usize>,
    limits: Limits,
}

impl Table {
    pub fn new(limits: Limits) -> Table {
        Table {
            entries: BTreeMap::new(),
            per_host: HashMap::new(),
            limits,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes in a grant the CGN made at `now`. A grant for a mapping the table
    /// has renews it; a new one counts against the quotas.
    pub fn grant(&mut self, grant: Grant, now: Duration) -> Result<Learned, Refused> {
        let expires = match grant.lifetime {
            0 => None,
            secs => Some(
                now.checked_add(Duration::from_secs(u64::from(secs)))
                    .ok_or(Refused::LifetimeOverflow)?,
            ),
        };
        if let Some(entry) = self.entries.get_mut(&grant.key) {
            entry.external = grant.external;
            entry.lifetime = grant.lifetime;
            entry.expires = expires;
            entry.origin = grant.origin;
            entry.backing = grant.backing;
            entry.client = grant.client;
            entry.local_port = grant.local_port;
            entry.last_seen = now;
            return Ok(Learned::Renewed(entry.clone()));
        }
        let held = self.per_host.get(&grant.key.host).copied().unwrap_or(0);
        if held >= self.limits.per_host {
            return Err(Refused::HostQuota);
        }
        if self.entries.len() >= self.limits.total {
            return Err(Refused::TableFull);
        }
        let entry = Entry {
            key: grant.key,
            external: grant.external,
            lifetime: grant.lifetime,
            expires,
            origin: grant.origin,
            backing: grant.backing,
            client: grant.client,
            local_port: grant.local_port,
            first_seen: now,
            last_seen: now,
        };
        self.entries.insert(grant.key, entry.clone());
        // `held` is below `per_host`, a usize, so this cannot overflow.
        self.per_host.insert(grant.key.host, held + 1);
        Ok(Learned::Added(entry))
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Removes one mapping (a delete the CGN confirmed).
    pub fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.forget_one(entry.key.host);
        Some(entry)
    }

    /// Removes every mapping of `host` for `proto` (NAT-PMP: internal port 0,
    /// lifetime 0 deletes all of a client's mappings of that protocol).
    pub fn remove_all(&mut self, host: Ipv4Addr, proto: Transport) -> Vec<Entry> {
        let keys: Vec<Key> = self
            .entries
            .keys()
            .filter(|k| k.host == host && k.proto == proto)
            .copied()
            .collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// The mapping of external port `port` for `proto`, if any (UPnP names the external
    /// side).
    pub fn by_external(&self, proto: Transport, port: u16) -> Option<&Entry> {
        self.entries
            .values()
            .find(|e| e.key.proto == proto && e.external.port() == port)
    }

    /// Removes the mapping of external port `port` for `proto`, if any.
    pub fn remove_external(&mut self, proto: Transport, port: u16) -> Option<Entry> {
        let key = self.by_external(proto, port)?.key;
        self.remove(&key)
    }

    /// Removes and returns the mappings whose lifetime has run out by `now`.
    pub fn expire(&mut self, now: Duration) -> Vec<Entry> {
        let keys: Vec<Key> = self
            .entries
            .values()
            .filter(|e| e.expires.is_some_and(|t| t <= now))
            .map(|e| e.key)
            .collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Every mapping, ordered by host, protocol and internal port.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + Clone {
        self.entries.values()
    }

    fn forget_one(&mut self, host: Ipv4Addr) {
        if let Some(n) = self.per_host.get_mut(&host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_host.remove(&host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::mapping::{Backing, Origin};

    const LAN1: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
    const LAN2: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn grant(host: Ipv4Addr, internal: u16, external: u16, lifetime: u32) -> Grant {
        Grant {
            key: Key {
                host,
                proto: Transport::Tcp,
                internal_port: internal,
            },
            external: SocketAddrV4::new(PUBLIC, external),
            lifetime,
            origin: Origin::NatPmp,
            backing: Backing::Relayed,
            client: SocketAddrV4::new(host, 40000),
            local_port: None,
        }
    }

    fn table(total: usize, per_host: usize) -> Table {
        Table::new(Limits { total, per_host })
    }

    #[test]
    fn a_grant_expires_at_its_lifetime_and_not_before() {
        let mut t = table(10, 10);
        let learned = t.grant(grant(LAN1, 8080, 9080, 60), secs(100)).unwrap();
        assert!(matches!(learned, Learned::Added(_)));
        assert_eq!(learned.entry().expires, Some(secs(160)));
        assert!(t.expire(secs(159)).is_empty());
        assert_eq!(t.len(), 1);
        let gone = t.expire(secs(160));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key.internal_port, 8080);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_renewal_moves_the_expiry_and_keeps_first_seen() {
        let mut t = table(10, 1);
        t.grant(grant(LAN1, 8080, 9080, 60), secs(100)).unwrap();
        // Renewing at the host's quota is no new mapping, so it is not refused.
        let renewed = t.grant(grant(LAN1, 8080, 9081, 60), secs(130)).unwrap();
        let Learned::Renewed(e) = renewed else {
            panic!("expected a renewal, got {renewed:?}");
        };
        assert_eq!(
            (e.first_seen, e.last_seen, e.expires, e.external.port()),
            (secs(100), secs(130), Some(secs(190)), 9081)
        );
        assert!(t.expire(secs(160)).is_empty());
    }

    #[test]
    fn quotas_per_host_and_in_total() {
        let mut t = table(3, 2);
        t.grant(grant(LAN1, 1, 1, 60), secs(0)).unwrap();
        t.grant(grant(LAN1, 2, 2, 60), secs(0)).unwrap();
        assert_eq!(
            t.grant(grant(LAN1, 3, 3, 60), secs(0)),
            Err(Refused::HostQuota)
        );
        t.grant(grant(LAN2, 1, 4, 60), secs(0)).unwrap();
        assert_eq!(
            t.grant(grant(LAN2, 2, 5, 60), secs(0)),
            Err(Refused::TableFull)
        );
        // A delete gives the host its slot back.
        let key = grant(LAN1, 1, 1, 60).key;
        assert!(t.remove(&key).is_some());
        assert!(t.remove(&key).is_none());
        t.grant(grant(LAN1, 3, 3, 60), secs(0)).unwrap();
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn deletes_by_host_and_protocol_and_by_external_port() {
        let mut t = table(10, 10);
        t.grant(grant(LAN1, 1, 11, 60), secs(0)).unwrap();
        t.grant(grant(LAN1, 2, 12, 60), secs(0)).unwrap();
        let mut udp = grant(LAN1, 3, 13, 60);
        udp.key.proto = Transport::Udp;
        t.grant(udp, secs(0)).unwrap();
        t.grant(grant(LAN2, 1, 14, 60), secs(0)).unwrap();
        assert_eq!(t.remove_all(LAN1, Transport::Tcp).len(), 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove_external(Transport::Tcp, 13), None);
        assert_eq!(
            t.remove_external(Transport::Udp, 13)
                .map(|e| e.key.internal_port),
            Some(3)
        );
        assert_eq!(t.entries().count(), 1);
    }

    #[test]
    fn lifetime_zero_is_permanent() {
        let mut t = table(10, 10);
        let learned = t.grant(grant(LAN1, 1, 1, 0), secs(5)).unwrap();
        assert_eq!(learned.entry().expires, None);
        assert!(t.expire(Duration::from_secs(u64::MAX)).is_empty());
    }

    #[test]
    fn a_lifetime_past_the_clock_is_refused_not_a_panic() {
        let mut t = table(10, 10);
        assert_eq!(
            t.grant(grant(LAN1, 1, 1, u32::MAX), Duration::MAX),
            Err(Refused::LifetimeOverflow)
        );
        assert_eq!(t.len(), 0);
    }
}
