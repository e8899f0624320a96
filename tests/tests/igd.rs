//! portproxy as the LAN's UPnP IGD (RFC 6970 interworking): the CGN speaks PCP only or
//! NAT-PMP only, as DS-Lite AFTRs and carrier boxes do, so UPnP control points would find
//! no IGD through a relay. A real control point (`upnpc`) finds portproxy's, maps, lists
//! and deletes through it; what it maps is mapped at the CGN in PCP or NAT-PMP and
//! reachable from the internet host through the fw4-like CPE firewall. Every scenario runs
//! on every data path and both softwire kinds.

#[macro_use]
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{
    ARGS, Down, across_a_restart, check_mapping, check_mapping_again, logged, mapped_again,
    run_expect, wait_for_log, with_lab, with_portproxy,
};
use tests::{
    CGN_SOFTWIRE_IP, CPE_SOFTWIRE_IP, CgnKind, Daemon, DataPath, Event, LAN_GATEWAY, LAN1_IP,
    LAN2_IP, Lab, Netns, PUBLIC_IP, Softwire, pcp_map_tcp, response_header, show_output,
};

/// Runs portproxy in a lab whose CGN speaks `kind`, behind the fw4-like firewall, then
/// `test`; on the fast path the programs must have passed the CGN's answers to what the
/// IGD asked up to the daemon. Prints portproxy's log on failure.
fn with_igd(
    softwire: Softwire,
    path: DataPath,
    kind: CgnKind,
    test: impl FnOnce(&mut Lab, &Daemon) -> Result<()>,
) -> Result<()> {
    with_igd_counting(softwire, path, kind, &["passed_to_daemon"], test)
}

/// `with_igd`, with the kernel counters that must have moved on the fast path.
fn with_igd_counting(
    softwire: Softwire,
    path: DataPath,
    kind: CgnKind,
    kernel: &[&str],
    test: impl FnOnce(&mut Lab, &Daemon) -> Result<()>,
) -> Result<()> {
    let builder = Lab::builder(softwire).cgn(kind).cpe_firewall();
    with_portproxy(builder, path, &[], kernel, test)
}

/// `upnpc ARGS` against the IGD of `version` (its description URL: no discovery).
fn upnpc(ns: &Netns, version: u8, args: &[&str], expected: &[&str]) -> Result<String> {
    let url = format!("http://192.168.1.1:5000/igd{version}.xml");
    let mut all = vec!["-u", url.as_str()];
    all.extend_from_slice(args);
    run_expect(ns, "upnpc", &all, expected)
}

/// `upnpc ARGS` against the IGD of `version`, which must refuse with UPnP error `code`.
fn upnpc_refused(ns: &Netns, version: u8, args: &[&str], code: u16) -> Result<()> {
    let url = format!("http://192.168.1.1:5000/igd{version}.xml");
    let mut all = vec!["-u", url.as_str()];
    all.extend_from_slice(args);
    let output = ns.output("upnpc", &all, Duration::from_secs(10))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        !output.status.success() && stdout.contains(&format!("failed with code {code} ")),
        "`upnpc {}` in {}: expected a refusal with code {code}\n{}",
        all.join(" "),
        ns.role(),
        show_output(&output)
    );
    Ok(())
}

