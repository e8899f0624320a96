//! Never stop relaying: portproxy started before the softwire is there (the usual boot order
//! on a router), the softwire flapping and changing address during and right after a flood,
//! the daemon stopped (SIGSTOP) while all that happens, and a rebuild that fails until the
//! port it needs is free again. Each scenario checks what `portproxy stats` says meanwhile,
//! that relaying resumes within `RESUME_BUDGET` of the line being complete again, and that a
//! NAT-PMP mapping made then is reachable from the internet host.

#[macro_use]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::atomic::AtomicBool,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{ARGS, check_mapping, logged, natpmpc_map, with_lab};
use tests::{
    Daemon, DataPath, LAN_GATEWAY, Lab, PCP_PORT, Softwire, SoftwireStage, load::flood_nat_pmp,
};

/// From the moment the softwire is complete again (or the daemon continued) until a LAN
/// client's NAT-PMP request is answered: the promise (a 250 ms settle for the burst
/// of netlink events, then the rebuild).
const RESUME_BUDGET: Duration = Duration::from_secs(2);

/// The daemon's state from `portproxy stats`: `relaying`, `waiting_for` or `retrying`, and
/// its detail.
fn state(lab: &Lab, daemon: &Daemon) -> Result<(String, String)> {
    let stats = lab.portproxy_stats(daemon)?;
    Ok((
        stats["state"].as_str().unwrap_or_default().to_owned(),
        stats["detail"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Polls `portproxy stats` until the state is `want` (at most `within`); returns its detail.
fn wait_for_state(lab: &Lab, daemon: &Daemon, want: &str, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let (state, detail) = state(lab, daemon)?;
        if state == want {
            return Ok(detail);
        }
        if Instant::now() >= deadline {
            bail!("portproxy stats still says {state} ({detail}) after {within:?}, not {want}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Asks the gateway for the public address from lan1, one short try after another, until it
/// answers; fails if that is more than `RESUME_BUDGET` after `start`. Returns how long after.
fn resumes(lab: &Lab, start: Instant) -> Result<Duration> {
    let gateway = SocketAddrV4::new(LAN_GATEWAY, PCP_PORT);
    lab.lan(1).enter(|| -> Result<Duration> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let mut buf = [0u8; 64];
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        while start.elapsed() < RESUME_BUDGET {
            socket.send_to(&[0, 0], gateway)?;
            if let Ok((len, _)) = socket.recv_from(&mut buf)
                && len >= 12
                && buf[..2] == [0, 0x80]
            {
                return Ok(start.elapsed());
            }
        }
        bail!("no NAT-PMP answer within {RESUME_BUDGET:?} of the line being complete again")
    })?
}

/// A NAT-PMP mapping from lan1 is granted and reachable from the internet host.
fn maps_and_reaches(lab: &Lab, external: u16, internal: u16) -> Result<()> {
    natpmpc_map(lab.lan(1), external, internal)?;
    check_mapping(lab, external, lab.lan(1), internal)
}

// ---------------------------------------------------------------------------------------------
// Boot order

/// portproxy starts while the CPE's softwire is only at `stage`: it must say what it waits
/// for (in its log and in `portproxy stats`), keep waiting, and relay once the softwire is
/// complete. An L3 tunnel names its peer, so without a default route the CGN is known anyway
/// and portproxy relays at once.
fn boot_order(softwire: Softwire, path: DataPath, stage: SoftwireStage) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        lab.undo_softwire(stage)?;
        let waits = !(stage == SoftwireStage::NoRoute && softwire == Softwire::L3);
        let needle = if waits { "waiting for" } else { "ready:" };
        let daemon = lab.spawn_portproxy_on_until(path, &ARGS, needle)?;
        logged(&daemon, || {
            if waits {
                let expected = match stage {
                    SoftwireStage::Missing => "interface softwire (--wan-iface) to exist",
                    SoftwireStage::Down => "softwire to come up",
                    SoftwireStage::NoAddress => "an IPv4 address on softwire",
                    SoftwireStage::NoRoute => "a default route with a gateway through softwire",
                };
                let detail = wait_for_state(lab, &daemon, "waiting_for", Duration::from_secs(3))?;
                ensure!(
                    detail.contains(expected),
                    "portproxy waits for {detail:?}, expected {expected:?}"
                );
                // Several periodic re-checks later it still waits, and is alive.
                thread::sleep(Duration::from_millis(2500));
                wait_for_state(lab, &daemon, "waiting_for", Duration::ZERO)?;
            }
            lab.redo_softwire(stage)?;
            let took = resumes(lab, Instant::now())?;
            eprintln!("{stage:?}: relaying {took:?} after the softwire was complete");
            wait_for_state(lab, &daemon, "relaying", Duration::from_secs(2))?;
            maps_and_reaches(lab, 9701, 8701)?;
            lab.check_data_path(&daemon, path, &["nat_pmp_to_cgn", "nat_pmp_to_client"])
        })
    })
}

fn before_softwire_exists(softwire: Softwire, path: DataPath) -> Result<()> {
    boot_order(softwire, path, SoftwireStage::Missing)
}
every_path!(before_softwire_exists);

fn before_softwire_up(softwire: Softwire, path: DataPath) -> Result<()> {
    boot_order(softwire, path, SoftwireStage::Down)
}
every_path!(before_softwire_up);

fn before_softwire_address(softwire: Softwire, path: DataPath) -> Result<()> {
    boot_order(softwire, path, SoftwireStage::NoAddress)
}
every_path!(before_softwire_address);

fn before_default_route(softwire: Softwire, path: DataPath) -> Result<()> {
    boot_order(softwire, path, SoftwireStage::NoRoute)
}
every_path!(before_default_route);

// ---------------------------------------------------------------------------------------------
// Flaps under load

/// The softwire goes down and up.
fn flap(lab: &Lab) -> Result<()> {
    lab.set_softwire_up(false)?;
    thread::sleep(Duration::from_millis(300));
    lab.set_softwire_up(true)
}

/// lan2 floods for 3 s; meanwhile the softwire flaps and the CPE's WAN address changes, and
/// right after the flood it flaps again. Relaying must resume within `RESUME_BUDGET` of the
/// last change (this killed the socket relay: its old LAN socket, still held by the tasks
/// of the flood's clients, made the rebuild fail with "in use by another program").
fn flap_during_and_after_flood(softwire: Softwire, path: DataPath) -> Result<()> {
    let _flood = tests::load::one_flood_at_a_time();
    with_lab(Lab::builder(softwire), |lab| {
        let daemon = lab.spawn_portproxy_on(path, &ARGS)?;
        logged(&daemon, || {
            maps_and_reaches(lab, 9711, 8711)?;
            let gateway = SocketAddrV4::new(LAN_GATEWAY, PCP_PORT);
            let stop = AtomicBool::new(false);
            let sent = thread::scope(|scope| -> Result<u64> {
                let flooder = scope
                    .spawn(|| flood_nat_pmp(lab.lan(2), gateway, Duration::from_secs(3), &stop));
                thread::sleep(Duration::from_millis(500));
                flap(lab)?;
                lab.change_cpe_softwire_address(Ipv4Addr::new(192, 0, 0, 3))?;
                flooder.join().expect("the flooder panicked")
            })?;
            flap(lab)?;
            let took = resumes(lab, Instant::now())?;
            eprintln!(
                "flood of {sent} requests with flaps: relaying again {took:?} after the last flap"
            );
            wait_for_state(lab, &daemon, "relaying", Duration::from_secs(2))?;
            maps_and_reaches(lab, 9712, 8712)?;
            lab.check_data_path(&daemon, path, &["nat_pmp_to_cgn", "nat_pmp_to_client"])
        })
    })
}

every_path!(flap_during_and_after_flood);

/// The daemon is stopped (SIGSTOP) while lan2 floods, the softwire flaps and the WAN address
/// changes; continued (SIGCONT), it catches up with the interfaces and relays again within
/// `RESUME_BUDGET`.
fn stopped_while_the_line_changes(softwire: Softwire, path: DataPath) -> Result<()> {
    let _flood = tests::load::one_flood_at_a_time();
    with_lab(Lab::builder(softwire), |lab| {
        let daemon = lab.spawn_portproxy_on(path, &ARGS)?;
        logged(&daemon, || {
            maps_and_reaches(lab, 9721, 8721)?;
            signal(&daemon, libc::SIGSTOP)?;
            let gateway = SocketAddrV4::new(LAN_GATEWAY, PCP_PORT);
            let stop = AtomicBool::new(false);
            let changed = thread::scope(|scope| -> Result<()> {
                let flooder = scope
                    .spawn(|| flood_nat_pmp(lab.lan(2), gateway, Duration::from_secs(2), &stop));
                thread::sleep(Duration::from_millis(300));
                let changed = flap(lab)
                    .and_then(|()| lab.change_cpe_softwire_address(Ipv4Addr::new(192, 0, 0, 3)));
                flooder.join().expect("the flooder panicked")?;
                changed
            });
            // The data path built before the stop still answers for a moment after it: wait
            // for the rebuild for the new address, then for an answer, all within the budget.
            let builds = daemon.log().matches("ready: relaying").count();
            signal(&daemon, libc::SIGCONT)?;
            let continued = Instant::now();
            changed?;
            while daemon.log().matches("ready: relaying").count() <= builds {
                ensure!(
                    continued.elapsed() < RESUME_BUDGET,
                    "no rebuild within {RESUME_BUDGET:?} of SIGCONT"
                );
                thread::sleep(Duration::from_millis(20));
            }
            resumes(lab, continued)?;
            eprintln!(
                "continued after SIGSTOP: rebuilt and relaying again {:?} later",
                continued.elapsed()
            );
            maps_and_reaches(lab, 9722, 8722)?;
            lab.check_data_path(&daemon, path, &["nat_pmp_to_cgn", "nat_pmp_to_client"])
        })
    })
}

every_path!(stopped_while_the_line_changes);

fn signal(daemon: &Daemon, signal: libc::c_int) -> Result<()> {
    // SAFETY: plain syscall on our own, unreaped child's pid.
    let ret = unsafe { libc::kill(daemon.pid() as libc::pid_t, signal) };
    ensure!(
        ret == 0,
        "kill({}, {signal}): {}",
        daemon.pid(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A rebuild that fails

/// While the softwire is down, another program takes portproxy's NAT-PMP port on the LAN
/// address. When the softwire is back the rebuild fails: `portproxy stats` says it retries
/// and why, the daemon keeps running, and once the port is free it relays again by itself.
/// Sockets only: on the fast path the kernel, not a socket, carries NAT-PMP.
fn retries_a_failed_rebuild(softwire: Softwire) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        let daemon = lab.spawn_portproxy_on(DataPath::Sockets, &ARGS)?;
        logged(&daemon, || {
            lab.undo_softwire(SoftwireStage::NoAddress)?;
            wait_for_state(lab, &daemon, "waiting_for", Duration::from_secs(3))?;
            let squatter = lab
                .cpe()
                .enter(|| UdpSocket::bind(SocketAddrV4::new(LAN_GATEWAY, PCP_PORT)))?
                .context("binding the NAT-PMP port in the CPE")?;
            lab.redo_softwire(SoftwireStage::NoAddress)?;
            let why = wait_for_state(lab, &daemon, "retrying", Duration::from_secs(3))?;
            ensure!(
                why.contains("already in use by another program"),
                "retrying for {why:?}"
            );
            // Two more tries fail while the port is held (500 ms, then 1 s apart).
            thread::sleep(Duration::from_millis(1800));
            wait_for_state(lab, &daemon, "retrying", Duration::ZERO)?;
            drop(squatter);
            // The next try comes at most 2 s after the last one.
            wait_for_state(lab, &daemon, "relaying", Duration::from_secs(3))?;
            maps_and_reaches(lab, 9731, 8731)?;
            lab.check_data_path(&daemon, DataPath::Sockets, &[])
        })
    })
}

both_softwires!(retries_a_failed_rebuild: retries_a_failed_rebuild_l2, retries_a_failed_rebuild_l3);
