//! The mapping table and the firewall holes, behind a CPE firewall like OpenWrt's fw4 (new
//! connections from the softwire rejected): a mapping granted by the CGN is reachable from the
//! internet host exactly while portproxy holds it, and nothing else is. Each scenario checks
//! the nftables set in the CPE and `portproxy mappings`, not only a log line.
//!
//! Every scenario runs on each data path (sockets, fast path, forced fallback) and both
//! softwire kinds: on the fast path the programs hand grants to userspace (`GRANTS`), which
//! opens the hole and then delivers them.

#[macro_use]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{ARGS, natpmpc_delete, run_expect, with_lab, with_portproxy};
use serde_json::Value;
use tests::{
    CGN_SOFTWIRE_IP, Daemon, DataPath, IGD_HTTP_PORT, LAN_GATEWAY, LAN1_IP, LAN2_IP, Lab, Netns,
    PCP_PORT, PUBLIC_IP, Softwire, pcp_map_tcp, send_raw_udp,
};

/// Runs portproxy (`extra` added to the usual arguments) in a lab whose CPE has the fw4-like
/// firewall, then `test`; prints portproxy's log on failure.
fn behind_firewall(
    softwire: Softwire,
    path: DataPath,
    extra: &[&str],
    test: impl FnOnce(&Lab, &Daemon) -> Result<()>,
) -> Result<()> {
    let builder = Lab::builder(softwire).cpe_firewall();
    with_portproxy(builder, path, extra, &[], |lab, portproxy| {
        test(lab, portproxy)
    })
}

/// `natpmpc -a external internal tcp lifetime` from `ns`, expecting success.
fn natpmp_map(ns: &Netns, external: u16, internal: u16, lifetime: u32) -> Result<()> {
    run_expect(
        ns,
        "natpmpc",
        &[
            "-g",
            &LAN_GATEWAY.to_string(),
            "-a",
            &external.to_string(),
            &internal.to_string(),
            "tcp",
            &lifetime.to_string(),
        ],
        &[&format!(
            "Mapped public port {external} protocol TCP to local port {internal}"
        )],
    )
    .map(drop)
}

/// A NAT-PMP TCP map request (600 s) from `ns`, sent every 500 ms for up to 5 s until a
/// success response for `internal` arrives (anything else is ignored).
fn natpmp_map_matching(ns: &Netns, external: u16, internal: u16) -> Result<()> {
    ns.enter(|| -> Result<()> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let mut request = vec![0, 2, 0, 0];
        request.extend_from_slice(&internal.to_be_bytes());
        request.extend_from_slice(&external.to_be_bytes());
        request.extend_from_slice(&600u32.to_be_bytes());
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0; 64];
        while Instant::now() < deadline {
            socket.send_to(&request, (LAN_GATEWAY, PCP_PORT))?;
            while let Ok((len, _)) = socket.recv_from(&mut buf) {
                if len == 16 && buf[1] == 0x82 && buf[8..10] == internal.to_be_bytes() {
                    ensure!(buf[2..4] == [0, 0], "result {:02x?}", &buf[2..4]);
                    return Ok(());
                }
            }
        }
        bail!(
            "no answer to the map request for {internal} from {}",
            ns.role()
        )
    })?
}

/// The internet host connects to PUBLIC_IP:`external` and must reach `ns`'s server on `internal`.
fn reachable(lab: &Lab, ns: &Netns, internal: u16, external: u16) -> Result<()> {
    let _server = ns.serve_tcp(internal)?;
    let reply = lab
        .inet()
        .connect_tcp(SocketAddr::from((PUBLIC_IP, external)))?;
    ensure!(
        reply == ns.role(),
        "inet reached {reply:?} instead of {}",
        ns.role()
    );
    Ok(())
}

/// The internet host's connection to PUBLIC_IP:`external` fails although `ns` listens.
fn refused(lab: &Lab, ns: &Netns, internal: u16, external: u16) -> Result<()> {
    let _server = ns.serve_tcp(internal)?;
    match lab
        .inet()
        .connect_tcp(SocketAddr::from((PUBLIC_IP, external)))
    {
        Ok(reply) => bail!("inet reached {reply:?} on {external}, which must be shut"),
        Err(_) => Ok(()),
    }
}

/// The holes as `host:port/proto` strings, sorted.
fn hole_names(lab: &Lab) -> Result<Vec<String>> {
    let mut names: Vec<String> = lab
        .holes()?
        .iter()
        .map(|h| format!("{}:{}/{}", h.host, h.port, h.protocol))
        .collect();
    names.sort();
    Ok(names)
}

