//! The proxy: a client protocol the CGN does not speak is answered by portproxy and mapped
//! at the CGN in the protocol it does speak; the one it speaks is still relayed. Real
//! clients (`natpmpc`, crab_nat's PCP client) against CGNs that speak only PCP or only
//! NAT-PMP, behind a CPE firewall like OpenWrt's fw4, so a mapping counts only when the
//! internet host reaches the LAN host through it. Each matrix cell runs on every data path
//! and both softwire kinds.

#[macro_use]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{
    ARGS, Down, across_a_restart, cgn_silent, check_mapping, check_mapping_again,
    check_mapping_again_at, logged, mapped_again, natpmpc_delete, natpmpc_map, natpmpc_map_any,
    run_expect, with_lab, with_portproxy,
};
use serde_json::Value;
use tests::{
    CgnKind, Daemon, DataPath, LAN_GATEWAY, LAN1_IP, LAN2_IP, Lab, Netns, PCP_PORT, PUBLIC_IP,
    Softwire, pcp_map_tcp,
};

/// Runs portproxy (with `extra`) in a lab whose CGN speaks `kind` and whose CPE has the
/// fw4-like firewall, then `test`; on the fast path the `kernel` counters must have moved
/// (the programs relayed what the CGN speaks, and passed up what portproxy answers).
/// Prints portproxy's log on failure.
fn with_cgn(
    softwire: Softwire,
    path: DataPath,
    kind: CgnKind,
    extra: &[&str],
    kernel: &[&str],
    test: impl FnOnce(&Lab, &Daemon) -> Result<()>,
) -> Result<()> {
    let builder = Lab::builder(softwire).cgn(kind).cpe_firewall();
    with_portproxy(builder, path, extra, kernel, |lab, portproxy| {
        test(lab, portproxy)
    })
}

/// What `portproxy stats` says the CGN speaks and who answers port 5351.
fn check_plan(lab: &Lab, daemon: &Daemon, speaks: [bool; 3], plan: &str) -> Result<Value> {
    let stats = lab.portproxy_stats(daemon)?;
    let found = [
        stats["cgn_speaks"]["pcp"].as_bool(),
        stats["cgn_speaks"]["nat_pmp"].as_bool(),
        stats["cgn_speaks"]["upnp"].as_bool(),
    ];
    ensure!(
        found == speaks.map(Some),
        "expected the CGN to speak [pcp, nat_pmp, upnp] = {speaks:?}:\n{stats:#}"
    );
    let shown = stats["port_control"].as_str().unwrap_or_default();
    ensure!(
        shown == plan,
        "expected port control {plan:?}, stats say {shown:?}"
    );
    ensure!(
        stats["double_nat"] == false,
        "stats say double NAT: {stats:#}"
    );
    Ok(stats)
}

/// The mapping of `host`:`internal` in `portproxy mappings --json`: (origin, upstream).
fn mapping_of(lab: &Lab, host: Ipv4Addr, internal: u16) -> Result<(String, String)> {
    let json = lab.portproxy_mappings()?;
    let m = json
        .as_array()
        .context("mappings --json is not an array")?
        .iter()
        .find(|m| m["host"] == host.to_string() && m["internal_port"] == internal)
        .with_context(|| format!("no mapping {host}:{internal} in {json:#}"))?;
    let field = |name: &str| m[name].as_str().unwrap_or_default().to_string();
    Ok((field("origin"), field("upstream")))
}

/// The daemon's count of a fate (by id), after the status file's next rewrite (once a second).
fn counter(lab: &Lab, daemon: &Daemon, name: &str) -> Result<u64> {
    std::thread::sleep(Duration::from_millis(1200));
    Ok(lab.portproxy_stats(daemon)?["counters"][name]["daemon"]
        .as_u64()
        .unwrap_or(0))
}

