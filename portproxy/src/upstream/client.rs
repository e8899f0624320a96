//! Asking the CGN for one mapping, in PCP or NAT-PMP, as the LAN host.
//!
//! One exchange is a transparent socket bound to the host's address (any port) and
//! connected to CGN:5351 (`SocketPool` keeps a few open per host, so a renewal costs a send
//! and a receive); `capture::ReplyCapture` routes the CGN's answer to it. The
//! request is sent again after 250 ms and 500 ms (RFC 6887 §8.1.1 asks for 3 s first;
//! the LAN client waits on us, and libnatpmp gives up after its own retries), so an
//! exchange takes at most 1.75 s. Only an answer to this request counts: PCP's nonce,
//! protocol and internal port, NAT-PMP's opcode and internal port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::debug;
use tokio::net::UdpSocket;

use super::{Failure, Igd, Nonces, Via};
use crate::config::Config;
use crate::mapping::{Entry, Key};
use crate::proto::{Transport, natpmp, pcp};
use crate::sockets::{self, Sender};

const TRIES: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// A mapping asked for on a LAN host's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub host: Ipv4Addr,
    pub proto: Transport,
    pub internal_port: u16,
    /// 0: any.
    pub suggested_port: u16,
    /// 0 deletes.
    pub lifetime: u32,
    /// That port or nothing (PCP's PREFER_FAILURE; NAT-PMP cannot say it, see `Upstream::map`).
    pub prefer_failure: bool,
    /// The PCP nonce the CGN ties the mapping to (unused with NAT-PMP).
    pub nonce: [u8; 12],
}

impl Ask {
    /// A delete of `key`'s mapping with `nonce`, as the CGN knows it: for the host and its
    /// internal port, or in double NAT (a `local_port`) for the router's WAN address `wan`
    /// and that port. A map sets the rest.
    pub fn for_key(key: &Key, local_port: Option<u16>, wan: Ipv4Addr, nonce: [u8; 12]) -> Ask {
        let (host, internal_port) = match local_port {
            Some(port) => (wan, port),
            None => (key.host, key.internal_port),
        };
        Ask {
            host,
            proto: key.proto,
            internal_port,
            suggested_port: 0,
            lifetime: 0,
            prefer_failure: false,
            nonce,
        }
    }

    /// The table's mapping `entry` asked for again on the external port it has, for
    /// `lifetime` (0 deletes it), with `nonce` (the one that made it).
    pub fn for_entry(entry: &Entry, wan: Ipv4Addr, lifetime: u32, nonce: [u8; 12]) -> Ask {
        Ask {
            suggested_port: entry.external.port(),
            lifetime,
            ..Ask::for_key(&entry.key, entry.local_port, wan, nonce)
        }
    }
}

/// What the CGN granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The address is unspecified when the protocol does not carry it (NAT-PMP).
    pub external: SocketAddrV4,
    /// 0 confirms a delete.
    pub lifetime: u32,
    /// The CGN's epoch (seconds since it started or lost its state).
    pub epoch: u32,
}

/// The CGN, spoken to in one protocol.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub cgn: SocketAddrV4,
    /// The CPE's WAN address (UPnP's HTTP and the public address probe go from there).
    pub wan: Ipv4Addr,
    pub via: Via,
    /// With `Via::Upnp`: the IGD's connection service, if its description could be read.
    pub igd: Option<Arc<Igd>>,
    pub sockets: Arc<SocketPool>,
}

/// Idle sockets kept per LAN host, and in all (each is a file descriptor).
const IDLE_PER_HOST: usize = 2;
const IDLE_MAX: usize = 256;

/// Sockets to the CGN that finished an exchange, by the LAN host they send as: the next
/// exchange for that host takes one rather than going through a socket's whole life
/// (socket, options, bind, connect, registering with the runtime, closing), which cost
/// more than the exchange itself. Bounded by `IDLE_PER_HOST` and `IDLE_MAX`.
#[derive(Debug, Default)]
pub struct SocketPool {
    idle: Mutex<HashMap<(Ipv4Addr, SocketAddrV4), Vec<UdpSocket>>>,
    /// Whose address the sockets send from.
    sender: Sender,
}

impl SocketPool {
    /// A pool of sockets that send as `sender`.
    pub fn new(sender: Sender) -> SocketPool {
        SocketPool {
            sender,
            ..SocketPool::default()
        }
    }