/// `portproxy mappings --json` as `host:internal/proto->external` strings, sorted.
fn mapping_names(lab: &Lab) -> Result<Vec<String>> {
    let json = lab.portproxy_mappings()?;
    let mut names: Vec<String> = json
        .as_array()
        .context("mappings --json is not an array")?
        .iter()
        .map(|m| {
            format!(
                "{}:{}/{}->{}",
                m["host"].as_str().unwrap_or_default(),
                m["internal_port"],
                m["protocol"].as_str().unwrap_or_default(),
                m["external_port"]
            )
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The daemon's count of a fate (by id) from `portproxy stats`.
fn counter(lab: &Lab, daemon: &Daemon, name: &str) -> Result<u64> {
    // The status file is rewritten once a second.
    thread::sleep(Duration::from_millis(1200));
    let stats: Value = lab.portproxy_stats(daemon)?;
    Ok(stats["counters"][name]["daemon"].as_u64().unwrap_or(0))
}

/// Granted: a hole for exactly that host, port and protocol, with the lifetime as its
/// timeout, and the internet host gets through. Deleted (lifetime 0): the hole and the
/// table entry are gone and the internet host is refused.
fn granted_then_deleted(softwire: Softwire, path: DataPath) -> Result<()> {
    behind_firewall(softwire, path, &[], |lab, _| {
        natpmp_map(lab.lan(1), 9181, 8181, 600)?;
        let holes = lab.holes()?;
        ensure!(
            holes.len() == 1
                && holes[0].host == LAN1_IP.to_string()
                && holes[0].port == 8181
                && holes[0].protocol == "tcp"
                && (590..=600).contains(&holes[0].expires),
            "expected one hole 192.168.1.2:8181/tcp expiring in ~600 s: {holes:?}"
        );
        let mappings = lab.portproxy_mappings()?;
        let m = &mappings[0];
        ensure!(
            m["external_address"] == PUBLIC_IP.to_string()
                && m["external_port"] == 9181
                && m["origin"] == "nat-pmp"
                && m["client"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("192.168.1.2:")),
            "unexpected portproxy mappings: {mappings:#}"
        );
        reachable(lab, lab.lan(1), 8181, 9181)?;
        natpmpc_delete(lab.lan(1), 9181, 8181)?;
        ensure!(hole_names(lab)?.is_empty(), "a hole after the delete");
        ensure!(mapping_names(lab)?.is_empty(), "a mapping after the delete");
        refused(lab, lab.lan(1), 8181, 9181)
    })
}

every_path!(granted_then_deleted);

/// A mapping with a short lifetime: reachable while it lasts, refused within a second of
/// its expiry, with neither hole nor table entry left.
fn expired_then_refused(softwire: Softwire, path: DataPath) -> Result<()> {
    const LIFETIME: u64 = 4;
    behind_firewall(softwire, path, &[], |lab, _| {
        natpmp_map(lab.lan(1), 9182, 8182, LIFETIME as u32)?;
        // The hole was open before natpmpc saw the grant, so it ends by `end` at the latest.
        let end = Instant::now() + Duration::from_secs(LIFETIME);
        let expires = lab.portproxy_mappings()?[0]["expires_in_secs"].as_u64();
        ensure!(
            expires.is_some_and(|s| s + 1 >= LIFETIME && s <= LIFETIME),
            "the CGN granted another lifetime than {LIFETIME} s: {expires:?}"
        );
        reachable(lab, lab.lan(1), 8182, 9182)?;
        thread::sleep(end.saturating_duration_since(Instant::now() + Duration::from_secs(1)));
        ensure!(
            hole_names(lab)?.len() == 1,
            "the hole closed more than a second before the mapping expired"
        );
        while !hole_names(lab)?.is_empty() {
            ensure!(
                Instant::now() < end + Duration::from_secs(1),
                "the hole outlived the mapping's expiry by a second"
            );
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "hole gone {:?} after the mapping's expiry at the latest",
            Instant::now().saturating_duration_since(end)
        );
        refused(lab, lab.lan(1), 8182, 9182)?;
        // The daemon's table sweeps once a second.
        thread::sleep(Duration::from_millis(1100));
        ensure!(
            mapping_names(lab)?.is_empty(),
            "the table kept an expired mapping"
        );
        Ok(())
    })
}

every_path!(expired_then_refused);

/// lan1 and lan2 use the same internal port; each is reachable on its own external port,
/// through its own hole.
fn two_hosts_same_internal_port(softwire: Softwire, path: DataPath) -> Result<()> {
    behind_firewall(softwire, path, &[], |lab, _| {
        natpmp_map(lab.lan(1), 9281, 8280, 600)?;
        natpmp_map(lab.lan(2), 9282, 8280, 600)?;
        let holes = hole_names(lab)?;
        ensure!(
            holes == [format!("{LAN1_IP}:8280/tcp"), format!("{LAN2_IP}:8280/tcp")],
            "unexpected holes {holes:?}"
        );
        reachable(lab, lab.lan(1), 8280, 9281)?;
        reachable(lab, lab.lan(2), 8280, 9282)
    })
}

every_path!(two_hosts_same_internal_port);

/// The negative control: with `--firewall off` the CGN's grant is useless behind fw4,
/// which is the problem the holes solve (and shows the lab's firewall really rejects).
fn firewall_off_leaves_the_mapping_shut(softwire: Softwire, path: DataPath) -> Result<()> {
    behind_firewall(softwire, path, &["--firewall", "off"], |lab, _| {
        natpmp_map(lab.lan(1), 9183, 8183, 600)?;
        ensure!(
            !lab.has_portproxy_table()?,
            "a portproxy table with --firewall off"
        );
        ensure!(
            mapping_names(lab)? == ["192.168.1.2:8183/tcp->9183"],
            "the table learns the mapping with or without holes"
        );
        refused(lab, lab.lan(1), 8183, 9183)
    })
}

every_path!(firewall_off_leaves_the_mapping_shut);

/// Table and holes are removed when portproxy stops, and a table left by a killed run is
/// replaced at start (its holes with it).
fn removed_on_exit_replaced_after_kill(softwire: Softwire, path: DataPath) -> Result<()> {
    with_lab(Lab::builder(softwire).cpe_firewall(), |lab| {
        let mut first = lab.spawn_portproxy_on(path, &ARGS)?;
        natpmp_map(lab.lan(1), 9184, 8184, 600)?;
        ensure!(hole_names(lab)?.len() == 1, "no hole for the mapping");
        first.kill()?;
        ensure!(lab.has_portproxy_table()?, "the kill took the table along?");
        let second = lab.spawn_portproxy_on(path, &ARGS)?;
        ensure!(
            hole_names(lab)?.is_empty(),
            "the new run kept the killed run's holes"
        );
        drop(second);
        ensure!(!lab.has_portproxy_table()?, "the table outlived the daemon");
        Ok(())
    })
}

every_path!(removed_on_exit_replaced_after_kill);

// ---------------------------------------------------------------------------------------------
// Hostile

/// A reply forged from the CGN's address and port, for a client tuple that has a request in
/// flight but asked for no mapping, is relayed (it comes from the CGN) but opens no hole.
fn forged_grant_opens_no_hole(softwire: Softwire, path: DataPath) -> Result<()> {
    behind_firewall(softwire, path, &[], |lab, portproxy| {
        // lan1 asks for the public address only, from a fixed port.
        let socket = lab.lan(1).enter(|| -> Result<UdpSocket> {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 41000))?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.send_to(&[0, 0], (LAN_GATEWAY, PCP_PORT))?;
            let mut buf = [0; 64];
            socket
                .recv_from(&mut buf)
                .context("no public address answer")?;
            Ok(socket)
        })??;
        // The CGN's namespace sends a NAT-PMP TCP map "grant" for 8185 to that tuple.
        let mut forged = vec![0, 0x82, 0, 0, 0, 0, 0, 9];
        forged.extend_from_slice(&8185u16.to_be_bytes());
        forged.extend_from_slice(&9185u16.to_be_bytes());
        forged.extend_from_slice(&600u32.to_be_bytes());
        lab.cgn().enter(|| {
            send_raw_udp(
                SocketAddrV4::new(CGN_SOFTWIRE_IP, PCP_PORT),
                SocketAddrV4::new(LAN1_IP, 41000),
                &forged,
            )
        })??;
        let mut buf = [0; 64];
        let delivered = lab.lan(1).enter(|| socket.recv_from(&mut buf).is_ok())?;
        ensure!(
            delivered,
            "the forged reply was not relayed, so this test proves nothing"
        );
        ensure!(hole_names(lab)?.is_empty(), "a forged grant opened a hole");
        ensure!(
            mapping_names(lab)?.is_empty(),
            "a forged grant made a mapping"
        );
        ensure!(
            counter(lab, portproxy, "grants_unmatched")? >= 1,
            "the forged grant was not counted"
        );
        refused(lab, lab.lan(1), 8185, 9185)
    })
}

every_path!(forged_grant_opens_no_hole);

/// A PCP MAP: learned with its origin and nonce, and reachable through its hole.
fn pcp_granted_then_reachable(softwire: Softwire, path: DataPath) -> Result<()> {
    behind_firewall(softwire, path, &[], |lab, _| {
        let granted = pcp_map_tcp(lab.lan(1), LAN_GATEWAY, LAN1_IP, 8383, 9383, 600)?;
        ensure!(
            granted.external_port == 9383,
            "unexpected grant {granted:?}"
        );
        ensure!(
            hole_names(lab)? == [format!("{LAN1_IP}:8383/tcp")],
            "no hole for the PCP mapping"
        );
        let mappings = lab.portproxy_mappings()?;
        ensure!(
            mappings[0]["origin"] == "pcp-map"
                && mappings[0]["nonce"].as_str().is_some_and(|n| n.len() == 24)
                && mappings[0]["external_address"] == PUBLIC_IP.to_string(),
            "unexpected portproxy mappings: {mappings:#}"
        );
        reachable(lab, lab.lan(1), 8383, 9383)
    })
}

every_path!(pcp_granted_then_reachable);

/// A PCP MAP request from lan1 with a THIRD_PARTY option naming `third_party`; returns the
/// result code of the CGN's answer.
fn pcp_map_third_party(lab: &Lab, third_party: Ipv4Addr, internal: u16) -> Result<u8> {
    let mut request = vec![2, 1, 0, 0];
    request.extend_from_slice(&600u32.to_be_bytes());
    request.extend_from_slice(&LAN1_IP.to_ipv6_mapped().octets());
    request.extend_from_slice(&[0x5a; 12]); // nonce
    request.extend_from_slice(&[6, 0, 0, 0]); // TCP
    request.extend_from_slice(&internal.to_be_bytes());
    request.extend_from_slice(&(internal + 1000).to_be_bytes());
    request.extend_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    request.extend_from_slice(&[1, 0, 0, 16]); // THIRD_PARTY
    request.extend_from_slice(&third_party.to_ipv6_mapped().octets());
    lab.lan(1).enter(|| -> Result<u8> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.send_to(&request, (LAN_GATEWAY, PCP_PORT))?;
        let mut buf = [0; 1100];
        let (len, _) = socket
            .recv_from(&mut buf)
            .context("no answer to the PCP MAP")?;
        ensure!(
            len >= 60 && buf[1] == 0x81,
            "not a MAP response: {:02x?}",
            &buf[..len]
        );
        Ok(buf[3])
    })?
}