/// A CGN that speaks PCP only (a DS-Lite AFTR): `natpmpc` gets its public address and a
/// mapping from portproxy, which maps with PCP as the host; PCP clients are relayed as
/// before. Both mappings are reachable through the CPE firewall; a NAT-PMP delete removes
/// the mapping at the CGN and in the table.
fn natpmp_client_on_a_pcp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    let kernel = ["pcp_to_cgn", "passed_to_daemon"];
    with_cgn(
        softwire,
        path,
        CgnKind::PcpOnly,
        &[],
        &kernel,
        |lab, portproxy| {
            check_plan(
                lab,
                portproxy,
                [true, false, false],
                "NAT-PMP answered here, mapped with PCP; PCP relayed; UPnP IGD answered here, mapped with PCP",
            )?;
            let out = natpmpc_map(lab.lan(1), 9201, 8201)?;
            ensure!(
                out.contains(&format!("Public IP address : {PUBLIC_IP}")),
                "natpmpc did not get the public address:\n{out}"
            );
            check_mapping(lab, 9201, lab.lan(1), 8201)?;
            ensure!(mapping_of(lab, LAN1_IP, 8201)? == ("nat-pmp".into(), "pcp-map".into()));
            ensure!(counter(lab, portproxy, "nat_pmp_answered")? >= 2);

            let pcp = pcp_map_tcp(lab.lan(2), LAN_GATEWAY, LAN2_IP, 8202, 9202, 600)?;
            ensure!(pcp.external_port == 9202, "{pcp:?}");
            check_mapping(lab, 9202, lab.lan(2), 8202)?;
            ensure!(mapping_of(lab, LAN2_IP, 8202)? == ("pcp-map".into(), "relayed".into()));
            if path != DataPath::FastPath {
                ensure!(counter(lab, portproxy, "pcp_to_cgn")? >= 1);
            }

            natpmpc_delete(lab.lan(1), 9201, 8201)?;
            let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
            ensure!(
                !nat.contains("dport 9201"),
                "the CGN still maps 9201:\n{nat}"
            );
            ensure!(
                mapping_of(lab, LAN1_IP, 8201).is_err(),
                "the table still holds the deleted mapping"
            );
            Ok(())
        },
    )
}
every_path!(natpmp_client_on_a_pcp_cgn);

/// A CGN that speaks NAT-PMP only: a PCP client gets its mapping (its nonce, the public
/// address) from portproxy, which maps with NAT-PMP as the host; `natpmpc` is relayed.
fn pcp_client_on_a_natpmp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    let kernel = ["nat_pmp_to_cgn", "passed_to_daemon"];
    with_cgn(
        softwire,
        path,
        CgnKind::NatPmpOnly,
        &[],
        &kernel,
        |lab, portproxy| {
            check_plan(
                lab,
                portproxy,
                [false, true, false],
                "NAT-PMP relayed; PCP answered here, mapped with NAT-PMP; UPnP IGD answered here, mapped with NAT-PMP",
            )?;
            let pcp = pcp_map_tcp(lab.lan(1), LAN_GATEWAY, LAN1_IP, 8211, 9211, 600)?;
            ensure!(
                pcp.external_port == 9211 && pcp.external_ip == PUBLIC_IP && pcp.lifetime <= 600,
                "{pcp:?}"
            );
            check_mapping(lab, 9211, lab.lan(1), 8211)?;
            ensure!(mapping_of(lab, LAN1_IP, 8211)? == ("pcp-map".into(), "nat-pmp".into()));
            ensure!(counter(lab, portproxy, "pcp_answered")? >= 1);

            natpmpc_map(lab.lan(2), 9212, 8212)?;
            check_mapping(lab, 9212, lab.lan(2), 8212)?;
            ensure!(mapping_of(lab, LAN2_IP, 8212)? == ("nat-pmp".into(), "relayed".into()));
            Ok(())
        },
    )
}
every_path!(pcp_client_on_a_natpmp_cgn);

