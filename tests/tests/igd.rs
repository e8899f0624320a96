//! portproxy as the LAN's UPnP IGD (RFC 6970 interworking): the CGN speaks PCP only or
//! NAT-PMP only, as DS-Lite AFTRs and carrier boxes do, so UPnP control points would find
//! no IGD through a relay. A real control point (`upnpc`) finds portproxy's, maps, lists
//! and deletes through it; what it maps is mapped at the CGN in PCP or NAT-PMP and
//! reachable from the internet host through the fw4-like CPE firewall. Every scenario runs
//! on every data path and both softwire kinds.

#[macro_use]
mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::{check_mapping, run_expect, with_lab};
use tests::{
    CgnKind, Daemon, DataPath, LAN1_IP, LAN2_IP, Lab, Netns, PUBLIC_IP, Softwire, show_output,
};

/// Runs portproxy in a lab whose CGN speaks `kind`, behind the fw4-like firewall, then
/// `test`; prints portproxy's log on failure.
fn with_igd(
    softwire: Softwire,
    path: DataPath,
    kind: CgnKind,
    test: impl FnOnce(&Lab, &Daemon) -> Result<()>,
) -> Result<()> {
    with_lab(Lab::builder(softwire).cgn(kind).cpe_firewall(), |lab| {
        let args = ["--lan-iface", "br-lan", "--wan-iface", "softwire", "-vv"];
        let portproxy = lab.spawn_portproxy_on(path, &args)?;
        let result = test(lab, &portproxy)
            .and_then(|()| lab.check_data_path(&portproxy, path, &["passed_to_daemon"]));
        if result.is_err() {
            eprintln!("=== portproxy log\n{}", portproxy.log());
        }
        result
    })
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
