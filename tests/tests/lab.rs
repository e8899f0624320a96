//! The lab itself, without portproxy: the real peers (natpmpc, crab_nat's PCP client, upnpc)
//! reach miniupnpd on the CGN the way portproxy's relay will, on both softwire kinds.
//! Run as root: `cargo test -p tests --test lab`.

#[macro_use]
mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{run_expect, with_lab};
use tests::{
    CGN_SOFTWIRE_IP, CPE_SOFTWIRE_IP, INET_IP, LAN1_IP, Lab, PUBLIC_IP, SSDP_GROUP, Softwire,
    pcp_map_tcp,
};

/// What portproxy's source-preserving relay produces: lan1's own NAT-PMP requests, routed
/// by the CPE to the CGN. The mapping must point at lan1.
fn natpmp_maps_lan_host(softwire: Softwire) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        let gateway = CGN_SOFTWIRE_IP.to_string();
        run_expect(
            lab.lan(1),
            "natpmpc",
            &["-g", &gateway],
            &[&format!("Public IP address : {PUBLIC_IP}")],
        )?;
        run_expect(
            lab.lan(1),
            "natpmpc",
            &["-g", &gateway, "-a", "9081", "8081", "tcp", "600"],
            &["Mapped public port 9081 protocol TCP to local port 8081"],
        )?;
        let ruleset = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
        ensure!(
            ruleset.contains(&format!("dport 9081 dnat ip to {LAN1_IP}:8081")),
            "the CGN's mapping does not point at lan1:\n{ruleset}"
        );
        let _server = lab.lan(1).serve_tcp(8081)?;
        let reply = lab
            .inet()
            .connect_tcp(SocketAddr::from((PUBLIC_IP, 9081)))?;
        ensure!(reply == "lan1", "inet reached {reply:?} instead of lan1");
        Ok(())
    })
}

both_softwires!(natpmp_maps_lan_host: lab_l2_natpmp_maps_lan_host, lab_l3_natpmp_maps_lan_host);

fn pcp_maps_lan_host(softwire: Softwire) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        let mapping = pcp_map_tcp(lab.lan(1), CGN_SOFTWIRE_IP, LAN1_IP, 8083, 9083, 600)?;
        eprintln!("granted: {mapping:?}");
        ensure!(
            mapping.external_ip == PUBLIC_IP && mapping.external_port == 9083,
            "unexpected grant {mapping:?}"
        );
        let _server = lab.lan(1).serve_tcp(8083)?;
        let reply = lab
            .inet()
            .connect_tcp(SocketAddr::from((PUBLIC_IP, 9083)))?;
        ensure!(reply == "lan1", "inet reached {reply:?} instead of lan1");
        Ok(())
    })
}

both_softwires!(pcp_maps_lan_host: lab_l2_pcp_maps_lan_host, lab_l3_pcp_maps_lan_host);

/// What portproxy's SSDP and HTTP relay produces: discovery and SOAP from the CPE's own
/// softwire address. The M-SEARCH is multicast, so this also shows that multicast crosses
/// the softwire.
fn upnp_from_cpe(softwire: Softwire) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        let cpe = lab.cpe();
        let control = format!("http://{CGN_SOFTWIRE_IP}:5000/ctl/IPConn");
        run_expect(
            cpe,
            "upnpc",
            &["-s"],
            &[
                &format!("Found valid IGD : {control}"),
                &format!("Local LAN ip address : {CPE_SOFTWIRE_IP}"),
                &format!("ExternalIPAddress = {PUBLIC_IP}"),
            ],
        )?;
        let b4 = CPE_SOFTWIRE_IP.to_string();
        run_expect(
            cpe,
            "upnpc",
            &["-a", &b4, "8082", "9082", "tcp"],
            &[&format!(
                "external {PUBLIC_IP}:9082 TCP is redirected to internal {b4}:8082"
            )],
        )?;
        let _server = cpe.serve_tcp(8082)?;
        let reply = lab
            .inet()
            .connect_tcp(SocketAddr::from((PUBLIC_IP, 9082)))?;
        ensure!(reply == "cpe", "inet reached {reply:?} instead of the CPE");

        // Discovery is proven; the rest goes straight to the description URL.
        let desc = format!("http://{CGN_SOFTWIRE_IP}:5000/rootDesc.xml");
        let listed = format!("9082->{b4}:8082");
        run_expect(cpe, "upnpc", &["-u", &desc, "-l"], &[&listed])?;
        run_expect(cpe, "upnpc", &["-u", &desc, "-d", "9082", "tcp"], &[])?;
        let list = run_expect(cpe, "upnpc", &["-u", &desc, "-l"], &[])?;
        ensure!(
            !list.contains(&listed),
            "9082 still listed after -d:\n{list}"
        );
        Ok(())
    })
}

