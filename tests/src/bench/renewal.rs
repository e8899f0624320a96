//! Mappings under renewal: `portproxy --mode proxy` holding `--renewal-mappings` (4,096)
//! NAT-PMP mappings of one LAN host, which renews each at half its lifetime as RFC 6886
//! §3.3 has clients do; every renewal is answered by portproxy and asked of the CGN again.
//! Measured: the table's memory (RSS with the mappings against RSS when ready), and the
//! daemon's CPU in % of one core over a window with no requests (what holding the mappings
//! costs: the epoch polls, the status file) and over one of renewals.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use portproxy::proto::{Transport, natpmp::Request};

use super::{Rig, net::join_within, net::spawn_in, sys};
use crate::{LAN_GATEWAY, PCP_PORT};

/// The lifetime every mapping is asked for (the responder grants what is asked): short, so
/// that renewals come often (4,096 mappings: 68 a second).
pub const LIFETIME_S: u32 = 120;
/// Internal (and suggested external) port of the first mapping; the others follow.
const FIRST_PORT: u16 = 20000;
/// How long the client waits for one answer before the run fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default)]
pub struct Renewal {
    pub mappings: u32,
    pub window_s: f64,
    /// VmRSS before and with the mappings, and VmHWM at the end (KiB).
    pub rss_ready_kib: u64,
    pub rss_mapped_kib: u64,
    pub hwm_kib: u64,
    /// The daemon's CPU over the idle window and over the renewal window, in % of one core.
    pub idle_cpu_pct: f64,
    pub renewal_cpu_pct: f64,
    pub renewals_per_s: f64,
    pub renewals: u64,
}

impl Renewal {
    /// Table memory per mapping, in bytes (RSS growth while they were made).
    pub fn bytes_per_mapping(&self) -> f64 {
        self.rss_mapped_kib.saturating_sub(self.rss_ready_kib) as f64 * 1024.0
            / f64::from(self.mappings.max(1))
    }
}

/// Asks to map TCP `port` to the same external port for `lifetime` (0 deletes), and waits
/// for the success answer.
fn map(socket: &UdpSocket, port: u16, lifetime: u32, buf: &mut [u8]) -> Result<()> {
    let mut req = [0u8; 12];
    let len = Request::Map {
        proto: Transport::Tcp,
        internal_port: port,
        suggested_port: port,
        lifetime,
    }
    .encode(&mut req);
    socket.send(&req[..len])?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "no answer to the map request for port {port}"
        );
        socket.set_read_timeout(Some(left))?;
        let len = socket
            .recv(buf)
            .with_context(|| format!("map request for port {port}"))?;
        // Version 0, opcode 0x82, then the result, epoch and internal port.
        if len == 16 && buf[1] == 0x82 && buf[8..10] == port.to_be_bytes() {
            let result = u16::from_be_bytes([buf[2], buf[3]]);
            ensure!(result == 0, "map request for port {port}: result {result}");
            return Ok(());
        }
    }
}

/// The daemon's CPU since `from` (a time and its `process_sched_ns`), in % of one core.
fn cpu_pct(pid: u32, (at, cpu): (Instant, u64)) -> f64 {
    let used = sys::process_sched_ns(pid).saturating_sub(cpu) as f64;
    used / at.elapsed().as_nanos() as f64 * 100.0
}

fn port_of(mapping: u32) -> u16 {
    FIRST_PORT + mapping as u16
}

impl Rig<'_> {
    /// The measurement described at the top of this module.
    pub(super) fn renewal(&mut self) -> Result<Renewal> {
        let mappings = self.args.renewal_mappings;
        let window = Duration::from_secs_f64(self.args.renewal_seconds);
        let count = mappings.to_string();
        let proxy = [
            "--mode",
            "proxy",
            "--max-mappings",
            &count,
            "--max-mappings-per-host",
            &count,
        ];
        let daemon = self.spawn_daemon(&proxy.map(String::from))?;
        let pid = daemon.pid();
        // A socket of lan1's (the namespace it is made in is the one it sends from).
        let client = spawn_in(self.net.lan(1), "client", self.placement.lan, || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect((LAN_GATEWAY, PCP_PORT))?;
            Ok(socket)
        })?;
        let socket = join_within(client, Duration::from_secs(5), "the client's socket")?;
        // One mapping made and deleted first: what the first request of its kind allocates
        // once (buffers, the upstream socket) is not the table's.
        let mut buf = [0u8; 64];
        map(&socket, port_of(0), LIFETIME_S, &mut buf)?;
        map(&socket, port_of(0), 0, &mut buf)?;
        let rss_ready_kib = sys::memory_kib(pid)?.0;
        for i in 0..mappings {
            map(&socket, port_of(i), LIFETIME_S, &mut buf)?;
        }
        let rss_mapped_kib = sys::memory_kib(pid)?.0;

        let idle = (Instant::now(), sys::process_sched_ns(pid));
        std::thread::sleep(window);
        let idle_cpu_pct = cpu_pct(pid, idle);

        // Each mapping once per half lifetime: one renewal every `interval`, round robin.
        let renewals_per_s = f64::from(mappings) / (f64::from(LIFETIME_S) / 2.0);
        let interval = Duration::from_secs_f64(1.0 / renewals_per_s);
        let renewing = (Instant::now(), sys::process_sched_ns(pid));
        let renewer = spawn_in(
            self.net.lan(1),
            "renewing client",
            self.placement.lan,
            move || {
                let mut buf = [0u8; 64];
                let start = Instant::now();
                let mut sent = 0u32;
                while interval * sent < window {
                    let due = start + interval * sent;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    map(&socket, port_of(sent % mappings), LIFETIME_S, &mut buf)?;
                    sent += 1;
                }
                Ok(u64::from(sent))
            },
        )?;
        let renewals = join_within(renewer, window + Duration::from_secs(10), "renewing")?;
        let renewal_cpu_pct = cpu_pct(pid, renewing);
        let hwm_kib = sys::memory_kib(pid)?.1;
        drop(daemon);
        Ok(Renewal {
            mappings,
            window_s: window.as_secs_f64(),
            rss_ready_kib,
            rss_mapped_kib,
            hwm_kib,
            idle_cpu_pct,
            renewal_cpu_pct,
            renewals_per_s,
            renewals,
        })
    }
}