/// Discovery finds portproxy's IGD, which says the CGN's address; a mapping made through
/// it is at the CGN and reachable, listed, refused to another host on the same port
/// (718) and for another host's address (606), and gone after a delete.
fn control_point(softwire: Softwire, path: DataPath, kind: CgnKind) -> Result<()> {
    with_igd(softwire, path, kind, |lab, _| {
        let (lan1, lan2) = (lab.lan(1), lab.lan(2));
        run_expect(
            lan1,
            "upnpc",
            &["-s"],
            &[
                "Found valid IGD",
                "desc: http://192.168.1.1:5000/igd",
                &format!("ExternalIPAddress = {PUBLIC_IP}"),
                "Connection Type : IP_Routed",
            ],
        )?;
        let host1 = LAN1_IP.to_string();
        upnpc(
            lan1,
            1,
            &["-e", "a game", "-a", &host1, "8301", "9301", "tcp", "3600"],
            &[&format!(
                "external {PUBLIC_IP}:9301 TCP is redirected to internal {host1}:8301"
            )],
        )?;
        check_mapping(lab, 9301, lan1, 8301)?;
        upnpc(
            lan1,
            1,
            &["-l"],
            &[&format!("9301->{host1}:8301"), "'a game'"],
        )?;
        let host2 = LAN2_IP.to_string();
        upnpc_refused(lan2, 1, &["-a", &host2, "8302", "9301", "tcp"], 718)?;
        upnpc_refused(lan2, 1, &["-a", &host1, "8303", "9303", "tcp"], 606)?;
        upnpc(lan1, 1, &["-d", "9301", "tcp"], &[])?;
        let list = upnpc(lan1, 1, &["-l"], &[])?;
        ensure!(
            !list.contains("9301->"),
            "9301 still listed after -d:\n{list}"
        );
        let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
        ensure!(
            !nat.contains("dport 9301"),
            "the CGN still maps 9301:\n{nat}"
        );
        Ok(())
    })
}

/// GUPnP's SSDP client, searching for everything, finds both IGD versions and their
/// connection services on the LAN, each version with its own description. (On the fast
/// path the programs pass the searches up.)
fn gssdp_discovery(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd_counting(softwire, path, CgnKind::PcpOnly, &["passed"], |lab, _| {
        let args = ["-i", "eth0", "-t", "ssdp:all", "-n", "2"];
        let out = run_expect(lab.lan(1), "gssdp-discover", &args, &["resource available"])?;
        // gssdp-discover prints a block per answer: USN, then Location.
        for version in [1, 2] {
            let location = format!("Location: http://192.168.1.1:5000/igd{version}.xml");
            for kind in [
                format!("device:InternetGatewayDevice:{version}"),
                format!("service:WANIPConnection:{version}"),
            ] {
                let found = out.split("resource available").any(|answer| {
                    answer.contains(&format!("urn:schemas-upnp-org:{kind}"))
                        && answer.contains(&location)
                });
                ensure!(found, "no answer for {kind} at {location}:\n{out}");
            }
        }
        Ok(())
    })
}
every_path!(gssdp_discovery);

fn control_point_on_a_pcp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    control_point(softwire, path, CgnKind::PcpOnly)
}
every_path!(control_point_on_a_pcp_cgn);

fn control_point_on_a_natpmp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    control_point(softwire, path, CgnKind::NatPmpOnly)
}
every_path!(control_point_on_a_natpmp_cgn);

/// IGD:2's own actions: AddAnyPortMapping gets another port when the one asked for is
/// taken, GetListOfPortMappings lists both, DeletePortMappingRange removes them.
fn igd2_actions(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, CgnKind::PcpOnly, |lab, _| {
        let lan1 = lab.lan(1);
        let host1 = LAN1_IP.to_string();
        upnpc(
            lan1,
            2,
            &["-a", &host1, "8311", "9311", "tcp"],
            &["is redirected"],
        )?;
        let out = upnpc(
            lan1,
            2,
            &["-n", &host1, "8312", "9311", "tcp"],
            &["is redirected"],
        )?;
        let other = out
            .lines()
            .find_map(|l| {
                l.split("external ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse::<u16>()
                    .ok()
            })
            .unwrap_or(0);
        ensure!(
            other != 0 && other != 9311,
            "AddAnyPortMapping did not move to another port:\n{out}"
        );
        check_mapping(lab, other, lan1, 8312)?;
        upnpc(lan1, 2, &["-L"], &["9311", &other.to_string()])?;
        upnpc(lan1, 2, &["-N", "1024", "65535", "tcp"], &[])?;
        let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
        ensure!(
            !nat.contains("dport 9311") && !nat.contains(&format!("dport {other} ")),
            "the CGN still maps them:\n{nat}"
        );
        Ok(())
    })
}
every_path!(igd2_actions);