both_softwires!(upnp_from_cpe: lab_l2_upnp_from_cpe, lab_l3_upnp_from_cpe);

/// miniupnpd's periodic NOTIFY (multicast from 192.0.0.1) arrives at a socket in the CPE
/// that joined the SSDP group on the softwire.
fn notify_reaches_cpe(softwire: Softwire) -> Result<()> {
    let interval = 2;
    with_lab(Lab::builder(softwire).notify_interval(interval), |lab| {
        let socket = lab.cpe().enter(|| -> Result<UdpSocket> {
            let socket = UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 1900))?;
            socket.join_multicast_v4(&SSDP_GROUP, &CPE_SOFTWIRE_IP)?;
            Ok(socket)
        })??;
        let deadline = Instant::now() + Duration::from_secs(2 * u64::from(interval) + 3);
        let mut buf = [0; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no NOTIFY from the CGN within {interval} s + margin");
            }
            socket.set_read_timeout(Some(left))?;
            let Ok((len, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..len]);
            if from.ip() == CGN_SOFTWIRE_IP && text.starts_with("NOTIFY * HTTP/1.1") {
                ensure!(
                    text.contains(&format!("http://{CGN_SOFTWIRE_IP}:5000/rootDesc.xml")),
                    "NOTIFY without the CGN's LOCATION:\n{text}"
                );
                return Ok(());
            }
        }
    })
}

both_softwires!(notify_reaches_cpe: lab_l2_notify_reaches_cpe, lab_l3_notify_reaches_cpe);

/// The fault hooks: the softwire down cuts the LAN off, up restores it, and a recreated
/// device (new ifindex) carries traffic and NAT-PMP again.
fn softwire_faults(softwire: Softwire) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        let _server = lab.inet().serve_tcp(7000)?;
        let inet = SocketAddr::from((INET_IP, 7000));
        let reach = |lab: &Lab| lab.lan(1).connect_tcp(inet);
        ensure!(reach(lab)? == "inet");
        lab.set_softwire_up(false)?;
        ensure!(
            reach(lab).is_err(),
            "lan1 reached inet with the softwire down"
        );
        lab.set_softwire_up(true)?;
        reach(lab).context("after the softwire came back up")?;

        let before = lab.cpe_softwire_ifindex()?;
        lab.recreate_softwire()?;
        let after = lab.cpe_softwire_ifindex()?;
        ensure!(
            before != after,
            "ifindex unchanged ({before}) after recreate"
        );
        reach(lab).context("after the softwire was recreated")?;
        run_expect(
            lab.lan(1),
            "natpmpc",
            &["-g", &CGN_SOFTWIRE_IP.to_string()],
            &[&format!("Public IP address : {PUBLIC_IP}")],
        )?;
        Ok(())
    })
}

both_softwires!(softwire_faults: lab_l2_softwire_faults, lab_l3_softwire_faults);

/// A lab removes its namespaces, processes and directory when dropped, also when a test
/// panics.
#[test]
fn lab_removes_everything_on_panic() -> Result<()> {
    let mut left = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new(Softwire::L3).expect("lab");
        let names: Vec<String> = lab
            .namespaces()
            .iter()
            .map(|ns| ns.name().to_owned())
            .collect();
        let cgn = lab.cgn().name().to_owned();
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &cgn])
            .output();
        let pids = String::from_utf8_lossy(&pids.expect("ip netns pids").stdout).into_owned();
        left = Some((names, lab.dir().to_owned(), pids));
        panic!("a test failing with its lab up");
    }));
    ensure!(outcome.is_err());
    let (names, dir, pids) = left.context("the lab was not built")?;
    ensure!(!pids.trim().is_empty(), "miniupnpd was not running");
    for pid in pids.split_whitespace() {
        ensure!(
            !std::path::Path::new("/proc").join(pid).exists(),
            "process {pid} (miniupnpd) left running"
        );
    }
    for name in &names {
        ensure!(
            !std::path::Path::new("/run/netns").join(name).exists(),
            "namespace {name} left behind"
        );
    }
    ensure!(!dir.exists(), "{dir:?} left behind");
    Ok(())
}
