//! portproxy end to end: the LAN's clients talk to the CPE (192.168.1.1) as their gateway,
//! portproxy relays to miniupnpd on the CGN, and the internet host reaches the mappings,
//! through the CPE's fw4-like firewall where portproxy sees the grant (NAT-PMP, PCP, UPnP
//! through the HTTP relay; `upnp_map` talks to the CGN's IGD directly, which portproxy
//! cannot see, so its CPE has no firewall). On the fast path, grants held for the firewall
//! are delivered from userspace: their kernel counter is "grants_to_daemon".
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
use common::{
    ARGS, check_mapping, logged, natpmpc_map, run_expect, wait_for_log, with_lab, with_portproxy,
};
use tests::{
    CGN_SOFTWIRE_IP, Daemon, DataPath, IGD_HTTP_PORT, LAN_GATEWAY, LAN1_IP, Lab, PCP_PORT,
    PUBLIC_IP, SSDP_GROUP, Softwire, pcp_map_tcp,
};

fn natpmp_public_address(softwire: Softwire, path: DataPath) -> Result<()> {
    with_portproxy(
        Lab::builder(softwire),
        path,
        &[],
        &["nat_pmp_to_cgn", "nat_pmp_to_client"],
        |lab, _| {
            run_expect(
                lab.lan(1),
                "natpmpc",
                &["-g", &LAN_GATEWAY.to_string()],
                &[&format!("Public IP address : {PUBLIC_IP}")],
            )?;
            Ok(())
        },
    )
}

every_path!(natpmp_public_address);

fn natpmp_map(softwire: Softwire, path: DataPath) -> Result<()> {
    with_portproxy(
        Lab::builder(softwire).cpe_firewall(),
        path,
        &[],
        &["nat_pmp_to_cgn", "nat_pmp_to_client"],
        |lab, _| {
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
        },
    )
}

every_path!(natpmp_map);

/// The M-SEARCH goes to 239.255.255.250:1900 on br-lan; portproxy relays it over the
/// softwire and the replies back.
fn upnp_discovery(softwire: Softwire, path: DataPath) -> Result<()> {
    with_portproxy(
        Lab::builder(softwire),
        path,
        &[],
        &["search_to_cgn"],
        |lab, _| {
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
        },
    )
}

every_path!(upnp_discovery);

fn upnp_map(softwire: Softwire, path: DataPath) -> Result<()> {
    with_portproxy(
        Lab::builder(softwire),
        path,
        &[],
        &["search_to_cgn"],
        |lab, _| {
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
        },
    )
}

every_path!(upnp_map);

/// A PCP MAP sent to the default gateway by a PCP client (crab_nat).
fn pcp_map(softwire: Softwire, path: DataPath) -> Result<()> {
    with_portproxy(
        Lab::builder(softwire).cpe_firewall(),
        path,
        &[],
        &["pcp_to_cgn", "grants_to_daemon"],
        |lab, _| {
            let mapping = pcp_map_tcp(lab.lan(1), LAN_GATEWAY, LAN1_IP, 8383, 9383, 600)?;
            ensure!(
                mapping.external_ip == PUBLIC_IP && mapping.external_port == 9383,
                "unexpected grant {mapping:?}"
            );
            check_mapping(lab, 9383, lab.lan(1), 8383)
        },
    )
}

every_path!(pcp_map);

