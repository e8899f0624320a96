//! Double NAT (NAT444, or an own router behind the provider's): the CPE masquerades the LAN
//! out of the softwire like fw4, and the CGN has no route to the LAN, so nothing passes
//! that the CPE did not translate. portproxy detects the masquerade, answers every client
//! itself and makes each mapping of two halves: a mapping at the CGN for the CPE's own
//! address and a local port, and a DNAT on the CPE from that port to the LAN host (with
//! the firewall hole of the fw4-like forward filter). Real clients (`natpmpc`, crab_nat's
//! PCP client, `upnpc`) against CGNs that speak only PCP, only NAT-PMP or only UPnP; a
//! mapping counts only when the internet host reaches the LAN host through both halves.
//! Each scenario runs on every data path and both softwire kinds.

#[macro_use]
mod common;

/// Everything in one module, so that `cargo xtask test -- double_nat` selects these tests.
mod double_nat {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        thread,
        time::{Duration, Instant},
    };

    use super::common::{
        ARGS, Down, across_a_restart, lan_addr, logged, natpmpc_delete, natpmpc_map,
        natpmpc_map_any, natpmpc_tcp, reachable_through_renewals, reaches, run_expect, with_lab,
        with_portproxy,
    };
    use anyhow::{Context as _, Result, bail, ensure};
    use serde_json::Value;
    use tests::{
        CPE_SOFTWIRE_IP, CgnKind, DataPath, LAN_GATEWAY, LAN1_IP, Lab, LabBuilder, Netns,
        PUBLIC_IP, Softwire, pcp_map_tcp,
    };

    /// A NAT444 lab whose CGN speaks `kind`, behind the fw4-like firewall.
    fn nat444(softwire: Softwire, kind: CgnKind) -> LabBuilder {
        Lab::builder(softwire).cgn(kind).cpe_firewall().nat444()
    }

    /// The mapping of `host`:`internal` (TCP) in `portproxy mappings --json`, if listed.
    fn mapping(lab: &Lab, host: Ipv4Addr, internal: u16) -> Result<Option<Value>> {
        let json = lab.portproxy_mappings()?;
        Ok(json
            .as_array()
            .context("mappings --json is not an array")?
            .iter()
            .find(|m| {
                m["host"] == host.to_string()
                    && m["internal_port"] == internal
                    && m["protocol"] == "tcp"
            })
            .cloned())
    }

    /// The CGN's NAT table (its mappings).
    fn cgn_nat(lab: &Lab) -> Result<String> {
        run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])
    }

    /// Checks both halves of the mapping of TCP `external` to `host`:`internal`: the CGN maps
    /// `external` to the CPE's softwire address and a local port (never to a LAN address), the
    /// CPE forwards that port to the host, its firewall has the hole, and the internet host
    /// reaches the host's service at the CGN's public address. Returns the local port.
    fn check_both_halves(lab: &Lab, external: u16, host: &Netns, internal: u16) -> Result<u16> {
        let local = check_cpe_half(lab, external, host, internal)?;
        let nat = cgn_nat(lab)?;
        ensure!(
            nat.contains(&format!(
                "dport {external} dnat ip to {CPE_SOFTWIRE_IP}:{local}"
            )),
            "the CGN does not map {external} to {CPE_SOFTWIRE_IP}:{local}:\n{nat}"
        );
        check_no_lan_address(&nat)?;
        reaches(lab, PUBLIC_IP, external, host, internal)?;
        Ok(local)
    }

    /// `check_both_halves` (with the CPE's softwire address `cpe`) of a mapping portproxy may
    /// be asking the CGN for again while it is checked: see `reachable_through_renewals`.
    fn check_both_halves_again(
        lab: &Lab,
        cpe: Ipv4Addr,
        external: u16,
        host: &Netns,
        internal: u16,
    ) -> Result<u16> {
        let local = check_cpe_half(lab, external, host, internal)?;
        let to = SocketAddrV4::new(cpe, local);
        reachable_through_renewals(lab, PUBLIC_IP, external, to, host, internal)?;
        check_no_lan_address(&cgn_nat(lab)?)?;
        Ok(local)
    }

    /// The CPE's half of the mapping of TCP `external` to `host`:`internal`: the table lists
    /// it with the CGN's address and `external`, the CPE forwards its local port to the host,
    /// and its firewall has the hole. Returns the local port.
    fn check_cpe_half(lab: &Lab, external: u16, host: &Netns, internal: u16) -> Result<u16> {
        let addr = lan_addr(host);
        let m = mapping(lab, addr, internal)?
            .with_context(|| format!("portproxy mappings does not list {addr}:{internal}"))?;
        ensure!(
            m["external_port"] == external && m["external_address"] == PUBLIC_IP.to_string(),
            "the client was told another external address or port than {PUBLIC_IP}:{external}: {m:#}"
        );
        let local = m["local_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("no local port in double NAT: {m:#}"))?;
        let forwards = lab.forwards()?;
        ensure!(
            forwards.iter().any(|f| f.protocol == "tcp"
                && f.local_port == local
                && f.host == addr.to_string()
                && f.internal_port == internal),
            "the CPE does not forward tcp {local} to {addr}:{internal}: {forwards:?}"
        );
        let holes = lab.holes()?;
        ensure!(
            holes
                .iter()
                .any(|h| h.host == addr.to_string() && h.protocol == "tcp" && h.port == internal),
            "no firewall hole for {addr}:{internal}: {holes:?}"
        );
        Ok(local)
    }

    /// The CGN's NAT table `nat` maps nothing to a LAN address, which it cannot reach.
    fn check_no_lan_address(nat: &str) -> Result<()> {
        ensure!(
            !nat.contains("dnat ip to 192.168.1."),
            "the CGN maps to a LAN address it cannot reach:\n{nat}"
        );
        Ok(())
    }

    /// Checks that neither half of the mapping `external` -> `host`:`internal` (local port
    /// `local`) is left: not at the CGN, not forwarded or opened on the CPE, not in the table.
    fn check_both_gone(
        lab: &Lab,
        external: u16,
        local: u16,
        host: Ipv4Addr,
        internal: u16,
    ) -> Result<()> {
        let nat = cgn_nat(lab)?;
        ensure!(
            !nat.contains(&format!("dport {external} ")),
            "the CGN still maps {external}:\n{nat}"
        );
        let forwards = lab.forwards()?;
        ensure!(
            !forwards.iter().any(|f| f.local_port == local),
            "the CPE still forwards {local}: {forwards:?}"
        );
        let holes = lab.holes()?;
        ensure!(
            !holes
                .iter()
                .any(|h| h.host == host.to_string() && h.port == internal),
            "the hole for {host}:{internal} is still open: {holes:?}"
        );
        ensure!(
            mapping(lab, host, internal)?.is_none(),
            "the table still holds {host}:{internal}"
        );
        Ok(())
    }

    /// Waits (at most `within`) until `done` holds; its last error otherwise.
    fn wait_for(within: Duration, mut done: impl FnMut() -> Result<()>) -> Result<Duration> {
        let start = Instant::now();
        loop {
            match done() {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) if start.elapsed() > within => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The client protocols of the LAN hosts.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Client {
        NatPmp,
        Pcp,
        Upnp,
    }

    /// `upnpc -u <portproxy's IGD:1> ARGS` in `ns`, whose output must hold `expected`.
    fn upnpc(ns: &Netns, args: &[&str], expected: &[&str]) -> Result<String> {
        let mut all = vec!["-u", "http://192.168.1.1:5000/igd1.xml"];
        all.extend_from_slice(args);
        run_expect(ns, "upnpc", &all, expected)
    }

    /// `host` asks for TCP `internal` on external port `external` in `client`'s protocol, and
    /// must be told the CGN's public address and that port.
    fn map(client: Client, host: &Netns, external: u16, internal: u16) -> Result<()> {
        let addr = lan_addr(host);
        match client {
            Client::NatPmp => {
                let out = natpmpc_map(host, external, internal)?;
                ensure!(
                    out.contains(&format!("Public IP address : {PUBLIC_IP}")),
                    "natpmpc was not told the CGN's address:\n{out}"
                );
            }
            Client::Pcp => {
                let pcp = pcp_map_tcp(host, LAN_GATEWAY, addr, internal, external, 600)?;
                ensure!(
                    pcp.external_port == external && pcp.external_ip == PUBLIC_IP,
                    "{pcp:?}"
                );
            }
            Client::Upnp => {
                let (addr, internal_s, external_s) =
                    (addr.to_string(), internal.to_string(), external.to_string());
                upnpc(
                    host,
                    &["-a", &addr, &internal_s, &external_s, "tcp", "600"],
                    &[&format!(
                        "external {PUBLIC_IP}:{external} TCP is redirected to internal {addr}:{internal}"
                    )],
                )?;
            }
        }
        Ok(())
    }

    /// What `portproxy stats` says about port control for a CGN of `kind`: everything is
    /// answered here in double NAT, mapped with what the CGN speaks.
    fn plan_of(kind: CgnKind) -> String {
        let via = match kind {
            CgnKind::PcpOnly | CgnKind::Everything => "PCP",
            CgnKind::NatPmpOnly => "NAT-PMP",
            CgnKind::UpnpOnly | CgnKind::UpnpIgd1Only => "UPnP IGD",
        };
        format!(
            "NAT-PMP answered here, mapped with {via}; PCP answered here, mapped with {via}; \
             UPnP IGD answered here, mapped with {via}"
        )
    }

    /// A LAN host's client gets a mapping on the external port it asked for, with the local
    /// port the same (free on the CPE); a second host asking for a port the CPE itself serves
    /// gets that external port with another local one, and the internet reaches the host, not
    /// the CPE's service; a delete (NAT-PMP, UPnP) removes both halves.
    fn client_maps(
        softwire: Softwire,
        path: DataPath,
        kind: CgnKind,
        client: Client,
    ) -> Result<()> {
        let kernel: &[&str] = match client {
            Client::Upnp => &[],
            Client::NatPmp | Client::Pcp => &["passed_to_daemon"],
        };
        with_portproxy(
            nat444(softwire, kind),
            path,
            &[],
            kernel,
            |lab, portproxy| {
                let stats = lab.portproxy_stats(portproxy)?;
                let plan = plan_of(kind);
                ensure!(
                    stats["port_control"] == plan.as_str(),
                    "expected port control {plan:?}, stats say {}",
                    stats["port_control"]
                );
                ensure!(
                    stats["double_nat"] == true,
                    "stats do not say double NAT: {stats:#}"
                );
                ensure!(
                portproxy.log().contains(
                    "double NAT (the nftables chain inet fw4 srcnat_wan translates traffic leaving softwire)"
                ),
                "portproxy did not say why it runs in double NAT"
            );
                map(client, lab.lan(1), 9301, 8301)?;
                let local = check_both_halves(lab, 9301, lab.lan(1), 8301)?;
                ensure!(local == 9301, "local port {local}, not the free 9301");

                // The CPE itself listens on 9302 (all addresses): the forward must not take it.
                let _own = lab.cpe().serve_tcp(9302)?;
                map(client, lab.lan(2), 9302, 8302)?;
                let local = check_both_halves(lab, 9302, lab.lan(2), 8302)?;
                ensure!(local == 8302, "local port {local}, not the internal 8302");

                match client {
                    Client::NatPmp => natpmpc_delete(lab.lan(1), 9301, 8301)?,
                    Client::Upnp => drop(upnpc(lab.lan(1), &["-d", "9301", "tcp"], &[])?),
                    // crab_nat deletes only mappings it holds in memory; PCP deletes go the same way
                    // (`Mapper::delete`) as NAT-PMP's.
                    Client::Pcp => return Ok(()),
                }
                check_both_gone(lab, 9301, 9301, LAN1_IP, 8301)?;
                check_both_halves(lab, 9302, lab.lan(2), 8302).map(drop)
            },
        )
    }

    /// One cell of the client × CGN matrix: `cell!(name: CgnKind, Client)`, on every data
    /// path and softwire kind.
    macro_rules! cell {
        ($name:ident: $kind:ident, $client:ident) => {
            fn $name(softwire: Softwire, path: DataPath) -> Result<()> {
                client_maps(softwire, path, CgnKind::$kind, Client::$client)
            }
            every_path!($name);
        };
    }

    cell!(natpmp_client_on_a_pcp_cgn: PcpOnly, NatPmp);
    cell!(pcp_client_on_a_pcp_cgn: PcpOnly, Pcp);
    cell!(upnp_client_on_a_pcp_cgn: PcpOnly, Upnp);
    cell!(natpmp_client_on_a_natpmp_cgn: NatPmpOnly, NatPmp);
    cell!(pcp_client_on_a_natpmp_cgn: NatPmpOnly, Pcp);
    cell!(upnp_client_on_a_natpmp_cgn: NatPmpOnly, Upnp);
    cell!(natpmp_client_on_a_upnp_cgn: UpnpOnly, NatPmp);
    cell!(pcp_client_on_a_upnp_cgn: UpnpOnly, Pcp);
    cell!(upnp_client_on_a_upnp_cgn: UpnpOnly, Upnp);
    cell!(natpmp_client_on_an_igd1_cgn: UpnpIgd1Only, NatPmp);

    /// A mapping that runs out: its CGN half (miniupnpd drops it), its forward and its hole
    /// (their timeouts) and its table entry go within a second or two of its lifetime.
    fn expiry_removes_both_halves(softwire: Softwire, path: DataPath) -> Result<()> {
        const LIFETIME: u64 = 4;
        let kernel = ["passed_to_daemon"];
        with_portproxy(
            nat444(softwire, CgnKind::NatPmpOnly),
            path,
            &[],
            &kernel,
            |lab, _| {
                natpmpc_tcp(
                    lab.lan(1),
                    9311,
                    8311,
                    LIFETIME as u32,
                    "Mapped public port 9311 protocol TCP to local port 8311",
                )?;
                let end = Instant::now() + Duration::from_secs(LIFETIME);
                let local = check_both_halves(lab, 9311, lab.lan(1), 8311)?;
                let forward = lab.forwards()?;
                ensure!(
                    forward.iter().all(|f| f.expires <= LIFETIME),
                    "a forward outlives the mapping's {LIFETIME} s: {forward:?}"
                );
                thread::sleep(end.saturating_duration_since(Instant::now()));
                let took = wait_for(Duration::from_secs(3), || {
                    check_both_gone(lab, 9311, local, LAN1_IP, 8311)
                })?;
                eprintln!("both halves gone {took:?} after the lifetime ended");
                Ok(())
            },
        )
    }
    every_path!(expiry_removes_both_halves);

    /// A restart (after `down`: a stop or a crash) leaves no stale forward, and the persisted
    /// mappings come back with both halves: the same local ports forwarded again, the CGN
    /// half asked for again, reachable.
    fn restart(softwire: Softwire, down: Down) -> Result<()> {
        with_lab(nat444(softwire, CgnKind::PcpOnly), |lab| {
            across_a_restart(
                lab,
                DataPath::Sockets,
                &[],
                |lab| {
                    map(Client::NatPmp, lab.lan(1), 9321, 8321)?;
                    map(Client::Pcp, lab.lan(2), 9322, 8322)?;
                    Ok([
                        check_both_halves(lab, 9321, lab.lan(1), 8321)?,
                        check_both_halves(lab, 9322, lab.lan(2), 8322)?,
                    ])
                },
                |lab, first| {
                    down.take(lab, first)?;
                    if down == Down::Restart {
                        ensure!(
                            !lab.has_local_nat_table()?,
                            "the forwards outlived portproxy"
                        );
                        return Ok(());
                    }
                    ensure!(lab.has_local_nat_table()?, "the kill took the table along?");
                    // A forward the table does not know of, as a crashed run may leave.
                    for (map, element) in [
                        ("hosts", "{ tcp . 9399 : 192.168.1.3 }"),
                        ("ports", "{ tcp . 9399 : 9399 }"),
                    ] {
                        let add = ["add", "element", "inet", "portproxy_nat", map, element];
                        lab.cpe().run("nft", &add)?;
                    }
                    Ok(())
                },
                |lab, _, locals| {
                    let forwards = lab.forwards()?;
                    ensure!(
                        !forwards.iter().any(|f| f.local_port == 9399),
                        "a stale forward survived the restart: {forwards:?}"
                    );
                    // The keeper may still be asking the CGN for the restored mappings.
                    let again = [
                        check_both_halves_again(lab, CPE_SOFTWIRE_IP, 9321, lab.lan(1), 8321)?,
                        check_both_halves_again(lab, CPE_SOFTWIRE_IP, 9322, lab.lan(2), 8322)?,
                    ];
                    ensure!(again == locals, "local ports {again:?}, were {locals:?}");
                    ensure!(forwards.len() == 2, "{forwards:?}");
                    // The NAT-PMP client renews through the restored entry.
                    natpmpc_map(lab.lan(1), 9321, 8321)?;
                    check_both_halves_again(lab, CPE_SOFTWIRE_IP, 9321, lab.lan(1), 8321).map(drop)
                },
            )
        })
    }

    both_softwires!(restart(Down::Restart): restart_after_stop_l2, restart_after_stop_l3);
    both_softwires!(restart(Down::Crash): restart_after_crash_l2, restart_after_crash_l3);

    /// The CGN reboots and loses every mapping: portproxy asks for them again (for the CPE's
    /// address and the same local ports), and the internet host reaches both hosts again.
    fn cgn_reboot(softwire: Softwire, path: DataPath) -> Result<()> {
        with_lab(nat444(softwire, CgnKind::PcpOnly), |lab| {
            let portproxy = lab.spawn_portproxy_on(path, &ARGS)?;
            logged(&portproxy, || {
                map(Client::NatPmp, lab.lan(1), 9331, 8331)?;
                map(Client::Pcp, lab.lan(2), 9332, 8332)?;
                // The epoch's 2 s slack (RFC 6887 §8.5; see proxy.rs).
                thread::sleep(Duration::from_secs(4));
                lab.reboot_cgn()?;
                let took = wait_for(Duration::from_secs(10), || {
                    let nat = cgn_nat(lab)?;
                    for external in [9331, 9332] {
                        if !nat.contains(&format!("dport {external} dnat ip to {CPE_SOFTWIRE_IP}:"))
                        {
                            bail!("the CGN does not map {external} again:\n{nat}");
                        }
                    }
                    Ok(())
                })?;
                eprintln!("both back at the CGN after {took:?}");
                check_both_halves_again(lab, CPE_SOFTWIRE_IP, 9331, lab.lan(1), 8331)?;
                check_both_halves_again(lab, CPE_SOFTWIRE_IP, 9332, lab.lan(2), 8332)?;
                lab.check_data_path(&portproxy, path, &["passed_to_daemon"])
            })
        })
    }
    every_path!(cgn_reboot);

    /// The CPE's WAN address changes (the ISP hands out another): every mapping is made again
    /// at the CGN for the new address, with the same local port; the old one holds its external
    /// port there until it runs out, so the client may get another, which it is told when it
    /// renews (as the announcements on the LAN ask it to).
    fn wan_address_change(softwire: Softwire, path: DataPath) -> Result<()> {
        const RENUMBERED: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 3);
        let kernel = ["passed_to_daemon"];
        with_portproxy(
            nat444(softwire, CgnKind::PcpOnly),
            path,
            &[],
            &kernel,
            |lab, _| {
                map(Client::NatPmp, lab.lan(1), 9351, 8351)?;
                let local = check_both_halves(lab, 9351, lab.lan(1), 8351)?;
                lab.change_cpe_softwire_address(RENUMBERED)?;
                let took = wait_for(Duration::from_secs(10), || {
                    let nat = cgn_nat(lab)?;
                    ensure!(
                        nat.contains(&format!("dnat ip to {RENUMBERED}:{local}")),
                        "the CGN does not map to {RENUMBERED}:{local}:\n{nat}"
                    );
                    Ok(())
                })?;
                eprintln!("mapped for the new address after {took:?}");
                // The client renews (the announcements ask it to) and is told the port it has now.
                let external = natpmpc_map_any(lab.lan(1), 9351, 8351)?;
                let again = check_both_halves_again(lab, RENUMBERED, external, lab.lan(1), 8351)?;
                ensure!(again == local, "local port {again}, was {local}");
                Ok(())
            },
        )
    }
    every_path!(wan_address_change);

    /// Detection: `auto` finds no translation on a DS-Lite CPE (no local NAT table, requests
    /// relayed); `--double-nat off` on a NAT444 CPE does as told; `--double-nat on` on a
    /// DS-Lite CPE makes mappings of two halves all the same.
    fn detection(softwire: Softwire) -> Result<()> {
        let cases: [(bool, &str, bool); 3] = [
            (false, "auto", false),
            (true, "off", false),
            (false, "on", true),
        ];
        for (nat444, mode, double_nat) in cases {
            let mut builder = Lab::builder(softwire)
                .cgn(CgnKind::Everything)
                .cpe_firewall();
            if nat444 {
                builder = builder.nat444();
            }
            with_lab(builder, |lab| {
                let mut args = ARGS.to_vec();
                args.extend_from_slice(&["--double-nat", mode]);
                let portproxy = lab.spawn_portproxy_on(DataPath::Sockets, &args)?;
                logged(&portproxy, || {
                    let what = format!("--double-nat {mode} on a CPE with NAT {nat444}");
                    ensure!(
                        lab.has_local_nat_table()? == double_nat,
                        "{what}: local NAT table {}",
                        !double_nat
                    );
                    let plan = lab.portproxy_stats(&portproxy)?["port_control"].clone();
                    let expected = match double_nat {
                        true => plan_of(CgnKind::Everything),
                        false => "NAT-PMP relayed; PCP relayed; UPnP IGD relayed".to_string(),
                    };
                    ensure!(plan == expected.as_str(), "{what}: port control {plan}");
                    if double_nat {
                        ensure!(portproxy.log().contains("double NAT (--double-nat on)"));
                        map(Client::NatPmp, lab.lan(1), 9341, 8341)?;
                        check_both_halves(lab, 9341, lab.lan(1), 8341)?;
                    }
                    Ok(())
                })
            })?;
        }
        Ok(())
    }
    both_softwires!(detection: detection_l2, detection_l3);
}