/// The CGN grants a mapping for the CPE's own LAN address (THIRD_PARTY 192.168.1.1): the
/// CPE's own services are never exposed, so no hole opens and the refusal is counted. A
/// grant for another LAN host (lan2) is that host's mapping: its hole opens.
fn cpe_address_never_exposed(softwire: Softwire, path: DataPath) -> Result<()> {
    behind_firewall(softwire, path, &[], |lab, portproxy| {
        let result = pcp_map_third_party(lab, LAN_GATEWAY, 8386)?;
        ensure!(
            result == 0,
            "the CGN refused (result {result}), so this proves nothing"
        );
        ensure!(
            hole_names(lab)?.is_empty(),
            "a hole for the CPE's own address"
        );
        ensure!(
            mapping_names(lab)?.is_empty(),
            "a mapping for the CPE's own address"
        );
        ensure!(
            counter(lab, portproxy, "grants_refused_not_lan")? == 1,
            "the refusal was not counted"
        );
        let result = pcp_map_third_party(lab, LAN2_IP, 8387)?;
        ensure!(
            result == 0,
            "the CGN refused the mapping for lan2 (result {result})"
        );
        ensure!(
            hole_names(lab)? == [format!("{LAN2_IP}:8387/tcp")],
            "no hole for the mapping the CGN granted lan2"
        );
        reachable(lab, lab.lan(2), 8387, 9387)
    })
}