/// `--mode proxy` answers both protocols even when the CGN speaks both, mapping with PCP.
fn proxy_mode_answers_both(softwire: Softwire, path: DataPath) -> Result<()> {
    let args = ["--mode", "proxy"];
    let kernel = ["passed_to_daemon"];
    with_cgn(
        softwire,
        path,
        CgnKind::Everything,
        &args,
        &kernel,
        |lab, portproxy| {
            check_plan(
                lab,
                portproxy,
                [true, true, true],
                "NAT-PMP answered here, mapped with PCP; PCP answered here, mapped with PCP; UPnP IGD answered here, mapped with PCP",
            )?;
            natpmpc_map(lab.lan(1), 9221, 8221)?;
            check_mapping(lab, 9221, lab.lan(1), 8221)?;
            let pcp = pcp_map_tcp(lab.lan(2), LAN_GATEWAY, LAN2_IP, 8222, 9222, 600)?;
            ensure!(pcp.external_port == 9222, "{pcp:?}");
            check_mapping(lab, 9222, lab.lan(2), 8222)?;
            ensure!(mapping_of(lab, LAN1_IP, 8221)? == ("nat-pmp".into(), "pcp-map".into()));
            ensure!(mapping_of(lab, LAN2_IP, 8222)? == ("pcp-map".into(), "pcp-map".into()));
            // Another nonce for the same mapping is refused (RFC 6887 §11.3).
            let other = ask(lab.lan(2), &pcp_map(LAN2_IP, 8222, &[]))?;
            ensure!(
                other.len() >= 24 && other[..2] == [2, 0x81] && other[3] == 2,
                "a MAP with another nonce got {other:02x?}, not NOT_AUTHORIZED"
            );
            Ok(())
        },
    )
}
every_path!(proxy_mode_answers_both);

/// A CGN that speaks UPnP only (an IGD of `kind`'s version): both NAT-PMP and PCP clients
/// are answered here and mapped with AddPortMapping at the CGN's IGD (NewInternalClient:
/// the host); reachable; a NAT-PMP client asking for a port another host has gets another
/// one (AddAnyPortMapping on IGD:2, further AddPortMapping tries on IGD:1); a NAT-PMP
/// delete is a DeletePortMapping.
fn upnp_only_cgn(softwire: Softwire, path: DataPath, kind: CgnKind) -> Result<()> {
    let kernel = ["passed_to_daemon"];
    with_cgn(softwire, path, kind, &[], &kernel, |lab, portproxy| {
        check_plan(
            lab,
            portproxy,
            [false, false, true],
            "NAT-PMP answered here, mapped with UPnP IGD; PCP answered here, mapped with UPnP IGD; UPnP IGD relayed",
        )?;
        let out = natpmpc_map(lab.lan(1), 9281, 8281)?;
        ensure!(
            out.contains(&format!("Public IP address : {PUBLIC_IP}")),
            "natpmpc did not get the public address (GetExternalIPAddress):\n{out}"
        );
        check_mapping(lab, 9281, lab.lan(1), 8281)?;
        ensure!(mapping_of(lab, LAN1_IP, 8281)? == ("nat-pmp".into(), "upnp".into()));
        let pcp = pcp_map_tcp(lab.lan(2), LAN_GATEWAY, LAN2_IP, 8282, 9282, 600)?;
        ensure!(
            pcp.external_port == 9282 && pcp.external_ip == PUBLIC_IP,
            "{pcp:?}"
        );
        check_mapping(lab, 9282, lab.lan(2), 8282)?;
        // 9282 is lan2's now: NAT-PMP takes another port rather than failing
        // (AddAnyPortMapping on an IGD:2; on an IGD:1 portproxy tries others itself).
        let other = natpmpc_map_any(lab.lan(1), 9282, 8283)?;
        ensure!(other != 9282, "lan1 got lan2's port 9282");
        check_mapping(lab, other, lab.lan(1), 8283)?;
        check_mapping(lab, 9282, lab.lan(2), 8282)?;
        natpmpc_delete(lab.lan(1), 9281, 8281)?;
        let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
        ensure!(
            !nat.contains("dport 9281"),
            "the CGN still maps 9281:\n{nat}"
        );
        Ok(())
    })
}

