//! Manual forwards (`portproxy forward add|list|del`): added from the router's shell, they
//! become active at the CGN (as the LAN host, in what it speaks, whether the clients'
//! protocols are relayed or answered here) and reachable from the internet host through
//! the CPE's fw4-like firewall; they come back after a CGN reboot, an address change and a
//! restart of portproxy or the router; a port taken at the CGN fails with the reason and is
//! retried; a delete removes the mapping at the CGN and the hole. Every scenario that
//! carries traffic runs on every data path and both softwire kinds.

#[macro_use]
mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use common::{
    Down, across_a_restart, cgn_silent, check_mapping, check_mapping_again, check_mapping_again_at,
    mapped_again, natpmpc_delete, natpmpc_map, shared_mappings_file, wait_for_log, with_lab,
    with_portproxy,
};
use serde_json::Value;
use tests::{CgnKind, DataPath, LAN1_IP, LAN2_IP, Lab, PUBLIC_IP, Softwire, show_output};

/// How long a forward may take to become active (or failed) at the CGN.
const SETTLES: Duration = Duration::from_secs(10);
/// How long a failed forward may take to become active once what failed it is gone: its
/// next try comes at most 16 s later (2 s, 4 s, 8 s, 16 s after the first failures).
const RETRIED: Duration = Duration::from_secs(20);

/// `portproxy forward ARGS` against the lab's daemon.
fn forward(lab: &Lab, args: &[&str]) -> Result<Output> {
    let bin = std::env::var("PORTPROXY_BIN").context("PORTPROXY_BIN is not set")?;
    std::process::Command::new(bin)
        .arg("forward")
        .args(args)
        .arg("--state-dir")
        .arg(lab.dir().join("state"))
        .output()
        .context("running portproxy forward")
}