every_path!(cpe_address_never_exposed);

/// lan1 floods map requests for `FLOOD` internal ports (rate limit off): the CGN grants them
/// all, but lan1 gets no more holes than its quota (3), the table no more than its total
/// (4, so lan2's second grant finds it full), and each refusal is counted.
fn flood_stays_within_the_quota(softwire: Softwire, path: DataPath) -> Result<()> {
    const FLOOD: usize = 12;
    let extra = [
        "--rate-limit",
        "0",
        "--max-mappings-per-host",
        "3",
        "--max-mappings",
        "4",
    ];
    behind_firewall(softwire, path, &extra, |lab, portproxy| {
        // One socket (client tuple) per request, all sent at once.
        let granted = lab.lan(1).enter(|| -> Result<usize> {
            let sockets = (0..FLOOD)
                .map(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
                .collect::<std::io::Result<Vec<_>>>()?;
            for (internal, socket) in (8700u16..).zip(&sockets) {
                let mut request = vec![0, 2, 0, 0];
                request.extend_from_slice(&internal.to_be_bytes());
                request.extend_from_slice(&(internal + 1000).to_be_bytes());
                request.extend_from_slice(&600u32.to_be_bytes());
                socket.send_to(&request, (LAN_GATEWAY, PCP_PORT))?;
            }
            // miniupnpd takes a while per mapping (it writes nftables rules).
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut granted = 0;
            for socket in &sockets {
                let left = deadline.saturating_duration_since(Instant::now());
                socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                let mut buf = [0; 64];
                if let Ok((len, _)) = socket.recv_from(&mut buf)
                    && len == 16
                    && buf[1] == 0x82
                    && buf[2..4] == [0, 0]
                {
                    granted += 1;
                }
            }
            Ok(granted)
        })??;
        ensure!(
            granted > 3,
            "the CGN granted only {granted}: no flood to hold back"
        );
        ensure!(
            hole_names(lab)?.len() == 3,
            "lan1 got more holes than its quota"
        );
        // natpmpc can take a late duplicate answer for the map response while the CGN
        // is still busy with the flood; this client waits for the matching one.
        natpmp_map_matching(lab.lan(2), 9801, 8801)?;
        natpmp_map_matching(lab.lan(2), 9802, 8802)?;
        let holes = hole_names(lab)?;
        ensure!(
            holes.len() == 4 && holes.contains(&format!("{LAN2_IP}:8801/tcp")),
            "expected lan1's 3 holes and lan2's first: {holes:?}"
        );
        ensure!(
            counter(lab, portproxy, "grants_refused_quota")? == granted as u64 - 3,
            "quota refusals not counted"
        );
        ensure!(
            counter(lab, portproxy, "grants_refused_full")? == 1,
            "the full table's refusal not counted"
        );
        refused(lab, lab.lan(2), 8802, 9802)
    })
}

every_path!(flood_stays_within_the_quota);

/// UPnP through the HTTP relay (`--upnp-tcp 1`): AddPortMapping (a permanent lease) opens a
/// hole without a timeout and the table shows the description; DeletePortMapping closes it.
fn upnp_granted_then_deleted(softwire: Softwire, path: DataPath) -> Result<()> {
    behind_firewall(softwire, path, &["--upnp-tcp", "1"], |lab, _| {
        let desc = format!("http://{LAN_GATEWAY}:{IGD_HTTP_PORT}/rootDesc.xml");
        let host = LAN1_IP.to_string();
        run_expect(
            lab.lan(1),
            "upnpc",
            &[
                "-u",
                &desc,
                "-e",
                "game server",
                "-a",
                &host,
                "8484",
                "9484",
                "tcp",
            ],
            &[&format!(
                "external {PUBLIC_IP}:9484 TCP is redirected to internal {host}:8484"
            )],
        )?;
        let holes = lab.holes()?;
        ensure!(
            holes.len() == 1 && holes[0].port == 8484 && holes[0].expires == 0,
            "expected one hole for 8484 without a timeout: {holes:?}"
        );
        let mappings = lab.portproxy_mappings()?;
        ensure!(
            mappings[0]["origin"] == "upnp-add"
                && mappings[0]["description"] == "game server"
                && mappings[0]["expires_in_secs"].is_null()
                && mappings[0]["external_port"] == 9484,
            "unexpected portproxy mappings: {mappings:#}"
        );
        reachable(lab, lab.lan(1), 8484, 9484)?;
        run_expect(
            lab.lan(1),
            "upnpc",
            &["-u", &desc, "-d", "9484", "tcp"],
            &[],
        )?;
        ensure!(
            hole_names(lab)?.is_empty(),
            "a hole after DeletePortMapping"
        );
        ensure!(
            mapping_names(lab)?.is_empty(),
            "a mapping after DeletePortMapping"
        );
        refused(lab, lab.lan(1), 8484, 9484)
    })
}

every_path!(upnp_granted_then_deleted);