/// One WANIPConnection:1 action from `ns`, as a control point sends it: the response body,
/// or the UPnP error code of the fault.
fn soap(ns: &Netns, action: &str, args: &[(&str, String)]) -> Result<Result<String, u16>> {
    let service = "urn:schemas-upnp-org:service:WANIPConnection:1";
    let mut body = format!(
        "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{service}\">"
    );
    for (name, value) in args {
        body += &format!("<{name}>{value}</{name}>");
    }
    body += &format!("</u:{action}></s:Body></s:Envelope>");
    let request = format!(
        "POST /ctl/IPConn HTTP/1.1\r\nHost: {LAN_GATEWAY}:5000\r\nContent-Type: text/xml\r\n\
         SOAPAction: \"{service}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = ns.enter(|| -> std::io::Result<String> {
        let to = SocketAddr::from((LAN_GATEWAY, 5000));
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })??;
    if response.starts_with("HTTP/1.1 200") {
        return Ok(Ok(response));
    }
    let code = response
        .split("<errorCode>")
        .nth(1)
        .and_then(|rest| rest.split('<').next()?.parse().ok())
        .with_context(|| format!("{action}: neither a success nor a UPnP error:\n{response}"))?;
    Ok(Err(code))
}

fn add(ns: &Netns, host: &str, internal: u16, external: u16) -> Result<Result<String, u16>> {
    soap(
        ns,
        "AddPortMapping",
        &[
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external.to_string()),
            ("NewProtocol", "TCP".into()),
            ("NewInternalPort", internal.to_string()),
            ("NewInternalClient", host.into()),
            ("NewEnabled", "1".into()),
            ("NewPortMappingDescription", "seed 004".into()),
            ("NewLeaseDuration", "0".into()),
        ],
    )
}

/// Whether GetSpecificPortMappingEntry says `external` is free (714).
fn free(ns: &Netns, external: u16) -> Result<bool> {
    let args = [
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external.to_string()),
        ("NewProtocol", "TCP".into()),
    ];
    match soap(ns, "GetSpecificPortMappingEntry", &args)? {
        Ok(_) => Ok(false),
        Err(714) => Ok(true),
        Err(code) => bail!("GetSpecificPortMappingEntry {external}: error {code}"),
    }
}

/// The four IGD:1 control points of seed 004, scripted as the slides describe them, with
/// 9401 held here by lan2 and 9402 held at the CGN by another client (the CPE itself, over
/// PCP, so the table does not know it):
/// - uTorrent: GetSpecificPortMappingEntry until a port is free, then AddPortMapping (and
///   on to the next port after a 718): ends mapped on 9403;
/// - Azureus: AddPortMapping, then the same port five more times: 718 each time on 9402,
///   mapped at once on a free port;
/// - Shareaza: GetSpecificPortMappingEntry, and no AddPortMapping when taken: gives up on
///   9401, mapped on a free port;
/// - eMule: one AddPortMapping: 718 on 9401, mapped on a free port.
///
/// Every mapping made is reachable; a refused one leaves nothing at the CGN.
fn seed_004_control_points(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, CgnKind::PcpOnly, |lab, _| {
        let (lan1, lan2) = (lab.lan(1), lab.lan(2));
        let (host1, host2) = (LAN1_IP.to_string(), LAN2_IP.to_string());
        ensure!(
            add(lan2, &host2, 8401, 9401)?.is_ok(),
            "lan2 could not map 9401"
        );
        pcp_map_tcp(lab.cpe(), CGN_SOFTWIRE_IP, CPE_SOFTWIRE_IP, 8402, 9402, 600)?;

        // uTorrent.
        let mut mapped = None;
        for port in 9401..9410 {
            if free(lan1, port)? && add(lan1, &host1, 8410, port)?.is_ok() {
                mapped = Some(port);
                break;
            }
        }
        ensure!(
            mapped == Some(9403),
            "uTorrent's flow ended on {mapped:?}, not 9403"
        );
        check_mapping(lab, 9403, lan1, 8410)?;

        // Azureus.
        for attempt in 0..6 {
            let added = add(lan1, &host1, 8411, 9402)?;
            ensure!(
                added == Err(718),
                "attempt {attempt}: 9402 is the CGN's other client's, yet AddPortMapping gave {added:?}"
            );
        }
        ensure!(add(lan1, &host1, 8411, 9411)?.is_ok());
        check_mapping(lab, 9411, lan1, 8411)?;

        // Shareaza.
        ensure!(!free(lan1, 9401)?, "9401 is lan2's");
        ensure!(free(lan1, 9412)? && add(lan1, &host1, 8412, 9412)?.is_ok());
        check_mapping(lab, 9412, lan1, 8412)?;

        // eMule.
        ensure!(add(lan1, &host1, 8413, 9401)? == Err(718), "9401 is lan2's");
        ensure!(add(lan1, &host1, 8413, 9413)?.is_ok());
        check_mapping(lab, 9413, lan1, 8413)?;

        // What was refused left nothing at the CGN for lan1.
        let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
        for internal in [8411, 8413] {
            let rules = nat
                .lines()
                .filter(|l| l.contains(&format!("{host1}:{internal}")))
                .count();
            ensure!(
                rules == 1,
                "{rules} CGN rules for {host1}:{internal}:\n{nat}"
            );
        }
        Ok(())
    })
}
every_path!(seed_004_control_points);