/// miniupnpd's periodic NOTIFY reaches a LAN host that joined the SSDP group.
fn notify_reaches_lan(softwire: Softwire, path: DataPath) -> Result<()> {
    let interval = 2;
    with_portproxy(
        Lab::builder(softwire).notify_interval(interval),
        path,
        &[],
        &["notify_to_lan"],
        |lab, _| {
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

every_path!(notify_reaches_lan);

/// lan1 and lan2 send NAT-PMP map requests from the same source port at the same moment;
/// each must get its own answer, from the gateway.
fn natpmp_same_port_two_hosts(softwire: Softwire, path: DataPath) -> Result<()> {
    with_portproxy(
        Lab::builder(softwire).cpe_firewall(),
        path,
        &[],
        &["nat_pmp_to_cgn", "grants_to_daemon"],
        |lab, _| {
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
        },
    )
}

every_path!(natpmp_same_port_two_hosts);

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
fn upnp_tcp_relay(softwire: Softwire, path: DataPath) -> Result<()> {
    with_portproxy(
        Lab::builder(softwire).cpe_firewall(),
        path,
        &["--upnp-tcp", "1"],
        &[],
        |lab, _| {
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
        },
    )
}

every_path!(upnp_tcp_relay);

/// portproxy is killed with SIGKILL while a client keeps asking; a new instance takes over
/// what the old one left (routing rule, TC attachments, pins) instead of failing, serves
/// the client, and exactly one set of hooks (or one reply rule) is in place.
fn restart_after_sigkill(softwire: Softwire, path: DataPath) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        let mut first = lab.spawn_portproxy_on(path, &ARGS)?;
        let old_maps = clients_map_id(&first, path)?;
        let gateway = LAN_GATEWAY.to_string();
        let traffic = lab
            .lan(1)
            .command("natpmpc")
            .args(["-g", &gateway])
            .spawn()?;
        thread::sleep(Duration::from_millis(100));
        first.kill()?;
        let second = lab.spawn_portproxy_on(path, &ARGS)?;
        let result = (|| {
            run_expect(
                lab.lan(1),
                "natpmpc",
                &["-g", &gateway, "-a", "9191", "8191", "tcp", "600"],
                &["Mapped public port 9191 protocol TCP to local port 8191"],
            )?;
            check_mapping(lab, 9191, lab.lan(1), 8191)?;
            lab.check_data_path(&second, path, &["nat_pmp_to_cgn", "nat_pmp_to_client"])?;
            let rules = run_expect(lab.cpe(), "ip", &["rule", "show"], &[])?;
            let reply_rules = rules.matches("lookup 5351").count();
            if let (Some(old), Some(new)) = (old_maps, clients_map_id(&second, path)?) {
                let programs = programs_using_map(new)?;
                ensure!(
                    programs == ["tc_lan_ingress", "tc_wan_ingress", "xdp_lan", "xdp_wan"],
                    "expected one set of programs on map {new}, bpftool shows {programs:?}"
                );
                let stale = programs_using_map(old)?;
                ensure!(
                    stale.is_empty(),
                    "the killed run's programs are still loaded: {stale:?}"
                );
            }
            // One reply-capture rule on either data path (the killed run's was replaced):
            // next to the fast path it keeps the CGN's answers to what the daemon asks as a
            // host, and replies the programs pass up, on the CPE.
            ensure!(reply_rules == 1, "expected one reply rule:\n{rules}");
            Ok(())
        })();
        let _ = traffic.wait_with_output();
        if result.is_err() {
            eprintln!(
                "=== first portproxy log\n{}\n=== second portproxy log\n{}",
                first.log(),
                second.log()
            );
        }
        result
    })
}

/// The kernel id of the daemon's pinned CLIENTS map (fast path only), read with bpftool
/// from inside the daemon's mount namespace, where its bpffs is.
fn clients_map_id(daemon: &Daemon, path: DataPath) -> Result<Option<u64>> {
    if path != DataPath::FastPath {
        return Ok(None);
    }
    let pid = daemon.pid().to_string();
    let args = [
        "-t",
        &pid,
        "-m",
        "-n",
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        "/sys/fs/bpf/portproxy/CLIENTS",
    ];
    let output = std::process::Command::new("nsenter").args(args).output()?;
    let map: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("bpftool map show: {}", tests::show_output(&output)))?;
    Ok(map["id"].as_u64())
}

/// Names of the loaded programs that use map `id`, sorted (`bpftool prog show`).
fn programs_using_map(id: u64) -> Result<Vec<String>> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()?;
    let programs: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("bpftool prog show")?;
    let mut names: Vec<String> = programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["map_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|m| m.as_u64() == Some(id)))
        })
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

every_path!(restart_after_sigkill);

/// After a change of the interfaces, the daemon (not restarted) rebuilds its data path (its
/// log says so before the clients try again) and NAT-PMP, SSDP and the mapping's
/// reachability work again.
fn after_interface_change(
    softwire: Softwire,
    path: DataPath,
    change: impl FnOnce(&mut Lab) -> Result<()>,
) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        let portproxy = lab.spawn_portproxy_on(path, &ARGS)?;
        logged(&portproxy, || {
            change(lab)?;
            // The ready line says "relaying between"; so does every rebuild.
            wait_for_log(&portproxy, "relaying between", 2)?;
            run_expect(
                lab.lan(1),
                "natpmpc",
                &[
                    "-g",
                    &LAN_GATEWAY.to_string(),
                    "-a",
                    "9292",
                    "8292",
                    "tcp",
                    "600",
                ],
                &["Mapped public port 9292 protocol TCP to local port 8292"],
            )?;
            check_mapping(lab, 9292, lab.lan(1), 8292)?;
            run_expect(lab.lan(1), "upnpc", &["-s"], &["Found valid IGD"])?;
            lab.check_data_path(
                &portproxy,
                path,
                &["nat_pmp_to_cgn", "nat_pmp_to_client", "search_to_cgn"],
            )
        })
    })
}

/// The softwire is deleted and created again (a new ifindex), as when the tunnel restarts.
fn softwire_recreated(softwire: Softwire, path: DataPath) -> Result<()> {
    after_interface_change(softwire, path, |lab| lab.recreate_softwire())
}

every_path!(softwire_recreated);