fn upnp_igd2_only_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    upnp_only_cgn(softwire, path, CgnKind::UpnpOnly)
}
every_path!(upnp_igd2_only_cgn);

fn upnp_igd1_only_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    upnp_only_cgn(softwire, path, CgnKind::UpnpIgd1Only)
}
every_path!(upnp_igd1_only_cgn);

/// Sends `request` to the gateway's port 5351 from `ns` and returns the answer.
fn ask(ns: &Netns, request: &[u8]) -> Result<Vec<u8>> {
    ns.enter(|| -> Result<Vec<u8>> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0; 1200];
        // Well past the time portproxy may ask the CGN (three tries, 1.75 s) before it answers.
        for _ in 0..10 {
            socket.send_to(request, SocketAddrV4::new(LAN_GATEWAY, PCP_PORT))?;
            if let Ok((len, _)) = socket.recv_from(&mut buf) {
                return Ok(buf[..len].to_vec());
            }
        }
        bail!("no answer to {request:02x?} from {}", ns.role())
    })?
}

/// A PCP MAP request (TCP, 600 s) with `client` in the client-IP field and `options` appended.
fn pcp_map(client: Ipv4Addr, internal: u16, options: &[u8]) -> Vec<u8> {
    let mut m = vec![2, 1, 0, 0];
    m.extend_from_slice(&600u32.to_be_bytes());
    m.extend_from_slice(&client.to_ipv6_mapped().octets());
    m.extend_from_slice(&[9; 12]); // nonce
    m.extend_from_slice(&[6, 0, 0, 0]);
    m.extend_from_slice(&internal.to_be_bytes());
    m.extend_from_slice(&internal.to_be_bytes());
    m.extend_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    m.extend_from_slice(options);
    m
}

/// Requests a server must refuse get the result code RFC 6887 and RFC 6886 name, with the
/// request copied and the server's epoch; the server keeps answering valid ones after.
fn refusals(softwire: Softwire, path: DataPath) -> Result<()> {
    let args = ["--mode", "proxy"];
    with_cgn(
        softwire,
        path,
        CgnKind::PcpOnly,
        &args,
        &["passed_to_daemon"],
        |lab, _| {
            let lan1 = lab.lan(1);
            let pcp_result = |request: &[u8]| -> Result<u8> {
                let answer = ask(lan1, request)?;
                ensure!(
                    answer.len() >= 24 && answer[0] == 2 && answer[1] == request[1] | 0x80,
                    "not a PCP response to {request:02x?}: {answer:02x?}"
                );
                Ok(answer[3])
            };
            let mut v1 = pcp_map(LAN1_IP, 8231, &[]);
            v1[0] = 1;
            ensure!(pcp_result(&v1)? == 1, "UNSUPP_VERSION");
            ensure!(
                pcp_result(&pcp_map(LAN1_IP, 8231, &[])[..20])? == 3,
                "MALFORMED_REQUEST"
            );
            let mut peer = pcp_map(LAN1_IP, 8231, &[0; 20]);
            peer[1] = 2;
            ensure!(pcp_result(&peer)? == 4, "UNSUPP_OPCODE");
            let mut filter = vec![3, 0, 0, 20];
            filter.extend_from_slice(&[0; 20]);
            ensure!(
                pcp_result(&pcp_map(LAN1_IP, 8231, &filter))? == 5,
                "UNSUPP_OPTION"
            );
            ensure!(
                pcp_result(&pcp_map(LAN1_IP, 8231, &[1, 0, 0, 16]))? == 6,
                "MALFORMED_OPTION"
            );
            let mut third_party = vec![1, 0, 0, 16];
            third_party.extend_from_slice(&LAN2_IP.to_ipv6_mapped().octets());
            ensure!(
                pcp_result(&pcp_map(LAN1_IP, 8231, &third_party))? == 2,
                "NOT_AUTHORIZED for another host"
            );
            ensure!(
                pcp_result(&pcp_map(LAN2_IP, 8231, &[]))? == 12,
                "ADDRESS_MISMATCH"
            );
            let unsupported = ask(lan1, &[0, 7])?;
            ensure!(
                unsupported.len() == 8 && unsupported[1] == 0x87 && unsupported[3] == 5,
                "NAT-PMP unsupported opcode: {unsupported:02x?}"
            );
            // Still serving.
            natpmpc_map(lan1, 9231, 8231)?;
            check_mapping(lab, 9231, lan1, 8231)
        },
    )
}
every_path!(refusals);