/// The CGN reboots and loses every mapping: the one made through the IGD (a PCP mapping
/// with portproxy's nonce) is back at the CGN within 10 s and reachable again.
fn igd_mapping_survives_a_cgn_reboot(softwire: Softwire, path: DataPath) -> Result<()> {
    with_lab(
        Lab::builder(softwire).cgn(CgnKind::PcpOnly).cpe_firewall(),
        |lab| {
            let portproxy = lab.spawn_portproxy_on(path, &ARGS)?;
            logged(&portproxy, || {
                let host1 = LAN1_IP.to_string();
                upnpc(
                    lab.lan(1),
                    1,
                    &["-a", &host1, "8421", "9421", "tcp"],
                    &["is redirected"],
                )?;
                // The epoch's 2 s slack (see proxy.rs, mappings_survive_a_cgn_reboot).
                std::thread::sleep(Duration::from_secs(4));
                lab.reboot_cgn()?;
                let took = mapped_again(lab, 9421, LAN1_IP, 8421, Duration::from_secs(10))?;
                eprintln!("back at the CGN after {took:?}");
                check_mapping_again(lab, 9421, lab.lan(1), 8421)?;
                upnpc(lab.lan(1), 1, &["-l"], &[&format!("9421->{host1}:8421")])?;
                Ok(())
            })
        },
    )
}
every_path!(igd_mapping_survives_a_cgn_reboot);

/// The longest PCP lifetime the CGN grants in `leases_are_kept_alive_and_survive_a_restart`:
/// far shorter than the leases asked for, so they live only by being renewed.
const CGN_LIFETIME: Duration = Duration::from_secs(16);

/// The lease each `upnpc -l` line ends with, by external port.
fn listed_leases(list: &str) -> Vec<(u16, u32)> {
    list.lines()
        .filter_map(|line| {
            let port = line.split("->").next()?.rsplit(' ').next()?.parse().ok()?;
            let lease = line.rsplit(' ').next()?.trim().parse().ok()?;
            Some((port, lease))
        })
        .collect()
}