/// The softwire goes down and up again. portproxy stops relaying while it is down (waiting
/// for it to come up) and rebuilds when it is back, on both softwire kinds.
fn softwire_down_up(softwire: Softwire, path: DataPath) -> Result<()> {
    after_interface_change(softwire, path, |lab| {
        lab.set_softwire_up(false)?;
        thread::sleep(Duration::from_millis(500));
        lab.set_softwire_up(true)
    })
}

every_path!(softwire_down_up);

/// The CPE's WAN (B4) address changes.
fn wan_address_changed(softwire: Softwire, path: DataPath) -> Result<()> {
    after_interface_change(softwire, path, |lab| {
        lab.change_cpe_softwire_address(Ipv4Addr::new(192, 0, 0, 3))
    })
}

every_path!(wan_address_changed);

/// Each fast-path hook layout (`--hooks`) carries a NAT-PMP mapping, and `portproxy stats`
/// shows the hooks it asked for: XDP (generic or native where the driver allows) in front of
/// TC with an Ethernet WAN, TC alone with `tc` or on an L3 softwire.
fn hook_layouts(softwire: Softwire) -> Result<()> {
    for (layout, external) in [("auto", "9331"), ("generic", "9332"), ("tc", "9333")] {
        let kernel = ["nat_pmp_to_cgn", "nat_pmp_to_client"];
        let args = ["--hooks", layout];
        let builder = Lab::builder(softwire);
        with_portproxy(
            builder,
            DataPath::FastPath,
            &args,
            &kernel,
            |lab, portproxy| {
                run_expect(
                    lab.lan(1),
                    "natpmpc",
                    &[
                        "-g",
                        &LAN_GATEWAY.to_string(),
                        "-a",
                        external,
                        "8331",
                        "tcp",
                        "600",
                    ],
                    &[&format!(
                        "Mapped public port {external} protocol TCP to local port 8331"
                    )],
                )?;
                let stats = lab.portproxy_stats(portproxy)?;
                let hooks: Vec<&str> = stats["hooks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| h.as_str())
                    .collect();
                let xdp: Vec<&&str> = hooks.iter().filter(|h| h.starts_with("xdp_")).collect();
                let tc = hooks.iter().filter(|h| h.starts_with("tc_")).count();
                ensure!(
                    tc == 2,
                    "--hooks {layout}: expected both TC programs, got {hooks:?}"
                );
                match (layout, softwire) {
                    ("tc", _) | (_, Softwire::L3) => {
                        ensure!(xdp.is_empty(), "--hooks {layout}: unexpected XDP {hooks:?}")
                    }
                    ("generic", Softwire::L2) => ensure!(
                        xdp.len() == 2 && xdp.iter().all(|h| h.ends_with("(generic)")),
                        "--hooks generic: expected both XDP programs in generic mode, got {hooks:?}"
                    ),
                    _ => ensure!(
                        xdp.len() == 2,
                        "--hooks auto: expected both XDP programs, got {hooks:?}"
                    ),
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}

both_softwires!(hook_layouts: hook_layouts_l2, hook_layouts_l3);

/// On the fast path, `-vv` logs one line per relayed packet, from the programs themselves
/// (aya-log); with `-v` there are none (the programs' log calls are compiled out by the
/// verifier).
fn fast_path_logs_each_packet(softwire: Softwire) -> Result<()> {
    for (verbosity, logs) in [("-vv", true), ("-v", false)] {
        with_lab(Lab::builder(softwire), |lab| {
            let args = [
                "--lan-iface",
                "br-lan",
                "--wan-iface",
                "softwire",
                verbosity,
            ];
            let portproxy = lab.spawn_portproxy_on(DataPath::FastPath, &args)?;
            logged(&portproxy, || {
                natpmpc_map(lab.lan(1), 9341, 8341)?;
                lab.check_data_path(
                    &portproxy,
                    DataPath::FastPath,
                    &["nat_pmp_to_cgn", "nat_pmp_to_client"],
                )?;
                let request = format!("NAT-PMP request {LAN1_IP}:");
                let reply = format!("NAT-PMP reply CGN {CGN_SOFTWIRE_IP} -> {LAN1_IP}:");
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut log = portproxy.log();
                while logs && !(log.contains(&request) && log.contains(&reply)) {
                    ensure!(
                        Instant::now() < deadline,
                        "{verbosity}: no per-packet lines {request:?} and {reply:?} from the programs"
                    );
                    thread::sleep(Duration::from_millis(50));
                    log = portproxy.log();
                }
                ensure!(
                    logs || !log.contains("(fast path)"),
                    "{verbosity}: per-packet lines without -vv"
                );
                Ok(())
            })
        })?;
    }
    Ok(())
}

both_softwires!(fast_path_logs_each_packet: fast_path_logs_each_packet_l2, fast_path_logs_each_packet_l3);