    /// A socket that sends as `from` (any port) to `cgn`.
    fn connect(&self, from: Ipv4Addr, cgn: SocketAddrV4) -> Result<UdpSocket, Failure> {
        sockets::udp_to(self.sender, SocketAddrV4::new(from, 0), cgn).map_err(|e| {
            debug!("cannot send to the CGN as {from}: {e}");
            Failure::NetworkFailure
        })
    }

    /// An idle socket sending as `from` to `cgn`, emptied of late answers, or a new one.
    fn take(&self, from: Ipv4Addr, cgn: SocketAddrV4) -> Result<UdpSocket, Failure> {
        let socket = {
            let mut idle = self.idle.lock().unwrap();
            let list = idle.get_mut(&(from, cgn));
            let socket = list.and_then(Vec::pop);
            if idle.get(&(from, cgn)).is_some_and(Vec::is_empty) {
                idle.remove(&(from, cgn));
            }
            socket
        };
        match socket {
            Some(socket) => {
                let mut buf = [0u8; pcp::MAX_LEN];
                while socket.try_recv(&mut buf).is_ok() {}
                Ok(socket)
            }
            None => self.connect(from, cgn),
        }
    }

    /// Keeps `socket` for the next exchange as `from` if its request went out once: the CGN
    /// answers every copy of a request it got twice (or of one it was slow to answer), and
    /// a late answer, an error above all, would be taken for the next exchange's own (seen
    /// under load: a delete's second answer, NO_RESOURCES, failing the next map).
    fn give_after(&self, from: Ipv4Addr, cgn: SocketAddrV4, socket: UdpSocket, sends: usize) {
        if sends != 1 {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        let total: usize = idle.values().map(Vec::len).sum();
        let list = idle.entry((from, cgn)).or_default();
        if list.len() < IDLE_PER_HOST && total < IDLE_MAX {
            list.push(socket);
        } else if list.is_empty() {
            idle.remove(&(from, cgn));
        }
    }
}

impl Upstream {
    /// The daemon's CGN (`cfg`), spoken to in `via` from `sockets`.
    pub fn of(cfg: &Config, via: Via, igd: Option<Arc<Igd>>, sockets: Arc<SocketPool>) -> Upstream {
        Upstream {
            cgn: SocketAddrV4::new(cfg.cgn, cfg.nat_pmp_port),
            wan: cfg.wan.addr,
            via,
            igd,
            sockets,
        }
    }

    /// Creates, renews (lifetime > 0) or deletes (lifetime 0) a mapping. A `prefer_failure`
    /// ask that got another port is deleted again and refused.
    pub async fn map(&self, ask: &Ask) -> Result<Granted, Failure> {
        let granted = match self.via {
            Via::Pcp => self.pcp_map(ask).await?,
            Via::NatPmp => self.natpmp_map(ask).await?,
            Via::Upnp => self.upnp_map(ask).await?,
        };
        // NAT-PMP cannot say "that port or nothing", and a PCP server may not honour it
        // (miniupnpd 2.3 moves on when the port is another client's): what came back on
        // another port is deleted again. (UPnP's AddPortMapping is exact.)
        let other_port = ask.suggested_port != 0 && granted.external.port() != ask.suggested_port;
        if self.via != Via::Upnp && ask.prefer_failure && ask.lifetime != 0 && other_port {
            let undo = Ask {
                lifetime: 0,
                ..*ask
            };
            let deleted = match self.via {
                Via::Pcp => self.pcp_map(&undo).await,
                _ => self.natpmp_map(&undo).await,
            };
            if let Err(e) = deleted {
                debug!(
                    "deleting {}:{} again at the CGN: {e}",
                    ask.host, ask.internal_port
                );
            }
            return Err(Failure::CannotProvideExternal);
        }
        Ok(granted)
    }