/// Leases longer than the CGN grants (it grants PCP mappings 16 s at most): IGD:1's
/// permanent lease (0) and IGD:2's day. Past the CGN's lifetime both are still mapped at the
/// CGN and reachable through the CPE's firewall: the IGD renewed them. portproxy restarts
/// (SIGTERM, the same mappings file): `upnpc -l` lists both again with their leases (0, and
/// what is left of the day), and past another CGN lifetime they are still mapped and
/// reachable: the renewals went on after the restart. (A CGN that restarts and loses them
/// is `igd_mapping_survives_a_cgn_reboot`.)
fn leases_are_kept_alive_and_survive_a_restart(softwire: Softwire, path: DataPath) -> Result<()> {
    let builder = Lab::builder(softwire)
        .cgn(CgnKind::PcpOnly)
        .cpe_firewall()
        .pcp_max_lifetime(CGN_LIFETIME.as_secs() as u32);
    let host1 = LAN1_IP.to_string();
    let (permanent, day) = ((8431, 9431), (8432, 9432));
    // Both mapped, then both still there after the CGN's lifetime: portproxy renews them
    // meanwhile, so a check may meet a renewal at the CGN.
    let held = |lab: &Lab, since: Instant| -> Result<()> {
        let past = since + CGN_LIFETIME + Duration::from_secs(3);
        std::thread::sleep(past.saturating_duration_since(Instant::now()));
        for (internal, external) in [permanent, day] {
            check_mapping_again(lab, external, lab.lan(1), internal)?;
        }
        Ok(())
    };
    with_lab(builder, |lab| {
        across_a_restart(
            lab,
            path,
            &[],
            |lab| {
                let lease = |(internal, external): (u16, u16), version, lease: &str| {
                    let (i, e) = (internal.to_string(), external.to_string());
                    upnpc(
                        lab.lan(1),
                        version,
                        &["-a", &host1, &i, &e, "tcp", lease],
                        &["is redirected"],
                    )
                };
                lease(permanent, 1, "0")?;
                lease(day, 2, "86400")?;
                let mapped = Instant::now();
                // What the CGN granted is its short lifetime, not the lease.
                let json = lab.portproxy_mappings()?;
                let expires: Vec<u64> = json
                    .as_array()
                    .context("mappings --json is not an array")?
                    .iter()
                    .filter_map(|m| m["expires_in_secs"].as_u64())
                    .collect();
                ensure!(
                    expires.len() == 2 && expires.iter().all(|&s| s <= CGN_LIFETIME.as_secs()),
                    "expected two mappings granted for at most {CGN_LIFETIME:?}: {json:#}"
                );
                held(lab, mapped)
            },
            |lab, first| Down::Restart.take(lab, first),
            |lab, _, ()| {
                let restarted = Instant::now();
                let list = upnpc(
                    lab.lan(1),
                    2,
                    &["-l"],
                    &[
                        &format!("9431->{host1}:8431"),
                        &format!("9432->{host1}:8432"),
                    ],
                )?;
                let leases = listed_leases(&list);
                let lease_of = |port| leases.iter().find(|(p, _)| *p == port).map(|l| l.1);
                ensure!(
                    lease_of(9431) == Some(0)
                        && lease_of(9432).is_some_and(|l| (86_000..86_400).contains(&l)),
                    "leases after the restart {leases:?}, expected 9431 permanent (0) and 9432 \
                     a day less the test's time:\n{list}"
                );
                held(lab, restarted)
            },
        )
    })
}
every_path!(leases_are_kept_alive_and_survive_a_restart);

