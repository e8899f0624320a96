//! `portproxy map`, the port-mapping client for any host, run as nobody against every kind
//! of CGN: directly (in the CPE, whose gateway is the CGN; no daemon, so it maps the CPE's
//! own address) and through portproxy (on a LAN host, the daemon on the CPE behind an
//! fw4-like firewall, on every data path and softwire). Each run maps a port and reaches it
//! from the internet host, sees it renewed before its short lifetime ends, sees it made
//! again after the CGN reboots and moved after the CGN's address changes (and reaches it
//! there), and sees it deleted at the CGN when it is stopped.

#[macro_use]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use common::{
    ARGS, logged, mapped_again, reachable_through_renewals, run_expect, with_lab, with_portproxy,
};
use serde_json::Value;
use tests::{
    CPE_SOFTWIRE_IP, CgnKind, DataPath, LAN1_IP, Lab, LabBuilder, Netns, PUBLIC_IP, Softwire,
    map_events, wait_map_event,
};

/// The lifetime asked for: renewed every 3 s.
const LIFETIME: u32 = 6;
/// The CGN's new external address in the renumbering step.
const NEW_PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 9);
/// How long re-creating or moving the mapping may take: an announcement makes it renew at
/// once, else the next renewal (half the lifetime) does, or portproxy's check of the CGN
/// (every 5 s) and its announcement to the LAN.
const REACTS_WITHIN: Duration = Duration::from_secs(15);
const STOPS_WITHIN: Duration = Duration::from_secs(10);

/// A CGN that grants PCP the `LIFETIME` asked: miniupnpd raises anything below 120 s to
/// 120 s unless its maximum (and so its minimum, half of it) is lowered.
fn short_lifetimes(builder: LabBuilder) -> LabBuilder {
    builder.pcp_max_lifetime(2 * LIFETIME)
}

/// Where `portproxy map` runs and what it should find.
struct Case<'a> {
    /// The namespace it runs in (the lab is borrowed mutably between steps).
    host: fn(&Lab) -> &Netns,
    host_ip: Ipv4Addr,
    /// Extra arguments (`--protocol`).
    args: &'a [&'a str],
    /// The protocol it maps with ("pcp", "nat-pmp", "upnp").
    protocol: &'a str,
    /// Whether a CGN reboot shows as an epoch reset ("recreated"): not with UPnP, which has
    /// no epoch (the next renewal makes the mapping again all the same).
    epoch: bool,
    internal: u16,
    external: u16,
}

/// The mapping of `event`'s external address and port.
fn external_of(event: &Value) -> Result<(Ipv4Addr, u16)> {
    let addr = event["external_address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no external address in {event}"))?;
    let port = event["external_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("no external port in {event}"))?;
    Ok((addr, port))
}

/// The CGN maps TCP `external` to the host, and the internet host reaches the host's
/// service through `public`:`external`; `portproxy map` renews the mapping every few
/// seconds, so a connection may meet a renewal at the CGN.
fn reachable(lab: &Lab, case: &Case, public: Ipv4Addr) -> Result<()> {
    let to = SocketAddrV4::new(case.host_ip, case.internal);
    let host = (case.host)(lab);
    reachable_through_renewals(lab, public, case.external, to, host, case.internal)
}

