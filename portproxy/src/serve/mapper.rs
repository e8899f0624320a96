//! What every server on the LAN does with a request once its protocol is understood: map
//! or delete at the CGN as the requesting host (`upstream`), in the protocol the CGN speaks,
//! and keep the table (and so the firewall) in step with what the CGN holds.
//!
//! In double NAT the CGN never sees LAN addresses: a mapping is asked for as the router
//! itself (its WAN address and a local port, PCP without THIRD_PARTY), and the table
//! forwards that local port to the host (`effects::local_nat`). The local port is the
//! mapping's while it lasts; a new one is the external port asked for when that is free
//! (neither a socket of the router nor another mapping's), else the internal port, else
//! one spread over the range.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use log::debug;

use super::Identity;
use crate::config::Config;
use crate::effects::local_nat::{self, FIRST_LOCAL_PORT};
use crate::mapping::{self, Backing, Entry, Grant, Key, Mappings, Origin, Refused};
use crate::proto::Transport;
use crate::upstream::{self, Ask, Exchanges, Failure, Granted, Igd, Upstream, Via, other_port};

/// Spread ports tried for a local port when neither the asked-for nor the internal one is free.
const LOCAL_PORT_TRIES: u32 = 16;

pub struct Mapper {
    cfg: Arc<Config>,
    /// What requests are translated to; `None` when the CGN answered no probe.
    via: Option<Via>,
    /// The CGN's IGD, when `via` is UPnP and its description could be read.
    igd: Option<Arc<Igd>>,
    pub mappings: Arc<Mappings>,
    pub identity: Arc<Identity>,
    /// Shared with the keeper: one exchange at a time about a mapping.
    exchanges: Arc<Exchanges>,
    /// Double NAT: local ports chosen for requests still at the CGN, not yet in the table.
    choosing: Choosing,
}

/// Local ports held by requests in flight, by protocol.
type Choosing = Mutex<HashSet<(Transport, u16)>>;

/// A local port held for one request until it is in the table (or failed).
struct Chosen<'a> {
    port: u16,
    held: Option<(&'a Choosing, Transport)>,
}

impl Drop for Chosen<'_> {
    fn drop(&mut self) {
        if let Some((choosing, proto)) = self.held {
            choosing.lock().unwrap().remove(&(proto, self.port));
        }
    }
}