/// The announcements (RFC 6886 §3.2.1, RFC 6887 §14.1.3) that reach `socket` (port 5350 in
/// a LAN host) from the gateway within `within`: the epoch of the NAT-PMP one that says
/// `public`, and whether a PCP ANNOUNCE came, once both did or time is up.
fn announcements(
    socket: &UdpSocket,
    public: Ipv4Addr,
    within: Duration,
) -> Result<(Option<u32>, bool)> {
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let start = Instant::now();
    let (mut natpmp, mut pcp) = (None, false);
    let mut buf = [0; 1200];
    while start.elapsed() < within && !(natpmp.is_some() && pcp) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if from != std::net::SocketAddr::from((LAN_GATEWAY, PCP_PORT)) {
            continue;
        }
        match &buf[..len] {
            [0, 0x80, 0, 0, e0, e1, e2, e3, addr @ ..] if addr == public.octets() => {
                natpmp = Some(u32::from_be_bytes([*e0, *e1, *e2, *e3]));
            }
            [2, 0x80, ..] if len == 24 => pcp = true,
            _ => {}
        }
    }
    Ok((natpmp, pcp))
}

/// The CGN reboots and loses every mapping: within 10 s portproxy notices (its epoch),
/// maps again what its table holds (the proxied NAT-PMP mapping with its PCP nonce, the
/// relayed PCP one with the client's nonce), both are reachable again, and the LAN hears a
/// NAT-PMP announcement with a new epoch and the CGN's own PCP ANNOUNCE, passed on.
fn mappings_survive_a_cgn_reboot(softwire: Softwire, path: DataPath) -> Result<()> {
    with_lab(
        Lab::builder(softwire).cgn(CgnKind::PcpOnly).cpe_firewall(),
        |lab| {
            let portproxy = lab.spawn_portproxy_on(path, &ARGS)?;
            logged(&portproxy, || {
                natpmpc_map(lab.lan(1), 9241, 8241)?;
                pcp_map_tcp(lab.lan(2), LAN_GATEWAY, LAN2_IP, 8242, 9242, 600)?;
                // An epoch tells a restart from a slow clock only beyond a slack of 2 s (RFC
                // 6887 §8.5): the CGN must have been up longer than that when portproxy last
                // heard from it, as any real one has been, and not just started with the lab.
                std::thread::sleep(Duration::from_secs(4));
                // Every host is in 224.0.0.1; a socket on the port gets what is sent there.
                let listener = lab
                    .lan(1)
                    .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5350)))??;
                lab.reboot_cgn()?;
                let within = Duration::from_secs(10);
                let took = mapped_again(lab, 9241, LAN1_IP, 8241, within)?;
                eprintln!("the proxied mapping was back after {took:?}");
                mapped_again(lab, 9242, LAN2_IP, 8242, within)?;
                check_mapping_again(lab, 9241, lab.lan(1), 8241)?;
                check_mapping_again(lab, 9242, lab.lan(2), 8242)?;
                // NAT-PMP is answered here: portproxy's own announcement, a new epoch. PCP
                // is relayed: the CGN's own ANNOUNCE, passed on.
                let (natpmp, pcp) = announcements(&listener, PUBLIC_IP, within)?;
                ensure!(
                    natpmp.is_some_and(|epoch| epoch < 30) && pcp,
                    "expected a NAT-PMP announcement with a new epoch and the CGN's PCP \
                     ANNOUNCE from the gateway: NAT-PMP epoch {natpmp:?}, PCP {pcp}"
                );
                ensure!(counter(lab, &portproxy, "mappings_recreated")? >= 2);
                lab.check_data_path(&portproxy, path, &["pcp_to_cgn", "passed_to_daemon"])
            })
        },
    )
}
every_path!(mappings_survive_a_cgn_reboot);