/// Map, reach, renew, survive a CGN reboot and a new address, delete on SIGTERM.
fn keeps_a_mapping(lab: &mut Lab, case: &Case) -> Result<()> {
    let (internal, external, lifetime) = (
        case.internal.to_string(),
        case.external.to_string(),
        LIFETIME.to_string(),
    );
    let mut args = vec![
        internal.as_str(),
        "--external",
        &external,
        "--lifetime",
        &lifetime,
    ];
    args.extend_from_slice(case.args);
    let mut map = lab.spawn_map((case.host)(lab), &args)?;
    let mapped_at = Instant::now();
    let result = (|| -> Result<()> {
        let first = &map_events(&map)[0];
        ensure!(
            first["event"] == "mapped" && first["protocol"] == case.protocol,
            "expected a mapping with {}: {first}",
            case.protocol
        );
        ensure!(
            external_of(first)? == (PUBLIC_IP, case.external),
            "mapped elsewhere: {first}"
        );
        ensure!(first["internal"] == format!("{}:{}", case.host_ip, case.internal));
        let granted = first["lifetime"].as_u64().unwrap_or(0);
        ensure!(
            (1..=u64::from(LIFETIME)).contains(&granted),
            "lifetime {granted} for {LIFETIME} asked: {first}"
        );
        reachable(lab, case, PUBLIC_IP)?;

        // Renewed before it ends.
        let within = Duration::from_secs(granted);
        let (renewed, seen) =
            wait_map_event(&map, 1, within, "renewed", |e| e["event"] == "renewed")?;
        ensure!(
            mapped_at.elapsed() < within + Duration::from_secs(1),
            "renewed only after {:?}, the lifetime was {granted} s: {renewed}",
            mapped_at.elapsed()
        );
        ensure!(
            external_of(&renewed)? == (PUBLIC_IP, case.external),
            "{renewed}"
        );

        // The CGN reboots and forgets the mapping: it is made again.
        lab.reboot_cgn()?;
        let seen = if case.epoch {
            let (again, seen) = wait_map_event(&map, seen, REACTS_WITHIN, "recreated", |e| {
                e["event"] == "recreated"
            })?;
            ensure!(
                external_of(&again)? == (PUBLIC_IP, case.external),
                "{again}"
            );
            seen
        } else {
            seen
        };
        mapped_again(
            lab,
            case.external,
            case.host_ip,
            case.internal,
            REACTS_WITHIN,
        )?;
        reachable(lab, case, PUBLIC_IP)?;

        // The carrier renumbers: the mapping moves to the new address, and is printed.
        lab.change_public_address(NEW_PUBLIC_IP)?;
        let (moved, seen) = wait_map_event(&map, seen, REACTS_WITHIN, "changed", |e| {
            e["event"] == "changed"
        })?;
        ensure!(
            external_of(&moved)? == (NEW_PUBLIC_IP, case.external)
                && moved["previous"] == format!("{PUBLIC_IP}:{}", case.external),
            "{moved}"
        );
        mapped_again(
            lab,
            case.external,
            case.host_ip,
            case.internal,
            REACTS_WITHIN,
        )?;
        reachable(lab, case, NEW_PUBLIC_IP)?;
        // And renewed there as before.
        let (renewed, _) =
            wait_map_event(&map, seen, within, "renewed", |e| e["event"] == "renewed")?;
        ensure!(
            external_of(&renewed)? == (NEW_PUBLIC_IP, case.external),
            "{renewed}"
        );
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("=== portproxy map\n{}", map.log());
        return Err(e);
    }

    // Stopped: it deletes the mapping at the CGN and exits 0.
    let status = map.stop(STOPS_WITHIN)?;
    let events = map_events(&map);
    let last = events.last().context("no events")?;
    ensure!(
        status.success() && last["event"] == "deleted",
        "expected a delete and exit 0, got {status}:\n{}",
        map.log()
    );
    let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
    ensure!(
        !nat.contains(&format!("dport {} ", case.external)),
        "the CGN still maps {} after portproxy map exited:\n{nat}",
        case.external
    );
    Ok(())
}

/// Directly in the CPE: its default route goes to the CGN, which maps the CPE's own address.
fn direct(softwire: Softwire, kind: CgnKind, protocol: &str) -> Result<()> {
    with_lab(short_lifetimes(Lab::builder(softwire).cgn(kind)), |lab| {
        let case = Case {
            host: Lab::cpe,
            host_ip: CPE_SOFTWIRE_IP,
            args: &[],
            protocol,
            epoch: protocol != "upnp",
            internal: 8301,
            external: 9301,
        };
        keeps_a_mapping(lab, &case)
    })
}

/// One way through portproxy: what the CGN speaks, the daemon's and `portproxy map`'s extra
/// arguments, what `portproxy map` should map with, and whether a CGN reboot shows as an
/// epoch reset (not when the LAN side speaks UPnP).
struct Through {
    kind: CgnKind,
    daemon: &'static [&'static str],
    map: &'static [&'static str],
    protocol: &'static str,
    epoch: bool,
}

