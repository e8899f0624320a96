//! The IGD under load: portproxy as the LAN's IGD (the bench's CGN speaks NAT-PMP only, so
//! `--mode auto` serves UPnP and maps with NAT-PMP), and one control point on lan1 calling
//! AddPortMapping for `--renewal-mappings` (4,096) ports, one call at a time over
//! keep-alive connections. Measured: each call's round trip (p50, p99), calls per second, and
//! the RSS the mappings add.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Rig, net::join_within, net::spawn_in, sys};
use crate::{LAN_GATEWAY, LAN1_IP};

const FIRST_PORT: u16 = 30000;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const SERVICE: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";

#[derive(Debug, Clone, Default)]
pub struct IgdLoad {
    pub calls: u32,
    pub p50_us: f64,
    pub p99_us: f64,
    pub calls_per_s: f64,
    pub rss_ready_kib: u64,
    pub rss_mapped_kib: u64,
}

/// One AddPortMapping request for `port` (TCP, to the same port on lan1, lease 0).
fn add_request(port: u16) -> String {
    let body = format!(
        "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:AddPortMapping xmlns:u=\"{SERVICE}\"><NewRemoteHost></NewRemoteHost>\
         <NewExternalPort>{port}</NewExternalPort><NewProtocol>TCP</NewProtocol>\
         <NewInternalPort>{port}</NewInternalPort><NewInternalClient>{LAN1_IP}</NewInternalClient>\
         <NewEnabled>1</NewEnabled><NewPortMappingDescription>bench</NewPortMappingDescription>\
         <NewLeaseDuration>0</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>"
    );
    format!(
        "POST /ctl/IPConn HTTP/1.1\r\nHost: {LAN_GATEWAY}:5000\r\nContent-Type: text/xml\r\n\
         SOAPAction: \"{SERVICE}#AddPortMapping\"\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends one call on `stream` and reads its response; fails unless it is 200.
fn call(stream: &mut TcpStream, request: &str, buf: &mut Vec<u8>) -> Result<()> {
    stream.write_all(request.as_bytes())?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = std::str::from_utf8(&buf[..end]).context("response head")?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .context("no Content-Length")?;
            if buf.len() >= end + 4 + length {
                if !head.starts_with("HTTP/1.1 200") {
                    let body = String::from_utf8_lossy(&buf[end + 4..]);
                    let code = body
                        .split("<errorCode>")
                        .nth(1)
                        .and_then(|r| r.split('<').next());
                    bail!(
                        "AddPortMapping: {}, UPnP error {code:?}",
                        head.lines().next().unwrap_or_default()
                    );
                }
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("the IGD closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |&ns| ns as f64 / 1000.0)
}

/// Calls per connection: a fresh one before the IGD's 10 s limit per connection could cut it.
const CALLS_PER_CONNECTION: usize = 256;

/// A keep-alive connection to the IGD, from the calling thread's namespace.
fn connect() -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&SocketAddr::from((LAN_GATEWAY, 5000)), CALL_TIMEOUT)?;
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Makes the mappings of `ports`, `CALLS_PER_CONNECTION` per connection; the round trips.
fn add_all(ports: impl Iterator<Item = u16>) -> Result<Vec<u64>> {
    let requests: Vec<String> = ports.map(add_request).collect();
    let mut rtts = Vec::with_capacity(requests.len());
    let mut buf = Vec::with_capacity(8192);
    for batch in requests.chunks(CALLS_PER_CONNECTION) {
        let mut stream = connect()?;
        for request in batch {
            let sent = Instant::now();
            call(&mut stream, request, &mut buf)?;
            rtts.push(sent.elapsed().as_nanos() as u64);
        }
    }
    Ok(rtts)
}

impl Rig<'_> {
    pub(super) fn igd(&mut self) -> Result<IgdLoad> {
        let calls = self.args.renewal_mappings;
        // Room for the first call's mapping too.
        let count = (calls + 1).to_string();
        let args = [
            "--upnp-udp",
            "1",
            "--max-mappings",
            &count,
            "--max-mappings-per-host",
            &count,
        ];
        let daemon = self.spawn_daemon(&args.map(String::from))?;
        let pid = daemon.pid();
        let (lan1, cpu) = (self.net.lan(1), self.placement.lan);
        // A first call (made, then the table holds it) allocates what every call needs once.
        let warm_up = spawn_in(lan1, "control point", cpu, || {
            add_all(std::iter::once(FIRST_PORT - 1))
        })?;
        join_within(warm_up, Duration::from_secs(10), "the first AddPortMapping")?;
        let rss_ready_kib = sys::memory_kib(pid)?.0;
        let start = Instant::now();
        let ports = (0..calls).map(|i| FIRST_PORT + i as u16);
        let adding = spawn_in(lan1, "control point", cpu, move || add_all(ports))?;
        let mut rtts = join_within(adding, Duration::from_secs(120), "the AddPortMapping calls")?;
        let elapsed = start.elapsed().as_secs_f64();
        let rss_mapped_kib = sys::memory_kib(pid)?.0;
        drop(daemon);
        rtts.sort_unstable();
        Ok(IgdLoad {
            calls,
            p50_us: percentile(&rtts, 0.5),
            p99_us: percentile(&rtts, 0.99),
            calls_per_s: f64::from(calls) / elapsed,
            rss_ready_kib,
            rss_mapped_kib,
        })
    }
}