    /// The CGN's external address: NAT-PMP asks for it; PCP has no such request, so a
    /// mapping of the CPE's own (WAN address, the exchange's port) is made for 60 s and
    /// deleted again (what RFC 6970 §5.3 suggests for GetExternalIPAddress).
    pub async fn public_address(&self) -> Result<Ipv4Addr, Failure> {
        let wan = self.wan;
        if self.via == Via::Upnp {
            return self.igd()?.external_address(wan).await;
        }
        let socket = self.sockets.connect(wan, self.cgn)?;
        match self.via {
            Via::NatPmp => {
                let (answer, _) = exchange(&socket, &[natpmp::VERSION, 0], |msg| {
                    natpmp::parse_public_address(msg)
                })
                .await;
                match answer? {
                    (natpmp::result::SUCCESS, _, addr) => Ok(addr),
                    (code, _, _) => Err(Failure::from_natpmp(code)),
                }
            }
            Via::Pcp => {
                let port = socket
                    .local_addr()
                    .map_err(|_| Failure::NetworkFailure)?
                    .port();
                let mut ask = Ask {
                    host: wan,
                    proto: Transport::Udp,
                    internal_port: port,
                    suggested_port: 0,
                    lifetime: 60,
                    prefer_failure: false,
                    nonce: Nonces::random(),
                };
                let granted = pcp_exchange(&socket, &ask).await.0?;
                ask.lifetime = 0;
                if let Err(e) = pcp_exchange(&socket, &ask).await.0 {
                    debug!("deleting the address probe's mapping: {e}");
                }
                Ok(*granted.external.ip())
            }
            Via::Upnp => unreachable!("answered above"),
        }
    }

    fn igd(&self) -> Result<&Igd, Failure> {
        self.igd.as_deref().ok_or(Failure::NetworkFailure)
    }

    /// AddPortMapping (AddAnyPortMapping unless that port or nothing), for the lease asked;
    /// lifetime 0 deletes the mapping on `suggested_port` (the external port it has).
    async fn upnp_map(&self, ask: &Ask) -> Result<Granted, Failure> {
        let igd = self.igd()?;
        let external = match ask.lifetime {
            0 => {
                if ask.suggested_port != 0 {
                    igd.delete(self.wan, ask.proto, ask.suggested_port).await?;
                }
                0
            }
            _ => igd.add(self.wan, ask).await?,
        };
        Ok(Granted {
            external: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, external),
            lifetime: ask.lifetime,
            // UPnP has no epoch: a lost mapping shows only when its control point asks.
            epoch: 0,
        })
    }

    async fn pcp_map(&self, ask: &Ask) -> Result<Granted, Failure> {
        let socket = self.sockets.take(ask.host, self.cgn)?;
        let (granted, sends) = pcp_exchange(&socket, ask).await;
        self.sockets.give_after(ask.host, self.cgn, socket, sends);
        granted
    }

    async fn natpmp_map(&self, ask: &Ask) -> Result<Granted, Failure> {
        let socket = self.sockets.take(ask.host, self.cgn)?;
        let request = natpmp_request(ask);
        let opcode = request[1] | 0x80;
        let (msg, sends) = exchange(&socket, &request, |msg| {
            (msg.len() >= 16
                && msg[0] == natpmp::VERSION
                && msg[1] == opcode
                && msg[8..10] == ask.internal_port.to_be_bytes()
                && same_intent(ask, msg[2..4] == [0, 0], msg[12..16] == [0; 4]))
            .then(|| msg[..16].to_vec())
        })
        .await;
        self.sockets.give_after(ask.host, self.cgn, socket, sends);
        let msg = msg?;
        let be32 = |at: usize| u32::from_be_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]]);
        match u16::from_be_bytes([msg[2], msg[3]]) {
            natpmp::result::SUCCESS => Ok(Granted {
                external: SocketAddrV4::new(
                    Ipv4Addr::UNSPECIFIED,
                    u16::from_be_bytes([msg[10], msg[11]]),
                ),
                lifetime: be32(12),
                epoch: be32(4),
            }),
            code => Err(Failure::from_natpmp(code)),
        }
    }
}

fn natpmp_request(ask: &Ask) -> [u8; 12] {
    let mut m = [0; 12];
    natpmp::Request::Map {
        proto: ask.proto,
        internal_port: ask.internal_port,
        suggested_port: ask.suggested_port,
        lifetime: ask.lifetime,
    }
    .encode(&mut m);
    m
}

/// The CGN's answer to `ask`, and how many times the request was sent.
async fn pcp_exchange(socket: &UdpSocket, ask: &Ask) -> (Result<Granted, Failure>, usize) {
    let map = pcp::Map {
        nonce: ask.nonce,
        protocol: ask.proto.number(),
        internal_port: ask.internal_port,
        external_port: ask.suggested_port,
        external_addr: pcp::mapped(Ipv4Addr::UNSPECIFIED),
    };
    let request = pcp::request(ask.host, ask.lifetime, Some(map), ask.prefer_failure);
    let response = exchange(socket, &request, |msg| {
        let r = pcp::parse_response(msg)?;
        let m = r.map?;
        (r.opcode == pcp::OPCODE_MAP
            && m.nonce == ask.nonce
            && m.protocol == map.protocol
            && m.internal_port == ask.internal_port
            && same_intent(ask, r.result == pcp::result::SUCCESS, r.lifetime == 0))
        .then_some((r, m))
    })
    .await;
    let (response, sends) = response;
    let granted = response.and_then(|(r, m)| {
        if r.result != pcp::result::SUCCESS {
            return Err(Failure::from_pcp(r.result));
        }
        Ok((r, m))
    });
    (
        granted.map(|(r, m)| Granted {
            external: SocketAddrV4::new(
                m.external_addr
                    .to_ipv4_mapped()
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                m.external_port,
            ),
            lifetime: r.lifetime,
            epoch: r.epoch,
        }),
        sends,
    )
}