impl Mapper {
    pub fn new(
        cfg: Arc<Config>,
        via: Option<Via>,
        igd: Option<Arc<Igd>>,
        mappings: Arc<Mappings>,
        identity: Arc<Identity>,
        exchanges: Arc<Exchanges>,
    ) -> Mapper {
        Mapper {
            cfg,
            via,
            igd,
            mappings,
            identity,
            exchanges,
            choosing: Mutex::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// What mappings are made with at the CGN; `None` when it answered no probe.
    pub fn via(&self) -> Option<Via> {
        self.via
    }

    fn upstream(&self) -> Result<Upstream, Failure> {
        let via = self.via.ok_or(Failure::NetworkFailure)?;
        Ok(self.upstream_in(via))
    }

    /// The CGN, spoken to in `via`.
    fn upstream_in(&self, via: Via) -> Upstream {
        let sockets = self.exchanges.sockets.clone();
        Upstream::of(&self.cfg, via, self.igd.clone(), sockets)
    }

    /// The CGN's external address: known from a probe or a grant, else asked for.
    pub async fn public_address(&self) -> Result<Ipv4Addr, Failure> {
        if let Some(addr) = self.mappings.known_public_address().await {
            return Ok(addr);
        }
        let addr = self.upstream()?.public_address().await?;
        self.mappings.public_address(addr).await;
        Ok(addr)
    }

    /// Maps `key` at the CGN (`ask`: suggested port, lifetime, that port or nothing) and
    /// takes the grant into the table.
    pub async fn map(
        &self,
        key: Key,
        (suggested_port, lifetime, prefer_failure): (u16, u32, bool),
        origin: Origin,
        client: SocketAddrV4,
    ) -> Result<Granted, Failure> {
        let own = [self.cfg.lan.addr, self.cfg.wan.addr];
        if !mapping::is_lan_host(key.host, &self.cfg.lan, &own) {
            return Err(Failure::NotAuthorized);
        }
        let upstream = self.upstream()?;
        let _turn = self.exchanges.turn(key).await;
        let entry = self.mappings.get(&key).await;
        let local = match self.mappings.double_nat() {
            true => {
                let wanted = [suggested_port, key.internal_port];
                Some(self.local_port(&key, entry.as_ref(), wanted).await?)
            }
            false => None,
        };
        // A renewal goes with the nonce that made the mapping (it may come from a file
        // written by an earlier run, whose derived nonces differ).
        let nonce = self.nonce_for(&key, &origin, entry.map(|e| e.backing));
        let local_port = local.as_ref().map(|c| c.port);
        let ask = Ask {
            suggested_port,
            lifetime,
            prefer_failure,
            ..Ask::for_key(&key, local_port, self.cfg.wan.addr, nonce)
        };
        let mut granted = upstream.map(&ask).await?;
        if granted.external.ip().is_unspecified() {
            granted.external.set_ip(self.public_address().await?);
        }
        let backing = match upstream.via {
            Via::Pcp => Backing::Pcp { nonce: ask.nonce },
            Via::NatPmp => Backing::NatPmp,
            Via::Upnp => Backing::Upnp,
        };
        let grant = Grant {
            key,
            external: granted.external,
            lifetime: granted.lifetime,
            origin,
            backing,
            client,
            local_port,
        };
        if let Err(refused) = self.mappings.granted(grant).await {
            // Nothing may exist at the CGN that the table (and so the firewall) does not hold.
            let undo = Ask { lifetime: 0, ..ask };
            if let Err(e) = upstream.map(&undo).await {
                debug!(
                    "deleting {}:{} at the CGN again: {e}",
                    key.host, key.internal_port
                );
            }
            return Err(match refused {
                Refused::HostQuota => Failure::UserExQuota,
                Refused::TableFull | Refused::LifetimeOverflow => Failure::NoResources,
            });
        }
        Ok(granted)
    }

    /// Deletes `key` at the CGN and from the table. A PCP delete must carry the nonce that
    /// made the mapping (`nonce`); NAT-PMP has none to check.
    pub async fn delete(&self, key: Key, nonce: Option<[u8; 12]>) -> Result<(), Failure> {
        let _turn = self.exchanges.turn(key).await;
        let entry = self.mappings.get(&key).await;
        if let (Some(e), Some(nonce)) = (&entry, nonce)
            && !same_nonce(e, nonce)
        {
            return Err(Failure::NotAuthorized);
        }
        let upstream = self.upstream()?;
        let origin = entry.as_ref().map_or(Origin::NatPmp, |e| e.origin.clone());
        let nonce = self.nonce_for(&key, &origin, entry.as_ref().map(|e| e.backing));
        // UPnP deletes by external port: the entry's, if the table has one.
        let ask = match &entry {
            Some(entry) => Ask::for_entry(entry, self.cfg.wan.addr, 0, nonce),
            None => Ask::for_key(&key, None, self.cfg.wan.addr, nonce),
        };
        // The client wants it gone: the hole closes whatever the CGN says.
        let at_cgn = upstream.map(&ask).await.map(|_| ());
        self.mappings.deleted(key).await;
        at_cgn
    }

    /// Double NAT: the router's port for `key`: the one its mapping (`entry`) has, else the
    /// first free of `wanted` and a few spread ports, held until the request is done.
    async fn local_port(
        &self,
        key: &Key,
        entry: Option<&Entry>,
        wanted: [u16; 2],
    ) -> Result<Chosen<'_>, Failure> {
        if let Some(port) = entry.and_then(|e| e.local_port) {
            return Ok(Chosen { port, held: None });
        }
        let spread = (1..=LOCAL_PORT_TRIES).map(|n| other_port(key.host, key.internal_port, n));
        for port in wanted.into_iter().chain(spread) {
            if port < FIRST_LOCAL_PORT || !self.choosing.lock().unwrap().insert((key.proto, port)) {
                continue;
            }
            // Held first, then checked: a request that held it before is in the table by
            // the time it lets go.
            let chosen = Chosen {
                port,
                held: Some((&self.choosing, key.proto)),
            };
            if local_nat::port_in_use(key.proto, port, self.cfg.wan.addr)
                || self.mappings.by_local_port(key.proto, port).await.is_some()
            {
                continue;
            }
            return Ok(chosen);
        }
        debug!("no free local port for {key}");
        Err(Failure::NoResources)
    }

    /// Removes `entry` on a person's behalf (the API): deleted at the CGN with the protocol
    /// and nonce that made it there, whatever the CGN speaks best; out of the table and its
    /// hole closed whatever the CGN answers, as at its expiry. A mapping relayed to the CGN's
    /// own IGD is deleted there only when portproxy knows that IGD (it maps with UPnP).
    pub async fn remove(&self, entry: &Entry) -> Result<(), Failure> {
        let _turn = self.exchanges.turn(entry.key).await;
        let (via, nonce) = upstream::made_with(entry);
        let ask = Ask::for_entry(entry, self.cfg.wan.addr, 0, nonce);
        let at_cgn = self.upstream_in(via).map(&ask).await.map(drop);
        self.mappings.deleted(entry.key).await;
        at_cgn
    }

    /// Deletes every mapping of `host` (of `proto`, or of both).
    pub async fn delete_all(
        &self,
        host: Ipv4Addr,
        proto: Option<Transport>,
    ) -> Result<(), Failure> {
        let mut result = Ok(());
        for entry in self.mappings.of_host(host).await {
            if proto.is_none_or(|p| p == entry.key.proto) {
                result = result.and(self.delete(entry.key, None).await);
            }
        }
        result
    }

    /// The nonce the CGN knows the mapping by: the one that made it upstream, else the
    /// PCP client's own (a PCP proxy keeps it end to end), else one derived from the key.
    pub fn nonce_for(&self, key: &Key, origin: &Origin, backing: Option<Backing>) -> [u8; 12] {
        match (backing, origin) {
            (Some(Backing::Pcp { nonce }), _) => nonce,
            (_, Origin::PcpMap { nonce }) => *nonce,
            _ => self.identity.nonces.for_key(key),
        }
    }
}

/// Whether `nonce` is the one the PCP mapping `entry` was made with (RFC 6887 §11.3); a
/// mapping made with NAT-PMP or UPnP has none to compare.
pub fn same_nonce(entry: &Entry, nonce: [u8; 12]) -> bool {
    match entry.origin {
        Origin::PcpMap { nonce: made_with } => made_with == nonce,
        _ => true,
    }
}
