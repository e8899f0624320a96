//! portproxy end to end: the LAN's clients talk to the CPE (192.168.1.1) as their gateway,
//! portproxy relays to miniupnpd on the CGN, and the internet host reaches the mappings.
//! Every scenario runs on both softwire kinds. Run with `cargo xtask test` (root; it builds
//! portproxy and sets PORTPROXY_BIN).

#[macro_use]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::Barrier,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{run_expect, with_lab};
use tests::{
    IGD_HTTP_PORT, LAN_GATEWAY, LAN1_IP, LAN2_IP, Lab, LabBuilder, Netns, PCP_PORT, PUBLIC_IP,
    SSDP_GROUP, Softwire, pcp_map_tcp,
};

/// Runs portproxy in the CPE (`--lan-iface br-lan --wan-iface softwire -vv` and `extra`),
/// then `test`; on failure prints portproxy's log besides the lab's diagnostics.
fn with_portproxy(
    builder: LabBuilder,
    extra: &[&str],
    test: impl FnOnce(&Lab) -> Result<()>,
) -> Result<()> {
    with_lab(builder, |lab| {
        let mut args = vec!["--lan-iface", "br-lan", "--wan-iface", "softwire", "-vv"];
        args.extend_from_slice(extra);
        let portproxy = lab.spawn_portproxy(&args)?;
        let result = test(lab);
        if result.is_err() {
            eprintln!("=== portproxy log\n{}", portproxy.log());
        }
        result
    })
}

/// Checks that the CGN maps TCP `external` to `host`:`internal` and that the internet host
/// reaches the service there (answering with its role).
fn check_mapping(lab: &Lab, external: u16, host: &Netns, internal: u16) -> Result<()> {
    let ruleset = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
    let addr = if host.role() == "lan1" {
        LAN1_IP
    } else {
        LAN2_IP
    };
    ensure!(
        ruleset.contains(&format!("dport {external} dnat ip to {addr}:{internal}")),
        "the CGN has no mapping {external} -> {addr}:{internal}:\n{ruleset}"
    );
    let _server = host.serve_tcp(internal)?;
    let reply = lab
        .inet()
        .connect_tcp(SocketAddr::from((PUBLIC_IP, external)))?;
    ensure!(
        reply == host.role(),
        "inet reached {reply:?} instead of {}",
        host.role()
    );
    Ok(())
}

fn natpmp_public_address(softwire: Softwire) -> Result<()> {
    with_portproxy(Lab::builder(softwire), &[], |lab| {
        run_expect(
            lab.lan(1),
            "natpmpc",
            &["-g", &LAN_GATEWAY.to_string()],
            &[&format!("Public IP address : {PUBLIC_IP}")],
        )?;
        Ok(())
    })
}

both_softwires!(natpmp_public_address: natpmp_public_address_l2, natpmp_public_address_l3);

fn natpmp_map(softwire: Softwire) -> Result<()> {
    with_portproxy(Lab::builder(softwire), &[], |lab| {
        run_expect(
            lab.lan(1),
            "natpmpc",
            &[
                "-g",
                &LAN_GATEWAY.to_string(),
                "-a",
                "9181",
                "8181",
                "tcp",
                "600",
            ],
            &["Mapped public port 9181 protocol TCP to local port 8181"],
        )?;
        check_mapping(lab, 9181, lab.lan(1), 8181)
    })
}

both_softwires!(natpmp_map: natpmp_map_l2, natpmp_map_l3);

/// The M-SEARCH goes to 239.255.255.250:1900 on br-lan; portproxy relays it over the
/// softwire and the replies back.
fn upnp_discovery(softwire: Softwire) -> Result<()> {
    with_portproxy(Lab::builder(softwire), &[], |lab| {
        let lan1 = lab.lan(1);
        run_expect(
            lan1,
            "upnpc",
            &["-s"],
            &[
                "Found valid IGD",
                &format!("Local LAN ip address : {LAN1_IP}"),
                &format!("ExternalIPAddress = {PUBLIC_IP}"),
            ],
        )?;
        run_expect(lan1, "upnpc", &["-l"], &["Found valid IGD"])?;
        Ok(())
    })
}

both_softwires!(upnp_discovery: upnp_discovery_l2, upnp_discovery_l3);

fn upnp_map(softwire: Softwire) -> Result<()> {
    with_portproxy(Lab::builder(softwire), &[], |lab| {
        let lan1 = lab.lan(1);
        let host = LAN1_IP.to_string();
        run_expect(
            lan1,
            "upnpc",
            &["-a", &host, "8282", "9282", "tcp"],
            &[&format!(
                "external {PUBLIC_IP}:9282 TCP is redirected to internal {host}:8282"
            )],
        )?;
        let listed = format!("9282->{host}:8282");
        run_expect(lan1, "upnpc", &["-l"], &[&listed])?;
        check_mapping(lab, 9282, lan1, 8282)?;
        run_expect(lan1, "upnpc", &["-d", "9282", "tcp"], &[])?;
        let list = run_expect(lan1, "upnpc", &["-l"], &[])?;
        ensure!(
            !list.contains(&listed),
            "9282 still listed after -d:\n{list}"
        );
        Ok(())
    })
}

both_softwires!(upnp_map: upnp_map_l2, upnp_map_l3);

/// A PCP MAP sent to the default gateway by a PCP client (crab_nat).
fn pcp_map(softwire: Softwire) -> Result<()> {
    with_portproxy(Lab::builder(softwire), &[], |lab| {
        let mapping = pcp_map_tcp(lab.lan(1), LAN_GATEWAY, LAN1_IP, 8383, 9383, 600)?;
        ensure!(
            mapping.external_ip == PUBLIC_IP && mapping.external_port == 9383,
            "unexpected grant {mapping:?}"
        );
        check_mapping(lab, 9383, lab.lan(1), 8383)
    })
}