/// Whether a success answer fits what `ask` meant: lifetime 0 answers a delete, any other a
/// map. A pooled socket may still get the late duplicate of the answer to the exchange
/// before it, which may have been a delete of the same mapping.
fn same_intent(ask: &Ask, success: bool, lifetime_zero: bool) -> bool {
    !success || lifetime_zero == (ask.lifetime == 0)
}

/// Sends `request` until `answer` accepts a datagram, or `TRIES` run out; also says how
/// many times it was sent.
async fn exchange<T>(
    socket: &UdpSocket,
    request: &[u8],
    answer: impl Fn(&[u8]) -> Option<T>,
) -> (Result<T, Failure>, usize) {
    let mut buf = [0u8; pcp::MAX_LEN];
    for (sent, wait) in TRIES.into_iter().enumerate() {
        if let Err(e) = socket.send(request).await {
            debug!("sending to the CGN: {e}");
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(len)) => {
                    if let Some(found) = answer(&buf[..len]) {
                        return (Ok(found), sent + 1);
                    }
                }
                // ICMP port unreachable from a CGN restarting: wait out this try.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
            }
        }
    }
    (Err(Failure::NoAnswer), TRIES.len())
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdUdpSocket;
    use std::time::Duration;

    use super::*;
    use crate::proto::pcp::{Parsed, parse_request, response, result};

    const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn ask(lifetime: u32) -> Ask {
        Ask {
            host: HOST,
            proto: Transport::Tcp,
            internal_port: 8411,
            suggested_port: 9402,
            lifetime,
            prefer_failure: false,
            nonce: [7; 12],
        }
    }

    /// A CGN slow to answer a delete: the client sends it again, and the answer to the second
    /// copy (NO_RESOURCES: miniupnpd's "failed to remove") arrives during the next exchange,
    /// just before that exchange's own answer. It must not be taken for the next map's answer.
    #[tokio::test]
    async fn a_late_answer_to_a_resent_request_is_not_the_next_ones() {
        let cgn = StdUdpSocket::bind((HOST, 0)).unwrap();
        cgn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let upstream = Upstream {
            cgn: match cgn.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                other => panic!("{other}"),
            },
            wan: HOST,
            via: Via::Pcp,
            igd: None,
            sockets: Arc::new(SocketPool::new(Sender::Myself)),
        };
        let fake = std::thread::spawn(move || {
            let mut buf = [0u8; pcp::MAX_LEN];
            let mut receive = || {
                let (len, from) = cgn.recv_from(&mut buf).unwrap();
                let Parsed::Request(request) = parse_request(&buf[..len]) else {
                    panic!("not a PCP request");
                };
                (request, from)
            };
            // The delete, twice (the first copy unanswered past the client's first wait).
            let (delete, first) = receive();
            let (_, second) = receive();
            assert_eq!(delete.lifetime, 0);
            cgn.send_to(&response(&delete, result::SUCCESS, 0, 1, None), first)
                .unwrap();
            // The map; the delete's second answer overtakes the map's own.
            let (map, from) = receive();
            assert_eq!(map.lifetime, 600);
            let late = response(&delete, result::NO_RESOURCES, 0, 1, None);
            cgn.send_to(&late, second).unwrap();
            let granted = pcp::Map {
                external_addr: pcp::mapped(Ipv4Addr::new(203, 0, 114, 1)),
                ..map.map.unwrap()
            };
            cgn.send_to(
                &response(&map, result::SUCCESS, 600, 1, Some(granted)),
                from,
            )
            .unwrap();
        });
        assert_eq!(upstream.map(&ask(0)).await.unwrap().lifetime, 0);
        let granted = upstream.map(&ask(600)).await;
        fake.join().unwrap();
        assert_eq!(granted.unwrap().external.port(), 9402);
    }
}
