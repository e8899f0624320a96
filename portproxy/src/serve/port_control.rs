//! NAT-PMP (RFC 6886) and PCP (RFC 6887, as the proxy of RFC 7648) answered by portproxy:
//! each request is validated as a server must, answered with portproxy's own epoch, and
//! carried out at the CGN in the protocol it speaks (`upstream`), as the requesting host.
//! What the CGN grants goes into the mapping table (and opens its firewall hole) before the
//! client hears of it.
//!
//! Decisions where the RFCs leave room:
//! - THIRD_PARTY naming another host is refused (NOT_AUTHORIZED), as an IGD's secure mode
//!   refuses a mapping for another client; naming the sender itself is accepted.
//! - PEER and FILTER are refused (UNSUPP_OPCODE, UNSUPP_OPTION): a NAT-PMP CGN cannot hold
//!   them, and no LAN client was seen to need them from a CPE.
//! - A mapping the table refuses (quota) is deleted at the CGN again and refused to the
//!   client (USER_EX_QUOTA / NO_RESOURCES), so nothing exists that has no firewall hole.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use log::debug;

use super::Identity;
use crate::config::Config;
use crate::mapping::{self, Backing, Entry, Grant, Key, Mappings, Origin, Refused};
use crate::proto::{Transport, natpmp, pcp};
use crate::upstream::{Ask, Failure, Granted, Igd, Plan, SocketPool, Upstream, Via};

pub struct PortControlServer {
    cfg: Arc<Config>,
    plan: Plan,
    /// The CGN's IGD, when `plan.via` is UPnP and its description could be read.
    igd: Option<Arc<Igd>>,
    mappings: Arc<Mappings>,
    identity: Arc<Identity>,
    sockets: Arc<SocketPool>,
}

impl PortControlServer {
    pub fn new(
        cfg: Arc<Config>,
        plan: Plan,
        igd: Option<Arc<Igd>>,
        mappings: Arc<Mappings>,
        identity: Arc<Identity>,
    ) -> PortControlServer {
        PortControlServer {
            cfg,
            plan,
            igd,
            mappings,
            identity,
            sockets: Arc::default(),
        }
    }

    /// Whether this datagram is answered here rather than relayed.
    pub fn serves(&self, msg: &[u8]) -> bool {
        self.plan.serves(msg)
    }

    /// The answer to one datagram from `client` (a LAN host), if it gets one.
    pub async fn answer(&self, client: SocketAddrV4, msg: &[u8]) -> Option<Vec<u8>> {
        match msg.first() {
            Some(&natpmp::VERSION) => self.natpmp(client, msg).await,
            Some(_) => self.pcp(client, msg).await,
            None => None,
        }
    }

    fn upstream(&self) -> Result<Upstream, Failure> {
        let via = self.plan.via.ok_or(Failure::NetworkFailure)?;
        Ok(Upstream {
            cgn: SocketAddrV4::new(self.cfg.cgn, self.cfg.nat_pmp_port),
            wan: self.cfg.wan.addr,
            via,
            igd: self.igd.clone(),
            sockets: self.sockets.clone(),
        })
    }

    async fn natpmp(&self, client: SocketAddrV4, msg: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.identity.epoch();
        let request = match natpmp::parse_request(msg, epoch) {
            natpmp::Parsed::Ignore => return None,
            natpmp::Parsed::Refuse(reply) => return Some(reply.to_vec()),
            natpmp::Parsed::Request(request) => request,
        };
        let reply = match request {
            natpmp::Request::PublicAddress => {
                let (result, addr) = match self.public_address().await {
                    Ok(addr) => (natpmp::result::SUCCESS, addr),
                    Err(f) => (f.natpmp(), Ipv4Addr::UNSPECIFIED),
                };
                natpmp::Response::PublicAddress {
                    result,
                    epoch,
                    addr,
                }
            }
            natpmp::Request::Map {
                proto,
                internal_port,
                suggested_port,
                lifetime,
            } => {
                let key = Key {
                    host: *client.ip(),
                    proto,
                    internal_port,
                };
                let done = match (internal_port, lifetime) {
                    (0, 0) => self.delete_all(key.host, Some(proto)).await.map(|()| None),
                    // Port 0 means "all of them", which only a delete can mean.
                    (0, _) => Err(Failure::NotAuthorized),
                    (_, 0) => self.delete(key, None).await.map(|()| None),
                    _ => {
                        let ask = (suggested_port, lifetime, false);
                        self.map(key, ask, Origin::NatPmp, client).await.map(Some)
                    }
                };
                debug!("nat-pmp {client}: {request:?} -> {done:?}");
                let (result, external, lifetime) = match done {
                    Ok(Some(g)) => (natpmp::result::SUCCESS, g.external.port(), g.lifetime),
                    Ok(None) => (natpmp::result::SUCCESS, 0, 0),
                    Err(f) => (f.natpmp(), 0, 0),
                };
                natpmp::Response::Map {
                    proto,
                    result,
                    epoch,
                    internal: internal_port,
                    external,
                    lifetime,
                }
            }
        };
        Some(reply.to_vec())
    }

