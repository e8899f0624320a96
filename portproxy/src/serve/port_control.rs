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
//!   client (USER_EX_QUOTA / NO_RESOURCES), so nothing exists that has no firewall hole
//!   (`Mapper`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use log::debug;

use super::mapper::{Mapper, same_nonce};
use crate::mapping::{Key, Origin};
use crate::proto::{Transport, natpmp, pcp};
use crate::upstream::{Failure, Plan};

pub struct PortControlServer {
    plan: Plan,
    mapper: Arc<Mapper>,
}

impl PortControlServer {
    pub fn new(plan: Plan, mapper: Arc<Mapper>) -> PortControlServer {
        PortControlServer { plan, mapper }
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

    async fn natpmp(&self, client: SocketAddrV4, msg: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.mapper.identity.epoch();
        let request = match natpmp::parse_request(msg, epoch) {
            natpmp::Parsed::Ignore => return None,
            natpmp::Parsed::Refuse(reply) => return Some(reply.to_vec()),
            natpmp::Parsed::Request(request) => request,
        };
        let reply = match request {
            natpmp::Request::PublicAddress => {
                let (result, addr) = match self.mapper.public_address().await {
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
                    (0, 0) => self
                        .mapper
                        .delete_all(key.host, Some(proto))
                        .await
                        .map(|()| None),
                    // Port 0 means "all of them", which only a delete can mean.
                    (0, _) => Err(Failure::NotAuthorized),
                    (_, 0) => self.mapper.delete(key, None).await.map(|()| None),
                    _ => {
                        let ask = (suggested_port, lifetime, false);
                        self.mapper
                            .map(key, ask, Origin::NatPmp, client)
                            .await
                            .map(Some)
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
        let epoch = self.mapper.identity.epoch();
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
            None => self.mapper.delete_all(host, None).await.map(|()| None),
            Some(proto) => {
                let key = Key {
                    host,
                    proto,
                    internal_port: map.internal_port,
                };
                match request.lifetime {
                    0 => self
                        .mapper
                        .delete(key, Some(map.nonce))
                        .await
                        .map(|()| None),
                    lifetime => {
                        let ask = (map.external_port, lifetime, request.prefer_failure);
                        let origin = Origin::PcpMap { nonce: map.nonce };
                        match self.mapper.mappings.get(&key).await {
                            Some(e) if !same_nonce(&e, map.nonce) => Err(Failure::NotAuthorized),
                            _ => self.mapper.map(key, ask, origin, client).await.map(Some),
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
}
