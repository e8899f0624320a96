//! iroh's port mapper (the `portmapper` crate an iroh endpoint maps its UDP socket with) as
//! a LAN client of portproxy, one protocol at a time, against a CGN that speaks PCP only and
//! one that speaks NAT-PMP only: it must find the LAN's gateway from the routes, probe the
//! protocol (PCP ANNOUNCE, NAT-PMP external address, SSDP), and get the subscriber's public
//! address with a port that the CGN maps to the LAN host and the internet host reaches
//! through the fw4-like CPE firewall. Every scenario runs on every data path and both
//! softwire kinds.

#[macro_use]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{mapped_again, with_portproxy};
use tests::{
    CgnKind, DataPath, IrohProtocol, LAN_GATEWAY, LAN1_IP, Lab, Netns, PUBLIC_IP, Softwire,
    iroh_map_udp,
};

/// How long the mapper may take from its probe to the external address.
const MAP_WITHIN: Duration = Duration::from_secs(10);

/// Runs portproxy in a lab whose CGN speaks `kind`, behind the fw4-like firewall, and maps
/// a UDP port of lan1 with iroh's port mapper in each protocol in turn; portproxy's table
/// must show each with its origin and how it is held at the CGN (`upstream`: "relayed" or
/// the protocol portproxy mapped it with). On the fast path the `kernel` counters must have
/// moved. Prints portproxy's log on failure.
fn iroh_against(
    softwire: Softwire,
    path: DataPath,
    kind: CgnKind,
    upstream: [&str; 3],
    kernel: &[&str],
) -> Result<()> {
    let builder = Lab::builder(softwire).cgn(kind).cpe_firewall();
    with_portproxy(builder, path, &[], kernel, |lab, _| {
        [
            (IrohProtocol::Pcp, 8301, "pcp-map"),
            (IrohProtocol::NatPmp, 8302, "nat-pmp"),
            (IrohProtocol::Upnp, 8303, "upnp-add"),
        ]
        .into_iter()
        .zip(upstream)
        .try_for_each(|((protocol, port, origin), upstream)| {
            iroh_maps(lab, protocol, port)?;
            let held = held_as(lab, port)?;
            ensure!(
                held == (origin.into(), upstream.into()),
                "{protocol}: portproxy holds lan1:{port} as {held:?}, not ({origin}, {upstream})"
            );
            Ok(())
        })
    })
}

/// iroh's mapper in lan1, with `protocol` only, maps UDP `port` (bound there, as an iroh
/// endpoint's socket is): the public address, a CGN mapping to lan1, reachable from inet.
fn iroh_maps(lab: &Lab, protocol: IrohProtocol, port: u16) -> Result<()> {
    let lan = lab.lan(1);
    let socket = lan
        .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .with_context(|| format!("binding UDP {port} in lan1"))?;
    let mapping = iroh_map_udp(lan, protocol, port, MAP_WITHIN)?;
    eprintln!("iroh's port mapper, {protocol}: {mapping:?}");
    ensure!(
        mapping.gateway == LAN_GATEWAY && mapping.local_ip == Some(LAN1_IP.into()),
        "{protocol}: the mapper took {:?} for lan1 and {} for its gateway",
        mapping.local_ip,
        mapping.gateway
    );
    let external = mapping.external;
    ensure!(
        *external.ip() == PUBLIC_IP,
        "{protocol}: the mapper reports {external}, not the CGN's public address"
    );
    mapped_again(lab, external.port(), LAN1_IP, port, Duration::from_secs(3))
        .with_context(|| format!("{protocol}: the mapping {external} at the CGN"))?;
    udp_reaches(lab.inet(), external, lan, &socket)
        .with_context(|| format!("{protocol}: inet -> {external} -> lan1:{port}"))
}

/// lan1's UDP `port` in `portproxy mappings --json`: (origin, upstream).
fn held_as(lab: &Lab, port: u16) -> Result<(String, String)> {
    let json = lab.portproxy_mappings()?;
    let m = json
        .as_array()
        .context("mappings --json is not an array")?
        .iter()
        .find(|m| m["host"] == LAN1_IP.to_string() && m["internal_port"] == port)
        .with_context(|| format!("no mapping of lan1:{port} in {json:#}"))?;
    let field = |name: &str| m[name].as_str().unwrap_or_default().to_string();
    Ok((field("origin"), field("upstream")))
}

/// inet sends a datagram to `public`; it must arrive on `socket` (in `host`), whose answer
/// (the host's role) must come back. Three tries: the CPE's hole may open a moment later.
fn udp_reaches(inet: &Netns, public: SocketAddrV4, host: &Netns, socket: &UdpSocket) -> Result<()> {
    let client = inet.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    let wait = Some(Duration::from_secs(1));
    client.set_read_timeout(wait)?;
    socket.set_read_timeout(wait)?;
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        client.send_to(b"ping", public)?;
        let Ok((_, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        socket.send_to(host.role().as_bytes(), from)?;
        let (n, answered) = client.recv_from(&mut buf)?;
        ensure!(
            &buf[..n] == host.role().as_bytes() && answered == SocketAddr::V4(public),
            "inet got {:?} from {answered}",
            String::from_utf8_lossy(&buf[..n])
        );
        return Ok(());
    }
    bail!("nothing arrived")
}

/// A PCP-only CGN: iroh's PCP is relayed, its NAT-PMP is answered by portproxy and its UPnP
/// by portproxy's IGD, both mapped with PCP.
fn on_a_pcp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    let upstream = ["relayed", "pcp-map", "pcp-map"];
    let kernel = ["pcp_to_cgn", "passed_to_daemon"];
    iroh_against(softwire, path, CgnKind::PcpOnly, upstream, &kernel)
}
every_path!(on_a_pcp_cgn);

/// A NAT-PMP-only CGN: iroh's NAT-PMP is relayed, its PCP is answered by portproxy and its
/// UPnP by portproxy's IGD, both mapped with NAT-PMP.
fn on_a_natpmp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    let upstream = ["nat-pmp", "relayed", "nat-pmp"];
    let kernel = ["nat_pmp_to_cgn", "passed_to_daemon"];
    iroh_against(softwire, path, CgnKind::NatPmpOnly, upstream, &kernel)
}
every_path!(on_a_natpmp_cgn);