/// Through portproxy: lan1 asks the CPE (its gateway), where the daemon runs on `path`;
/// the CPE has the fw4-like firewall, so reaching lan1 also proves portproxy opened it.
fn through_portproxy(softwire: Softwire, path: DataPath, way: &Through) -> Result<()> {
    let builder = Lab::builder(softwire).cgn(way.kind).cpe_firewall();
    with_portproxy(short_lifetimes(builder), path, way.daemon, &[], |lab, _| {
        let case = Case {
            host: |lab| lab.lan(1),
            host_ip: LAN1_IP,
            args: way.map,
            protocol: way.protocol,
            epoch: way.epoch,
            internal: 8311,
            external: 9311,
        };
        keeps_a_mapping(lab, &case)
    })
}

// Inside `map_client`, so that `cargo xtask test -- map_client` runs them.
mod map_client {
    use super::*;

    macro_rules! direct {
        ($name:ident, $kind:expr, $protocol:literal) => {
            mod $name {
                use tests::{CgnKind, Softwire};

                #[test]
                fn l2() -> anyhow::Result<()> {
                    super::direct(Softwire::L2, $kind, $protocol)
                }

                #[test]
                fn l3() -> anyhow::Result<()> {
                    super::direct(Softwire::L3, $kind, $protocol)
                }
            }
        };
    }

    direct!(direct_pcp_only, CgnKind::PcpOnly, "pcp");
    direct!(direct_natpmp_only, CgnKind::NatPmpOnly, "nat-pmp");
    direct!(direct_upnp_only, CgnKind::UpnpOnly, "upnp");
    direct!(direct_everything, CgnKind::Everything, "pcp");

    /// `via_portproxy!(name, way)`: for every data path and softwire kind, `portproxy map`
    /// on lan1 through portproxy the `Through` way.
    macro_rules! via_portproxy {
        ($name:ident, $way:expr) => {
            fn $name(softwire: Softwire, path: DataPath) -> Result<()> {
                through_portproxy(softwire, path, &$way)
            }
            every_path!($name);
        };
    }

    // A PCP-only CGN; `portproxy map --protocol nat-pmp`: portproxy answers, maps with PCP.
    via_portproxy!(
        via_portproxy_pcp_only,
        Through {
            kind: CgnKind::PcpOnly,
            daemon: &[],
            map: &["--protocol", "nat-pmp"],
            protocol: "nat-pmp",
            epoch: true,
        }
    );
    // A NAT-PMP-only CGN; `portproxy map` speaks PCP: portproxy answers, maps with NAT-PMP.
    via_portproxy!(
        via_portproxy_natpmp_only,
        Through {
            kind: CgnKind::NatPmpOnly,
            daemon: &[],
            map: &[],
            protocol: "pcp",
            epoch: true,
        }
    );
    // A UPnP-only CGN; `portproxy map --protocol upnp`: SSDP and the IGD's HTTP relayed
    // (`--upnp-tcp 1`: only a relayed AddPortMapping opens the CPE's firewall).
    via_portproxy!(
        via_portproxy_upnp_only,
        Through {
            kind: CgnKind::UpnpOnly,
            daemon: &["--upnp-tcp", "1"],
            map: &["--protocol", "upnp"],
            protocol: "upnp",
            epoch: false,
        }
    );
    // A CGN that speaks everything; `portproxy map` speaks PCP, which portproxy relays.
    via_portproxy!(
        via_portproxy_everything,
        Through {
            kind: CgnKind::Everything,
            daemon: &[],
            map: &[],
            protocol: "pcp",
            epoch: true,
        }
    );
    // `--mode proxy`; `portproxy map --protocol upnp`: portproxy's own IGD answers, and
    // maps with PCP.
    via_portproxy!(
        via_portproxy_proxy_mode,
        Through {
            kind: CgnKind::Everything,
            daemon: &["--mode", "proxy"],
            map: &["--protocol", "upnp"],
            protocol: "upnp",
            epoch: false,
        }
    );