    async fn pcp(&self, client: SocketAddrV4, msg: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.identity.epoch();
        let request = match pcp::parse_request(msg) {
            pcp::Parsed::Ignore => return None,
            pcp::Parsed::Refuse(code) => return Some(pcp::error_response(msg, code, epoch)),
            pcp::Parsed::Request(request) => request,
        };
        let answer =
            |code, lifetime, map| Some(pcp::response(&request, code, lifetime, epoch, map));
        // The client-IP field must be the source: a NAT between us would otherwise hide it.
        if request.client != pcp::mapped(*client.ip()) {
            return answer(pcp::result::ADDRESS_MISMATCH, 0, None);
        }
        if request
            .third_party
            .is_some_and(|host| host != request.client)
        {
            return answer(pcp::result::NOT_AUTHORIZED, 0, None);
        }
        let Some(map) = request.map else {
            return answer(pcp::result::SUCCESS, 0, None); // ANNOUNCE
        };
        let host = *client.ip();
        let done = match Transport::from_number(map.protocol) {
            // Protocol 0 passed validation only as "delete all of mine".
            None => self.delete_all(host, None).await.map(|()| None),
            Some(proto) => {
                let key = Key {
                    host,
                    proto,
                    internal_port: map.internal_port,
                };
                match request.lifetime {
                    0 => self.delete(key, Some(map.nonce)).await.map(|()| None),
                    lifetime => {
                        let ask = (map.external_port, lifetime, request.prefer_failure);
                        let origin = Origin::PcpMap { nonce: map.nonce };
                        match self.mappings.get(&key).await {
                            Some(e) if !same_nonce(&e, map.nonce) => Err(Failure::NotAuthorized),
                            _ => self.map(key, ask, origin, client).await.map(Some),
                        }
                    }
                }
            }
        };
        debug!("pcp {client}: {request:?} -> {done:?}");
        match done {
            Ok(Some(g)) => {
                let assigned = pcp::Map {
                    external_port: g.external.port(),
                    external_addr: pcp::mapped(*g.external.ip()),
                    ..map
                };
                answer(pcp::result::SUCCESS, g.lifetime, Some(assigned))
            }
            Ok(None) => {
                let deleted = pcp::Map {
                    external_port: 0,
                    external_addr: pcp::mapped(Ipv4Addr::UNSPECIFIED),
                    ..map
                };
                answer(pcp::result::SUCCESS, 0, Some(deleted))
            }
            Err(f) => answer(f.pcp(), 0, None),
        }
    }

    /// The CGN's external address: known from a probe or a grant, else asked for.
    async fn public_address(&self) -> Result<Ipv4Addr, Failure> {
        if let Some(addr) = self.mappings.known_public_address().await {
            return Ok(addr);
        }
        let addr = self.upstream()?.public_address().await?;
        self.mappings.public_address(addr).await;
        Ok(addr)
    }

    /// Maps `key` at the CGN (`ask`: suggested port, lifetime, that port or nothing) and
    /// takes the grant into the table.
    async fn map(
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
        // A renewal goes with the nonce that made the mapping (it may come from a file
        // written by an earlier run, whose derived nonces differ).
        let backing = self.mappings.get(&key).await.map(|e| e.backing);
        let ask = Ask {
            host: key.host,
            proto: key.proto,
            internal_port: key.internal_port,
            suggested_port,
            lifetime,
            prefer_failure,
            nonce: self.nonce_for(&key, &origin, backing),
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
    async fn delete(&self, key: Key, nonce: Option<[u8; 12]>) -> Result<(), Failure> {
        let entry = self.mappings.get(&key).await;
        if let (Some(e), Some(nonce)) = (&entry, nonce)
            && !same_nonce(e, nonce)
        {
            return Err(Failure::NotAuthorized);
        }
        let upstream = self.upstream()?;
        let origin = entry.as_ref().map_or(Origin::NatPmp, |e| e.origin.clone());
        let ask = Ask {
            host: key.host,
            proto: key.proto,
            internal_port: key.internal_port,
            // UPnP deletes by external port.
            suggested_port: entry.as_ref().map_or(0, |e| e.external.port()),
            lifetime: 0,
            prefer_failure: false,
            nonce: self.nonce_for(&key, &origin, entry.as_ref().map(|e| e.backing)),
        };
        // The client wants it gone: the hole closes whatever the CGN says.
        let at_cgn = upstream.map(&ask).await.map(|_| ());
        self.mappings.deleted(key).await;
        at_cgn
    }

    /// Deletes every mapping of `host` (of `proto`, or of both).
    async fn delete_all(&self, host: Ipv4Addr, proto: Option<Transport>) -> Result<(), Failure> {
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
    fn nonce_for(&self, key: &Key, origin: &Origin, backing: Option<Backing>) -> [u8; 12] {
        match (backing, origin) {
            (Some(Backing::Pcp { nonce }), _) => nonce,
            (_, Origin::PcpMap { nonce }) => *nonce,
            _ => self.identity.nonces.for_key(key),
        }
    }
}

/// Whether `nonce` is the one the PCP mapping `entry` was made with (RFC 6887 §11.3); a
/// mapping made with NAT-PMP or UPnP has none to compare.
fn same_nonce(entry: &Entry, nonce: [u8; 12]) -> bool {
    match entry.origin {
        Origin::PcpMap { nonce: made_with } => made_with == nonce,
        _ => true,
    }
}