both_softwires!(pcp_map: pcp_map_l2, pcp_map_l3);

/// miniupnpd's periodic NOTIFY reaches a LAN host that joined the SSDP group.
fn notify_reaches_lan(softwire: Softwire) -> Result<()> {
    let interval = 2;
    with_portproxy(
        Lab::builder(softwire).notify_interval(interval),
        &[],
        |lab| {
            let socket = lab.lan(1).enter(|| -> Result<UdpSocket> {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 1900))?;
                socket.join_multicast_v4(&SSDP_GROUP, &LAN1_IP)?;
                Ok(socket)
            })??;
            let deadline = Instant::now() + Duration::from_secs(2 * u64::from(interval) + 3);
            let mut buf = [0; 2048];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!("no NOTIFY reached lan1 within {interval} s + margin");
                }
                socket.set_read_timeout(Some(left))?;
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if buf[..len].starts_with(b"NOTIFY * HTTP/1.1") {
                    eprintln!(
                        "NOTIFY from {from}:\n{}",
                        String::from_utf8_lossy(&buf[..len])
                    );
                    return Ok(());
                }
            }
        },
    )
}

both_softwires!(notify_reaches_lan: notify_reaches_lan_l2, notify_reaches_lan_l3);

/// lan1 and lan2 send NAT-PMP map requests from the same source port at the same moment;
/// each must get its own answer, from the gateway.
fn natpmp_same_port_two_hosts(softwire: Softwire) -> Result<()> {
    with_portproxy(Lab::builder(softwire), &[], |lab| {
        const SOURCE_PORT: u16 = 40_000;
        let barrier = Barrier::new(2);
        let clients = [(lab.lan(1), 8701, 9701), (lab.lan(2), 8702, 9702)];
        let results: Vec<Result<u16>> = thread::scope(|scope| {
            let threads: Vec<_> = clients
                .iter()
                .map(|&(ns, internal, external)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        ns.enter(|| {
                            natpmp_map_tcp(SOURCE_PORT, internal, external, || {
                                barrier.wait();
                            })
                        })?
                        .with_context(|| format!("NAT-PMP map from {}", ns.role()))
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("no panic"))
                .collect()
        });
        for (result, &(ns, internal, external)) in results.into_iter().zip(&clients) {
            let granted = result?;
            ensure!(
                granted == external,
                "{} got external port {granted}",
                ns.role()
            );
            check_mapping(lab, external, ns, internal)?;
        }
        Ok(())
    })
}

both_softwires!(natpmp_same_port_two_hosts: natpmp_same_port_two_hosts_l2, natpmp_same_port_two_hosts_l3);

/// Sends a NAT-PMP TCP map request (12 bytes, RFC 6886) from `source_port` to the gateway,
/// calling `before_send` once just before the first send, and retries like libnatpmp
/// (250 ms, doubling, here 4 tries). Accepts only a map response from the gateway's port
/// 5351 for `internal`; returns the granted external port.
fn natpmp_map_tcp(
    source_port: u16,
    internal: u16,
    external: u16,
    before_send: impl FnOnce(),
) -> Result<u16> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, source_port))?;
    let gateway = SocketAddrV4::new(LAN_GATEWAY, PCP_PORT);
    let mut request = [0u8; 12];
    request[1] = 2; // op: map TCP
    request[4..6].copy_from_slice(&internal.to_be_bytes());
    request[6..8].copy_from_slice(&external.to_be_bytes());
    request[8..12].copy_from_slice(&600u32.to_be_bytes());
    before_send();
    let mut wait = Duration::from_millis(250);
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        socket.send_to(&request, gateway)?;
        socket.set_read_timeout(Some(wait))?;
        wait *= 2;
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let response = &buf[..len];
        ensure!(
            from == SocketAddr::V4(gateway),
            "response from {from}, not from the gateway {gateway}"
        );
        if len < 16 || response[1] != 0x82 {
            bail!("not a TCP map response: {response:02x?}");
        }
        if u16::from_be_bytes([response[8], response[9]]) != internal {
            bail!("a response for another internal port: {response:02x?}");
        }
        let result = u16::from_be_bytes([response[2], response[3]]);
        ensure!(result == 0, "result code {result}");
        return Ok(u16::from_be_bytes([response[10], response[11]]));
    }
    bail!("no response from {gateway}")
}

/// With `--upnp-tcp 1` the CPE answers HTTP itself: SSDP replies on the LAN point at
/// http://192.168.1.1:5000/, and SOAP through that URL maps ports at the CGN.
fn upnp_tcp_relay(softwire: Softwire) -> Result<()> {
    with_portproxy(Lab::builder(softwire), &["--upnp-tcp", "1"], |lab| {
        let lan1 = lab.lan(1);
        let desc = format!("http://{LAN_GATEWAY}:{IGD_HTTP_PORT}/rootDesc.xml");
        run_expect(
            lan1,
            "upnpc",
            &["-s"],
            &[&format!("desc: {desc}"), "Found valid IGD"],
        )?;
        let host = LAN1_IP.to_string();
        run_expect(
            lan1,
            "upnpc",
            &["-u", &desc, "-a", &host, "8484", "9484", "tcp"],
            &[&format!(
                "external {PUBLIC_IP}:9484 TCP is redirected to internal {host}:8484"
            )],
        )?;
        check_mapping(lab, 9484, lan1, 8484)
    })
}

both_softwires!(upnp_tcp_relay: upnp_tcp_relay_l2, upnp_tcp_relay_l3);