    both_softwires!(once_then_delete: once_then_delete_l2, once_then_delete_l3);

    #[test]
    fn errors_are_clear() -> Result<()> {
        super::errors_are_clear()
    }
}

/// `--once` adds and exits (printing the lifetime), `--delete` removes what it added, in
/// each protocol (the CPE, directly).
fn once_then_delete(softwire: Softwire) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        for (protocol, internal) in [("pcp", 8321), ("nat-pmp", 8322), ("upnp", 8323)] {
            let port = internal.to_string();
            let args = ["--protocol", protocol, &port, "--lifetime", "600"];
            let (code, events) = lab.run_map(lab.cpe(), &[&args[..], &["--once"]].concat())?;
            ensure!(
                code == 0 && events.len() == 1 && events[0]["event"] == "mapped",
                "--once with {protocol}: exit {code}, {events:?}"
            );
            ensure!(
                events[0]["lifetime"]
                    .as_u64()
                    .is_some_and(|l| l > 0 && l <= 600),
                "{events:?}"
            );
            let (_, external) = external_of(&events[0])?;
            let rule = format!("dport {external} dnat ip to {CPE_SOFTWIRE_IP}:{internal}");
            run_expect(
                lab.cgn(),
                "nft",
                &["list", "table", "inet", "nat"],
                &[&rule],
            )?;

            let (code, events) = lab.run_map(lab.cpe(), &[&args[..], &["--delete"]].concat())?;
            ensure!(
                code == 0 && events.len() == 1 && events[0]["event"] == "deleted",
                "--delete with {protocol}: exit {code}, {events:?}"
            );
            let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
            ensure!(
                !nat.contains(&rule),
                "{protocol}: still mapped after --delete:\n{nat}"
            );
        }
        Ok(())
    })
}

/// The errors say what is wrong, with their exit status: no gateway (3), nothing answers
/// (4: which protocols were tried, for how long), refused (5: each protocol's reason, here
/// portproxy's per-host quota in proxy mode).
fn errors_are_clear() -> Result<()> {
    with_lab(Lab::builder(Softwire::L2), |lab| {
        let args = [
            &ARGS[..],
            &["--mode", "proxy", "--max-mappings-per-host", "1"],
        ]
        .concat();
        let portproxy = lab.spawn_portproxy_on(DataPath::Sockets, &args)?;
        let error = |ns: &Netns, args: &[&str], status: i32| -> Result<String> {
            let (code, events) = lab.run_map(ns, args)?;
            let last = events.last().context("no events")?;
            ensure!(
                code == status && last["event"] == "error" && last["exit"] == status,
                "`portproxy map {}`: expected exit {status}, got {code}: {events:?}",
                args.join(" ")
            );
            Ok(last["error"].as_str().unwrap_or_default().to_string())
        };
        logged(&portproxy, || {
            // The internet host has no default route.
            let message = error(lab.inet(), &["8080"], 3)?;
            ensure!(message.contains("--gateway"), "{message}");
            // The CGN serves its subscribers only, not the internet side.
            let message = error(
                lab.inet(),
                &["8080", "--gateway", &PUBLIC_IP.to_string()],
                4,
            )?;
            for tried in ["PCP", "NAT-PMP", "UPnP IGD", " s;"] {
                ensure!(message.contains(tried), "{tried:?} not in {message:?}");
            }
            // One mapping per host: the second is refused in every protocol.
            let (code, _) = lab.run_map(lab.lan(1), &["8331", "--once", "--lifetime", "600"])?;
            ensure!(code == 0, "the first mapping: exit {code}");
            let message = error(lab.lan(1), &["8332"], 5)?;
            for refused in [
                "PCP: over the user's quota",
                "NAT-PMP: no resources",
                "UPnP IGD:",
            ] {
                ensure!(message.contains(refused), "{refused:?} not in {message:?}");
            }
            Ok(())
        })
    })
}