/// GENA eventing (UDA 1.1 §4): a subscriber on lan1 gets the initial event (the CGN's
/// address, no mappings), one when upnpc maps and one when the carrier renumbers the CGN;
/// renewal keeps its SID; a SUBSCRIBE whose callback is lan2 (CallStranger) is refused
/// and lan2 never hears a thing; malformed ones are refused; after UNSUBSCRIBE, nothing.
fn events(softwire: Softwire, path: DataPath, kind: CgnKind) -> Result<()> {
    const RENUMBERED: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 9);
    const EVENTS: &str = "/evt/IPConn";
    const PORT: u16 = 49152;
    with_igd(softwire, path, kind, |lab, portproxy| {
        let sink1 = lab.lan(1).serve_events(PORT)?;
        let sink2 = lab.lan(2).serve_events(PORT)?;
        let callback1 = format!("<http://{LAN1_IP}:{PORT}/events>");
        let (status, headers) = lab.lan(1).gena(
            "SUBSCRIBE",
            EVENTS,
            &[
                ("CALLBACK", &callback1),
                ("NT", "upnp:event"),
                ("TIMEOUT", "Second-300"),
            ],
        )?;
        ensure!(status == 200, "SUBSCRIBE: {status} {headers:?}");
        let sid = response_header(&headers, "sid")
            .filter(|sid| sid.starts_with("uuid:"))
            .with_context(|| format!("no SID in {headers:?}"))?
            .to_string();
        ensure!(response_header(&headers, "timeout") == Some("Second-300"));
        let of_sid = |e: &Event| e.header("sid") == Some(sid.as_str());
        let initial = sink1.wait_for(Duration::from_secs(5), |e| of_sid(e))?;
        ensure!(
            initial.seq() == Some(0)
                && initial.target == "/events"
                && initial.header("nt") == Some("upnp:event")
                && initial.header("nts") == Some("upnp:propchange")
                && initial.variable("ExternalIPAddress") == Some(&PUBLIC_IP.to_string())
                && initial.variable("PortMappingNumberOfEntries") == Some("0")
                && initial.variable("ConnectionStatus") == Some("Connected"),
            "initial event: {initial:#?}"
        );

        // CallStranger: lan1 asks for lan2's events to go to lab.lan(2).
        let callback2 = format!("<http://{LAN2_IP}:{PORT}/events>");
        let (status, _) = lab.lan(1).gena(
            "SUBSCRIBE",
            EVENTS,
            &[("CALLBACK", &callback2), ("NT", "upnp:event")],
        )?;
        ensure!(
            status == 412,
            "SUBSCRIBE with lan2's callback from lan1: {status}"
        );
        // Malformed: no NT; SID and NT together; an unknown SID.
        let (status, _) = lab
            .lan(1)
            .gena("SUBSCRIBE", EVENTS, &[("CALLBACK", &callback1)])?;
        ensure!(status == 412, "SUBSCRIBE without NT: {status}");
        let both = [("SID", sid.as_str()), ("NT", "upnp:event")];
        let (status, _) = lab.lan(1).gena("SUBSCRIBE", EVENTS, &both)?;
        ensure!(status == 400, "SUBSCRIBE with SID and NT: {status}");
        let unknown = [("SID", "uuid:00000000-0000-4000-8000-000000000000")];
        let (status, _) = lab.lan(1).gena("SUBSCRIBE", EVENTS, &unknown)?;
        ensure!(status == 412, "renewal of an unknown SID: {status}");

        let host1 = LAN1_IP.to_string();
        upnpc(
            lab.lan(1),
            1,
            &["-a", &host1, "8321", "9321", "tcp", "3600"],
            &["is redirected"],
        )?;
        let mapped = sink1.wait_for(Duration::from_secs(5), |e| {
            of_sid(e) && e.variable("PortMappingNumberOfEntries") == Some("1")
        })?;
        ensure!(mapped.seq() == Some(1), "second event: {mapped:#?}");

        // Renewal: the same SID, the new timeout.
        let (status, headers) = lab.lan(1).gena(
            "SUBSCRIBE",
            EVENTS,
            &[("SID", &sid), ("TIMEOUT", "Second-600")],
        )?;
        ensure!(
            status == 200
                && response_header(&headers, "sid") == Some(sid.as_str())
                && response_header(&headers, "timeout") == Some("Second-600"),
            "renewal: {status} {headers:?}"
        );

        // The epoch's 2 s slack (see proxy.rs, mappings_survive_a_cgn_reboot).
        std::thread::sleep(Duration::from_secs(4));
        lab.change_public_address(RENUMBERED)?;
        let renumbered = RENUMBERED.to_string();
        let moved = sink1.wait_for(Duration::from_secs(10), |e| {
            of_sid(e) && e.variable("ExternalIPAddress") == Some(&renumbered)
        })?;
        ensure!(
            moved.seq() == Some(2) && moved.variable("PortMappingNumberOfEntries") == Some("1"),
            "event of the new address: {moved:#?}"
        );

        let (status, _) = lab.lan(2).gena("UNSUBSCRIBE", EVENTS, &[("SID", &sid)])?;
        ensure!(
            status == 412,
            "UNSUBSCRIBE of lan1's SID from lan2: {status}"
        );
        let (status, _) = lab.lan(1).gena("UNSUBSCRIBE", EVENTS, &[("SID", &sid)])?;
        ensure!(status == 200, "UNSUBSCRIBE: {status}");
        let before = sink1.events().len();
        upnpc(lab.lan(1), 1, &["-d", "9321", "tcp"], &[])?;
        std::thread::sleep(Duration::from_secs(3));
        let after = sink1.events();
        ensure!(
            after.len() == before,
            "events after UNSUBSCRIBE: {:#?}",
            &after[before..]
        );
        let (status, _) = lab.lan(1).gena("UNSUBSCRIBE", EVENTS, &[("SID", &sid)])?;
        ensure!(status == 412, "a second UNSUBSCRIBE: {status}");
        ensure!(
            sink2.events().is_empty(),
            "lan2 was sent events: {:#?}",
            sink2.events()
        );
        // The status file is written once a second.
        std::thread::sleep(Duration::from_millis(1200));
        let stats = lab.portproxy_stats(portproxy)?;
        let counter = |name: &str| stats["counters"][name]["daemon"].as_u64().unwrap_or(0);
        ensure!(
            counter("gena_events") >= 3 && counter("gena_refused") >= 6,
            "gena counters: events {}, refused {}",
            counter("gena_events"),
            counter("gena_refused")
        );
        Ok(())
    })
}