/// The carrier renumbers the CGN's external address: portproxy notices (a PCP CGN resets
/// its epoch, RFC 6887 §8.5; a NAT-PMP one answers with the new address), maps again what
/// its table holds, and from then on `portproxy mappings` and the NAT-PMP announcements on
/// the LAN say the new address, at which the internet host reaches both LAN hosts (one
/// mapping proxied, the other relayed, whichever protocol the CGN of `kind` speaks).
fn external_address_change(softwire: Softwire, path: DataPath, kind: CgnKind) -> Result<()> {
    const RENUMBERED: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 9);
    with_lab(Lab::builder(softwire).cgn(kind).cpe_firewall(), |lab| {
        let portproxy = lab.spawn_portproxy_on(path, &ARGS)?;
        logged(&portproxy, || {
            natpmpc_map(lab.lan(1), 9281, 8281)?;
            pcp_map_tcp(lab.lan(2), LAN_GATEWAY, LAN2_IP, 8282, 9282, 600)?;
            // The epoch's 2 s slack (see mappings_survive_a_cgn_reboot).
            std::thread::sleep(Duration::from_secs(4));
            let listener = lab
                .lan(1)
                .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5350)))??;
            lab.change_public_address(RENUMBERED)?;
            let (natpmp, _) = announcements(&listener, RENUMBERED, Duration::from_secs(10))?;
            ensure!(
                natpmp.is_some(),
                "no NAT-PMP announcement of {RENUMBERED} on the LAN within 10 s"
            );
            for (host, internal) in [(LAN1_IP, 8281), (LAN2_IP, 8282)] {
                let external = external_of(lab, host, internal)?;
                ensure!(
                    external == RENUMBERED,
                    "portproxy mappings still says {external} for {host}:{internal}"
                );
            }
            check_mapping_again_at(lab, RENUMBERED, 9281, lab.lan(1), 8281)?;
            check_mapping_again_at(lab, RENUMBERED, 9282, lab.lan(2), 8282)
        })
    })
}

fn address_change_on_a_pcp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    external_address_change(softwire, path, CgnKind::PcpOnly)
}
every_path!(address_change_on_a_pcp_cgn);

fn address_change_on_a_natpmp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    external_address_change(softwire, path, CgnKind::NatPmpOnly)
}
every_path!(address_change_on_a_natpmp_cgn);

/// The external address `portproxy mappings` shows for `host`:`internal`.
fn external_of(lab: &Lab, host: Ipv4Addr, internal: u16) -> Result<Ipv4Addr> {
    let json = lab.portproxy_mappings()?;
    let m = json
        .as_array()
        .context("mappings --json is not an array")?
        .iter()
        .find(|m| m["host"] == host.to_string() && m["internal_port"] == internal)
        .with_context(|| format!("no mapping {host}:{internal} in {json:#}"))?;
    m["external_address"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .with_context(|| format!("no external address in {m:#}"))
}

/// The table survives: after `down`, a new portproxy with the same `--mappings-file` lists
/// the same mappings, opens their holes again and asks the CGN for them again (what a
/// rebooted CGN lost is back within 10 s), so the internet host reaches both LAN hosts.
fn table_survives(softwire: Softwire, down: Down) -> Result<()> {
    with_lab(
        Lab::builder(softwire).cgn(CgnKind::PcpOnly).cpe_firewall(),
        |lab| {
            let fields = |v: &Value| -> Vec<(Value, Value, Value, Value)> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        (
                            m["host"].clone(),
                            m["external_port"].clone(),
                            m["origin"].clone(),
                            m["upstream"].clone(),
                        )
                    })
                    .collect()
            };
            across_a_restart(
                lab,
                DataPath::Sockets,
                &[],
                |lab| {
                    natpmpc_map(lab.lan(1), 9251, 8251)?;
                    pcp_map_tcp(lab.lan(2), LAN_GATEWAY, LAN2_IP, 8252, 9252, 600)?;
                    lab.portproxy_mappings()
                },
                |lab, first| down.take(lab, first),
                |lab, _, before| {
                    let after = lab.portproxy_mappings()?;
                    ensure!(
                        fields(&after) == fields(&before),
                        "restored {after:#}\nexpected {before:#}"
                    );
                    let within = Duration::from_secs(10);
                    mapped_again(lab, 9251, LAN1_IP, 8251, within)?;
                    mapped_again(lab, 9252, LAN2_IP, 8252, within)?;
                    // The keeper may still be asking the CGN for the restored mappings.
                    check_mapping_again(lab, 9251, lab.lan(1), 8251)?;
                    check_mapping_again(lab, 9252, lab.lan(2), 8252)?;
                    // The NAT-PMP client renews through the restored entry: same nonce upstream.
                    natpmpc_map(lab.lan(1), 9251, 8251).map(drop)
                },
            )
        },
    )
}