/// `portproxy forward ARGS`, which must succeed; its standard output.
fn forward_ok(lab: &Lab, args: &[&str]) -> Result<String> {
    let output = forward(lab, args)?;
    ensure!(
        output.status.success(),
        "portproxy forward {} failed:\n{}",
        args.join(" "),
        show_output(&output)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `portproxy forward ARGS`, which must fail saying `expected`.
fn forward_refused(lab: &Lab, args: &[&str], expected: &str) -> Result<()> {
    let output = forward(lab, args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains(expected),
        "portproxy forward {}: expected a refusal saying {expected:?}:\n{}",
        args.join(" "),
        show_output(&output)
    );
    Ok(())
}

/// The forward of `target` (`HOST:PORT/PROTO`) in `portproxy forward list --json`.
fn listed(lab: &Lab, target: &str) -> Result<Option<Value>> {
    let list: Value = serde_json::from_str(&forward_ok(lab, &["list", "--json"])?)
        .context("parsing forward list --json")?;
    Ok(list.as_array().into_iter().flatten().find_map(|f| {
        let name = format!(
            "{}:{}/{}",
            f["host"].as_str()?,
            f["internal_port"],
            f["protocol"].as_str()?
        );
        (name == target).then(|| f.clone())
    }))
}

/// Waits (at most `within`) until the forward of `target` is in state `state`; its status.
fn wait_for(lab: &Lab, target: &str, state: &str, within: Duration) -> Result<Value> {
    let start = Instant::now();
    loop {
        let found = listed(lab, target)?.with_context(|| format!("no forward {target} listed"))?;
        if found["status"]["state"] == state {
            return Ok(found["status"].clone());
        }
        if start.elapsed() > within {
            bail!("the forward {target} is not {state} after {within:?}: {found:#}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the forward of `target` is active; its external address and port.
fn active(lab: &Lab, target: &str) -> Result<SocketAddrV4> {
    let status = wait_for(lab, target, "active", SETTLES)?;
    status["external"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .with_context(|| format!("no external address in {status:#}"))
}

/// Whether the CGN maps TCP `external` to anything.
fn cgn_maps(lab: &Lab, external: u16) -> Result<bool> {
    let nat = common::run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
    Ok(nat.contains(&format!("dport {external} dnat")))
}

/// Whether the CPE's firewall has a hole for `host`:`port`/tcp.
fn has_hole(lab: &Lab, host: Ipv4Addr, port: u16) -> Result<bool> {
    Ok(lab
        .holes()?
        .iter()
        .any(|h| h.host == host.to_string() && h.protocol == "tcp" && h.port == port))
}

/// Deletes the forward of `target` (TCP to `host`:`internal`, at `external`) and checks
/// that the CGN no longer maps it and the hole is closed.
fn delete_and_check(
    lab: &Lab,
    target: &str,
    host: Ipv4Addr,
    internal: u16,
    external: u16,
) -> Result<()> {
    let out = forward_ok(lab, &["del", target])?;
    ensure!(out.contains("deleted"), "{out}");
    ensure!(listed(lab, target)?.is_none(), "still listed after del");
    let start = Instant::now();
    while cgn_maps(lab, external)? || has_hole(lab, host, internal)? {
        ensure!(
            start.elapsed() < SETTLES,
            "after del the CGN still maps {external} ({}) or the hole for {host}:{internal} is \
             open ({})",
            cgn_maps(lab, external)?,
            has_hole(lab, host, internal)?
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    forward_refused(lab, &["del", target], "there is no forward of")
}

/// Runs portproxy (`--mode mode`) on `path` in a lab whose CGN speaks `kind`, behind the
/// fw4-like CPE firewall, then `test`; prints the daemon's log on failure.
fn with_daemon(
    softwire: Softwire,
    path: DataPath,
    kind: CgnKind,
    mode: &str,
    test: impl FnOnce(&mut Lab) -> Result<()>,
) -> Result<()> {
    let builder = Lab::builder(softwire).cgn(kind).cpe_firewall();
    with_portproxy(builder, path, &["--mode", mode], &[], |lab, _| test(lab))
}

/// A PCP-only CGN (a DS-Lite AFTR) with every client protocol relayed (`--mode relay`):
/// the forward, with the external port it wants, is mapped with PCP as the host, reachable
/// through the CPE firewall, made again after the CGN reboots, and gone after `del`.
fn forward_on_a_pcp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    with_daemon(softwire, path, CgnKind::PcpOnly, "relay", |lab| {
        let target = "192.168.1.2:8301/tcp";
        let out = forward_ok(
            lab,
            &[
                "add",
                target,
                "--external",
                "9301",
                "--description",
                "web server",
            ],
        )?;
        ensure!(
            out.contains(&format!("added: active at {PUBLIC_IP}:9301")),
            "{out}"
        );
        ensure!(active(lab, target)? == SocketAddrV4::new(PUBLIC_IP, 9301));
        let text = forward_ok(lab, &["list"])?;
        ensure!(
            text.contains(target) && text.contains("\"web server\"") && text.contains("9301"),
            "{text}"
        );
        ensure!(has_hole(lab, LAN1_IP, 8301)?, "no hole for the forward");
        check_mapping(lab, 9301, lab.lan(1), 8301)?;
        // The mapping table shows it as manual.
        let mappings = lab.portproxy_mappings()?;
        ensure!(
            mappings.as_array().into_iter().flatten().any(|m| {
                m["internal_port"] == 8301
                    && m["origin"] == "manual"
                    && m["description"] == "web server"
            }),
            "{mappings:#}"
        );

        // An epoch tells a reboot from a slow clock only beyond 2 s (RFC 6887 §8.5).
        std::thread::sleep(Duration::from_secs(4));
        lab.reboot_cgn()?;
        let took = mapped_again(lab, 9301, LAN1_IP, 8301, SETTLES)?;
        eprintln!("the forward was back at the CGN {took:?} after its reboot");
        check_mapping_again(lab, 9301, lab.lan(1), 8301)?;
        ensure!(active(lab, target)? == SocketAddrV4::new(PUBLIC_IP, 9301));

        delete_and_check(lab, target, LAN1_IP, 8301, 9301)
    })
}
every_path!(forward_on_a_pcp_cgn);

/// A NAT-PMP-only CGN (NAT-PMP relayed, PCP answered here): a forward on any port is
/// mapped with NAT-PMP, reachable, and after the carrier renumbers the CGN it is active at
/// the new address, where the internet host reaches it.
fn forward_on_a_natpmp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    const RENUMBERED: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 9);
    with_daemon(softwire, path, CgnKind::NatPmpOnly, "auto", |lab| {
        let target = "192.168.1.3:8311/tcp";
        forward_ok(lab, &["add", target])?;
        let external = active(lab, target)?;
        ensure!(*external.ip() == PUBLIC_IP, "{external}");
        check_mapping(lab, external.port(), lab.lan(2), 8311)?;

        std::thread::sleep(Duration::from_secs(4));
        lab.change_public_address(RENUMBERED)?;
        let start = Instant::now();
        let moved = loop {
            let now = active(lab, target)?;
            if *now.ip() == RENUMBERED {
                break now;
            }
            ensure!(
                start.elapsed() < SETTLES,
                "the forward still says {now} after the address change"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        check_mapping_again_at(lab, RENUMBERED, moved.port(), lab.lan(2), 8311)?;
        delete_and_check(lab, target, LAN2_IP, 8311, moved.port())
    })
}
every_path!(forward_on_a_natpmp_cgn);

/// A UPnP-only CGN with every client protocol answered here (`--mode proxy`): the forward
/// is mapped with AddPortMapping naming the host, reachable, and deleted with
/// DeletePortMapping.
fn forward_on_a_upnp_cgn(softwire: Softwire, path: DataPath) -> Result<()> {
    with_daemon(softwire, path, CgnKind::UpnpOnly, "proxy", |lab| {
        let target = "192.168.1.2:8321/tcp";
        forward_ok(lab, &["add", target, "--external", "9321"])?;
        ensure!(active(lab, target)? == SocketAddrV4::new(PUBLIC_IP, 9321));
        check_mapping(lab, 9321, lab.lan(1), 8321)?;
        delete_and_check(lab, target, LAN1_IP, 8321, 9321)
    })
}
every_path!(forward_on_a_upnp_cgn);

/// Forwards survive `down`: the new portproxy, with the same files, lists them, has the
/// one on any port at the CGN on the same external port again (not the one the CGN would
/// pick now), and the internet host reaches it. After the reboot the mappings file is gone
/// too, as when the router was off for longer than the grants last.
fn forwards_survive(softwire: Softwire, down: Down) -> Result<()> {
    let target = "192.168.1.2:8331/udp";
    let tcp = "192.168.1.3:8332/tcp";
    with_lab(
        Lab::builder(softwire).cgn(CgnKind::PcpOnly).cpe_firewall(),
        |lab| {
            across_a_restart(
                lab,
                DataPath::Sockets,
                &[],
                |lab| {
                    forward_ok(lab, &["add", target, "--description", "game"])?;
                    // The CGN would give the forward on any port its internal port 8332:
                    // another host holds that one while the forward is made, and lets it go
                    // before the restart, so only a portproxy that remembers the port asks for
                    // the same again.
                    natpmpc_map(lab.lan(1), 8332, 8000)?;
                    forward_ok(lab, &["add", tcp])?;
                    let before = active(lab, tcp)?;
                    ensure!(
                        before.port() != 8332,
                        "the CGN gave the port another host has"
                    );
                    natpmpc_delete(lab.lan(1), 8332, 8000)?;
                    active(lab, target)?;
                    Ok(before)
                },
                |lab, first| {
                    down.take(lab, first)?;
                    if down == Down::Reboot {
                        // Down longer than the grants last: the mappings file has nothing left
                        // to restore, so only the forwards file can say which port the forward
                        // had.
                        std::fs::remove_file(shared_mappings_file(lab))
                            .context("removing the mappings file")?;
                    }
                    Ok(())
                },
                |lab, second, before| {
                    // Both are asked for at the CGN again first (miniupnpd replaces its rules
                    // then): by the keeper after a restart (the table restored), by the
                    // forwards' own keeper after the reboot (nothing restored).
                    match down {
                        Down::Restart | Down::Crash => wait_for_log(second, "renewed for", 2)?,
                        Down::Reboot => wait_for_log(second, ": active at", 2)?,
                    }
                    let game = listed(lab, target)?.context("the UDP forward is gone")?;
                    ensure!(game["description"] == "game", "{game:#}");
                    let after = active(lab, tcp)?;
                    ensure!(
                        after == before,
                        "the forward was at {before}, after the restart at {after}"
                    );
                    mapped_again(lab, after.port(), LAN2_IP, 8332, SETTLES)?;
                    check_mapping_again(lab, after.port(), lab.lan(2), 8332)
                },
            )
        },
    )
}

both_softwires!(forwards_survive(Down::Restart): forwards_survive_a_restart_l2, forwards_survive_a_restart_l3);
both_softwires!(forwards_survive(Down::Reboot): forwards_survive_a_router_reboot_l2, forwards_survive_a_router_reboot_l3);

/// Another subscriber host holds the external port at the CGN: the forward that wants it
/// fails with the reason (no hole opened), is tried again with backoff, and becomes active
/// once the port is free.
fn forward_port_taken(softwire: Softwire, kind: CgnKind) -> Result<()> {
    with_daemon(softwire, DataPath::Sockets, kind, "auto", |lab| {
        natpmpc_map(lab.lan(2), 9341, 8342)?;
        let target = "192.168.1.2:8341/tcp";
        let out = forward_ok(lab, &["add", target, "--external", "9341"])?;
        ensure!(out.contains("added: failed"), "{out}");
        let status = wait_for(lab, target, "failed", SETTLES)?;
        let reason = status["reason"].as_str().unwrap_or_default();
        ensure!(
            reason.contains("cannot give external port 9341"),
            "reason: {reason:?}"
        );
        ensure!(
            !has_hole(lab, LAN1_IP, 8341)?,
            "a hole for a failed forward"
        );
        let text = forward_ok(lab, &["list"])?;
        ensure!(text.contains("failed: the CGN cannot give"), "{text}");
        // The port is free again: the forward gets it at its next try (2 s, 4 s, 8 s...).
        natpmpc_delete(lab.lan(2), 9341, 8342)?;
        let status = wait_for(lab, target, "active", RETRIED)?;
        ensure!(
            status["external"] == format!("{PUBLIC_IP}:9341"),
            "{status:#}"
        );
        check_mapping(lab, 9341, lab.lan(1), 8341)
    })
}

#[test]
fn forward_port_taken_on_a_pcp_cgn() -> Result<()> {
    forward_port_taken(Softwire::L2, CgnKind::PcpOnly)
}

#[test]
fn forward_port_taken_on_a_natpmp_cgn() -> Result<()> {
    forward_port_taken(Softwire::L3, CgnKind::NatPmpOnly)
}

/// Bad input gets a clear error and changes nothing: a host off the LAN or the router
/// itself, port 0, a duplicate, an external port another forward wants, an unknown forward.
#[test]
fn forward_bad_input_is_refused() -> Result<()> {
    with_daemon(
        Softwire::L2,
        DataPath::Sockets,
        CgnKind::PcpOnly,
        "auto",
        |lab| {
            forward_ok(lab, &["add", "192.168.1.2:8351/tcp", "--external", "9351"])?;
            active(lab, "192.168.1.2:8351/tcp")?;
            for (args, expected) in [
                (&["add", "10.0.0.2:80/tcp"][..], "is not a host of the LAN"),
                (&["add", "192.168.1.1:80/tcp"], "is not a host of the LAN"),
                (&["add", "192.168.1.2:0/tcp"], "1-65535"),
                (&["add", "192.168.1.2:80/sctp"], "tcp or udp"),
                (&["add", "192.168.1.2:8351/tcp"], "there is a forward of"),
                (
                    &["add", "192.168.1.3:22/tcp", "--external", "9351"],
                    "wants external port 9351",
                ),
                (&["del", "192.168.1.3:22/tcp"], "there is no forward of"),
            ] {
                forward_refused(lab, args, expected)?;
            }
            let list: Value = serde_json::from_str(&forward_ok(lab, &["list", "--json"])?)?;
            ensure!(
                list.as_array().map(Vec::len) == Some(1),
                "a refused forward was kept: {list:#}"
            );
            // A change is checked the same way and applied: the old port is let go.
            forward_refused(
                lab,
                &["change", "192.168.1.3:22/tcp", "--external", "9352"],
                "there is no forward of",
            )?;
            let out = forward_ok(
                lab,
                &["change", "192.168.1.2:8351/tcp", "--external", "9352"],
            )?;
            ensure!(
                out.contains(&format!("changed: active at {PUBLIC_IP}:9352")),
                "{out}"
            );
            check_mapping(lab, 9352, lab.lan(1), 8351)?;
            ensure!(!cgn_maps(lab, 9351)?, "the old port is still mapped");
            Ok(())
        },
    )
}

/// The CGN does not answer for a while: the forward fails saying so, is tried again with
/// backoff, and becomes active (and reachable) once the CGN answers again.
#[test]
fn forward_while_the_cgn_is_silent() -> Result<()> {
    with_daemon(
        Softwire::L3,
        DataPath::Sockets,
        CgnKind::PcpOnly,
        "auto",
        |lab| {
            cgn_silent(lab, true)?;
            let target = "192.168.1.2:8361/tcp";
            let out = forward_ok(lab, &["add", target, "--external", "9361"])?;
            ensure!(out.contains("failed: the CGN does not answer"), "{out}");
            cgn_silent(lab, false)?;
            wait_for(lab, target, "active", RETRIED)?;
            check_mapping(lab, 9361, lab.lan(1), 8361)
        },
    )
}