fn events_on_a_pcp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    events(softwire, path, CgnKind::PcpOnly)
}
every_path!(events_on_a_pcp_cgn);

fn events_on_a_natpmp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    events(softwire, path, CgnKind::NatPmpOnly)
}
every_path!(events_on_a_natpmp_cgn);

/// A subscription outlives a rebuild of the data path: the softwire goes down and up,
/// portproxy rebuilds, and the subscriber is still evented (the next SEQ, its SID) when
/// upnpc maps, and renews with its SID.
fn events_survive_a_softwire_flap(softwire: Softwire, path: DataPath) -> Result<()> {
    const PORT: u16 = 49152;
    with_igd(softwire, path, CgnKind::PcpOnly, |lab, portproxy| {
        let sink = lab.lan(1).serve_events(PORT)?;
        let callback = format!("<http://{LAN1_IP}:{PORT}/events>");
        let subscribe = [("CALLBACK", callback.as_str()), ("NT", "upnp:event")];
        let (status, headers) = lab.lan(1).gena("SUBSCRIBE", "/evt/IPConn", &subscribe)?;
        let sid = response_header(&headers, "sid")
            .filter(|_| status == 200)
            .with_context(|| format!("SUBSCRIBE: {status} {headers:?}"))?
            .to_string();
        let of_sid = |e: &Event| e.header("sid") == Some(sid.as_str());
        sink.wait_for(Duration::from_secs(5), |e| of_sid(e) && e.seq() == Some(0))?;

        lab.set_softwire_up(false)?;
        std::thread::sleep(Duration::from_millis(500));
        lab.set_softwire_up(true)?;
        // The ready line says "relaying between"; so does every rebuild.
        wait_for_log(portproxy, "relaying between", 2)?;

        let host1 = LAN1_IP.to_string();
        upnpc(
            lab.lan(1),
            1,
            &["-a", &host1, "8441", "9441", "tcp", "3600"],
            &["is redirected"],
        )?;
        let mapped = sink.wait_for(Duration::from_secs(5), |e| {
            of_sid(e) && e.variable("PortMappingNumberOfEntries") == Some("1")
        })?;
        ensure!(
            mapped.seq() == Some(1),
            "the event after the rebuild: {mapped:#?}"
        );
        let (status, headers) = lab.lan(1).gena(
            "SUBSCRIBE",
            "/evt/IPConn",
            &[("SID", &sid), ("TIMEOUT", "Second-600")],
        )?;
        ensure!(
            status == 200 && response_header(&headers, "sid") == Some(sid.as_str()),
            "renewal after the rebuild: {status} {headers:?}"
        );
        Ok(())
    })
}
every_path!(events_survive_a_softwire_flap);