both_softwires!(table_survives(Down::Restart): table_survives_a_restart_l2, table_survives_a_restart_l3);
both_softwires!(table_survives(Down::Reboot): table_survives_a_router_reboot_l2, table_survives_a_router_reboot_l3);

/// A NAT-PMP TCP map request for `internal` (suggesting the same external port), 600 s.
fn natpmp_map_request(internal: u16) -> Vec<u8> {
    let mut m = vec![0, 2, 0, 0];
    m.extend_from_slice(&internal.to_be_bytes());
    m.extend_from_slice(&internal.to_be_bytes());
    m.extend_from_slice(&600u32.to_be_bytes());
    m
}

/// The result code of a NAT-PMP map response.
fn natpmp_result(answer: &[u8]) -> Result<u16> {
    ensure!(
        answer.len() == 16 && answer[0] == 0 && answer[1] == 0x82,
        "not a NAT-PMP TCP map response: {answer:02x?}"
    );
    Ok(u16::from_be_bytes([answer[2], answer[3]]))
}

/// A host over its mapping quota gets "out of resources" from portproxy, and the mapping
/// the CGN granted for it is deleted there again: nothing exists that has no hole.
fn proxied_quota(softwire: Softwire, path: DataPath) -> Result<()> {
    let args = ["--max-mappings-per-host", "2"];
    with_cgn(softwire, path, CgnKind::PcpOnly, &args, &[], |lab, _| {
        for internal in [8261, 8262] {
            ensure!(natpmp_result(&ask(lab.lan(1), &natpmp_map_request(internal))?)? == 0);
        }
        let third = natpmp_result(&ask(lab.lan(1), &natpmp_map_request(8263))?)?;
        ensure!(
            third == 4,
            "the third mapping got result {third}, not 4 (out of resources)"
        );
        let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
        ensure!(
            nat.contains("dport 8262") && !nat.contains("dport 8263"),
            "the CGN must hold the first two and not the refused one:\n{nat}"
        );
        Ok(())
    })
}
every_path!(proxied_quota);

/// The CGN does not answer for a while: portproxy answers NETWORK_FAILURE (a short error
/// clients retry) after its three tries, and maps as soon as the CGN answers again.
fn cgn_unreachable_then_back(softwire: Softwire, path: DataPath) -> Result<()> {
    with_cgn(softwire, path, CgnKind::PcpOnly, &[], &[], |lab, _| {
        natpmpc_map(lab.lan(1), 9271, 8271)?;
        cgn_silent(lab, true)?;
        let failed = natpmp_result(&ask(lab.lan(1), &natpmp_map_request(8272))?)?;
        ensure!(
            failed == 3,
            "result {failed} while the CGN is silent, not 3 (network failure)"
        );
        cgn_silent(lab, false)?;
        natpmpc_map(lab.lan(1), 9272, 8272)?;
        check_mapping(lab, 9272, lab.lan(1), 8272)
    })
}
every_path!(cgn_unreachable_then_back);
