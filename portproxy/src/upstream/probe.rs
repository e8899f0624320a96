//! What the CGN speaks, asked from the CPE's own WAN address each time the data path is
//! built: a PCP ANNOUNCE, a NAT-PMP public address request and an SSDP search for an
//! IGD, all at once. It ends as soon as all three answered, after `WINDOW` otherwise.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use log::debug;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::Speaks;
use crate::config::Config;
use crate::proto::{natpmp, pcp, ssdp};
use crate::sockets::{self, Sender};

/// How long an answer may take; NAT-PMP and PCP are asked again at 250 and 500 ms.
const WINDOW: Duration = Duration::from_millis(1000);
const RESEND: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(500)];
const RETRY_SOCKET: Duration = Duration::from_millis(100);

/// The CGN's epochs, from its answers to a PCP ANNOUNCE and a NAT-PMP public address
/// request (with the address); `None` where it did not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Epochs {
    pub pcp: Option<u32>,
    pub nat_pmp: Option<(u32, Ipv4Addr)>,
}

/// What the probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probed {
    pub speaks: Speaks,
    pub epochs: Epochs,
    /// Where the CGN's IGD description is (its answer's LOCATION).
    pub igd_location: Option<String>,
}

impl Probed {
    /// From NAT-PMP's answer.
    pub fn public_addr(&self) -> Option<Ipv4Addr> {
        self.epochs.nat_pmp.map(|(_, addr)| addr)
    }
}

pub async fn probe(cfg: &Config) -> Probed {
    let ask = Speaks {
        pcp: true,
        nat_pmp: true,
        upnp: true,
    };
    let (epochs, upnp) = tokio::join!(epochs(cfg, ask), igd(cfg));
    let upnp = upnp.unwrap_or_else(|e| {
        debug!("probing the CGN's UPnP IGD: {e}");
        None
    });
    Probed {
        speaks: Speaks {
            pcp: epochs.pcp.is_some(),
            nat_pmp: epochs.nat_pmp.is_some(),
            upnp: upnp.is_some(),
        },
        epochs,
        igd_location: upnp.flatten(),
    }
}

/// Asks the CGN for its epoch in each of the protocols `ask` names (PCP, NAT-PMP).
pub async fn epochs(cfg: &Config, ask: Speaks) -> Epochs {
    let cgn = SocketAddrV4::new(cfg.cgn, cfg.nat_pmp_port);
    port_control(Sender::LanHost, cfg.wan.addr, cgn, ask)
        .await
        .unwrap_or_else(|e| {
            debug!("probing the CGN's NAT-PMP and PCP: {e}");
            Epochs::default()
        })
}

/// Asks the NAT-PMP/PCP server at `cgn` for its epoch in each of the protocols `ask` names,
/// sending from `wan` as `sender`.
pub async fn port_control(
    sender: Sender,
    wan: Ipv4Addr,
    cgn: SocketAddrV4,
    ask: Speaks,
) -> std::io::Result<Epochs> {
    let deadline = Instant::now() + WINDOW;
    // Right after an interface change the route to the CGN may not be there yet: try again
    // for the rest of the window rather than conclude it speaks nothing.
    let socket = loop {
        match sockets::udp_to(sender, SocketAddrV4::new(wan, 0), cgn) {
            Ok(socket) => break socket,
            Err(e) if Instant::now() + RETRY_SOCKET < deadline => {
                debug!("probing the CGN from {wan}: {e}; again in {RETRY_SOCKET:?}");
                tokio::time::sleep(RETRY_SOCKET).await;
            }
            Err(e) => return Err(e),
        }
    };
    let announce = pcp::request(wan, 0, None, false);
    let public = [natpmp::VERSION, 0];
    let mut epochs = Epochs::default();
    let mut answered_pcp = !ask.pcp;
    let mut answered_natpmp = !ask.nat_pmp;
    let mut resend = RESEND.iter().map(|d| Instant::now() + *d);
    let mut next_send = Some(Instant::now());
    let mut buf = [0u8; pcp::MAX_LEN];
    while Instant::now() < deadline && !(answered_pcp && answered_natpmp) {
        if next_send.is_some_and(|t| t <= Instant::now()) {
            if !answered_pcp {
                send(&socket, &announce).await;
            }
            if !answered_natpmp {
                send(&socket, &public).await;
            }
            next_send = resend.next();
        }
        let until = next_send.map_or(deadline, |t| t.min(deadline));
        let Ok(received) = tokio::time::timeout_at(until, socket.recv(&mut buf)).await else {
            continue;
        };
        let Ok(len) = received else {
            // ICMP port unreachable: nothing listens on 5351 (yet); wait for the next try.
            tokio::time::sleep_until(until).await;
            continue;
        };
        let msg = &buf[..len];
        if let Some(r) = pcp::parse_response(msg) {
            // Any PCP answer to the ANNOUNCE, even an error, means PCP is spoken there.
            if r.opcode == pcp::OPCODE_ANNOUNCE {
                answered_pcp = true;
                epochs.pcp = Some(r.epoch);
            }
        } else if let Some((result, epoch, addr)) = natpmp::parse_public_address(msg) {
            answered_natpmp = true;
            if result == natpmp::result::SUCCESS {
                epochs.nat_pmp = Some((epoch, addr));
            }
        }
        // Anything else (a NAT-PMP server refusing version 2) says only what is not spoken.
    }
    Ok(epochs)
}

async fn send(socket: &UdpSocket, msg: &[u8]) {
    if let Err(e) = socket.send(msg).await {
        debug!("probing the CGN: {e}");
    }
}

/// Whether the CGN answers an SSDP search for an Internet Gateway Device, and the LOCATION
/// its answer names.
async fn igd(cfg: &Config) -> std::io::Result<Option<Option<String>>> {
    let socket = sockets::ssdp_searcher(&cfg.wan)?;
    search_igd(&socket, cfg.cgn, cfg.ssdp_port).await
}

/// Whether `gateway` answers an SSDP search for an Internet Gateway Device (multicast from
/// `socket` to the group on `port`) within `WINDOW`, and the LOCATION its answer names.
pub async fn search_igd(
    socket: &UdpSocket,
    gateway: Ipv4Addr,
    port: u16,
) -> std::io::Result<Option<Option<String>>> {
    let search = format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {}:{}\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n\
         ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n",
        ssdp::GROUP,
        port
    );
    socket
        .send_to(search.as_bytes(), SocketAddrV4::new(ssdp::GROUP, port))
        .await?;
    let deadline = Instant::now() + WINDOW;
    let mut buf = vec![0u8; ssdp::MAX_LEN];
    while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let (len, from) = received?;
        if from.ip() != IpAddr::V4(gateway) {
            continue;
        }
        if let Ok(answer) = ssdp::Message::parse(&buf[..len])
            && answer.kind == ssdp::Kind::Response
        {
            return Ok(Some(answer.header("LOCATION").map(str::to_string)));
        }
    }
    Ok(None)
}
