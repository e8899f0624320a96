//! Hostile input against portproxy's own UPnP IGD (issue 11): the CGN speaks PCP only, so
//! portproxy is the LAN's IGD (HTTP on 192.168.1.1:5000, SSDP answered itself). Malformed
//! SOAP, XML bombs and external entities, oversized and lying requests, slow clients,
//! requests from the WAN and mappings asked for another host. Each case checks what came
//! back and the daemon's state (counters, mappings at the CGN, firewall holes), then that
//! the daemon is alive and still carries out a good AddPortMapping end to end.
//!
//! HTTP is always served from a socket, whatever the data path: the cases that are HTTP
//! only run once per softwire kind, one of them on sockets and the other on the fast path
//! (`sockets_l2`, `fast_path_l3`, see `http_paths!`). Cases where the data path decides
//! (SSDP from the WAN is met by the programs on the fast path; grants and firewall holes)
//! run on every data path.

#[macro_use]
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use common::{check_mapping, run_expect, with_lab};
use portproxy::proto::upnp;
use serde_json::Value;
use tests::{
    CGN_SOFTWIRE_IP, CPE_SOFTWIRE_IP, CgnKind, Daemon, DataPath, IGD_HTTP_PORT, LAN_GATEWAY,
    LAN1_IP, LAN2_IP, Lab, Netns, SSDP_GROUP, Softwire,
};

/// Generates `scenario::sockets_l2` and `scenario::fast_path_l3` for a case that is HTTP
/// only: the IGD's HTTP server is a socket on every data path, so one lab per softwire kind
/// suffices, and these two cover both data paths as well.
macro_rules! http_paths {
    ($scenario:ident) => {
        mod $scenario {
            use tests::{DataPath, Softwire};

            #[test]
            fn sockets_l2() -> anyhow::Result<()> {
                super::$scenario(Softwire::L2, DataPath::Sockets)
            }
            #[test]
            fn fast_path_l3() -> anyhow::Result<()> {
                super::$scenario(Softwire::L3, DataPath::FastPath)
            }
        }
    };
}

const IGD: SocketAddrV4 = SocketAddrV4::new(LAN_GATEWAY, IGD_HTTP_PORT);
const IP1: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";
const IP2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";
const COMMON: &str = "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1";
const IP_CONTROL: &str = "/ctl/IPConn";
const COMMON_CONTROL: &str = "/ctl/CmnIfCfg";
/// The status file `portproxy stats` reads is rewritten once a second.
const STATUS_PERIOD: Duration = Duration::from_millis(1500);
/// Longer than the IGD keeps any connection (10 s).
const REPLY_TIMEOUT: Duration = Duration::from_secs(12);
/// What a refusal may take: nothing is expanded, read or waited for.
const FAST: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Harness

/// Runs portproxy as the IGD of a lab with a PCP-only CGN behind the fw4-like firewall,
/// then `test`, then checks that the daemon is alive and still maps through the IGD
/// (`still_serves`). Prints portproxy's log on failure.
fn with_igd(
    softwire: Softwire,
    path: DataPath,
    test: impl FnOnce(&Lab, &Daemon) -> Result<()>,
) -> Result<()> {
    let builder = Lab::builder(softwire).cgn(CgnKind::PcpOnly).cpe_firewall();
    with_lab(builder, |lab| {
        let args = ["--lan-iface", "br-lan", "--wan-iface", "softwire", "-vv"];
        let portproxy = lab.spawn_portproxy_on(path, &args)?;
        let result = test(lab, &portproxy)
            .and_then(|()| still_serves(lab, &portproxy))
            .and_then(|()| lab.check_data_path(&portproxy, path, &[]));
        if result.is_err() {
            eprintln!(
                "=== portproxy log (last 80 lines)\n{}",
                tail(&portproxy.log(), 80)
            );
        }
        result
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The daemon is alive, serves its description and carries out a good AddPortMapping from
/// lan1 (TCP 8601 -> 9601): mapped at the CGN and reachable from the internet host.
fn still_serves(lab: &Lab, daemon: &Daemon) -> Result<()> {
    ensure_alive(daemon)?;
    let description = exchange(lab.lan(1), &get("/igd1.xml"))?;
    ensure!(
        description.status == Some(200) && description.text.contains(IP1),
        "no description after the abuse: {description:?}"
    );
    let reply = exchange(lab.lan(1), &add_request(LAN1_IP, 9601, 8601))?;
    ensure!(
        reply.status == Some(200) && reply.text.contains("AddPortMappingResponse"),
        "a good AddPortMapping after the abuse was not carried out: {reply:?}"
    );
    check_mapping(lab, 9601, lab.lan(1), 8601)?;
    ensure_alive(daemon)
}

/// The daemon is our unreaped child: if it died it is a zombie.
fn ensure_alive(daemon: &Daemon) -> Result<()> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    ensure!(
        matches!(state, Some(s) if s != "Z" && s != "X"),
        "portproxy (pid {}) is gone (state {state:?}):\n{}",
        daemon.pid(),
        tail(&daemon.log(), 40)
    );
    Ok(())
}

/// `portproxy stats --json` once the status file has caught up.
fn stats(lab: &Lab, daemon: &Daemon) -> Result<Value> {
    thread::sleep(STATUS_PERIOD);
    lab.portproxy_stats(daemon)
}

/// The daemon's count of a fate, by id (portproxy/src/stats.rs).
fn daemon_count(stats: &Value, id: &str) -> u64 {
    stats["counters"][id]["daemon"].as_u64().unwrap_or(0)
}

/// The fast path's count of a fate, by id (portproxy-common STAT_IDS).
fn kernel_count(stats: &Value, id: &str) -> u64 {
    stats["counters"][id]["kernel"].as_u64().unwrap_or(0)
}

/// How much the daemon's count `id` grew from `before` to `after`.
fn grew(before: &Value, after: &Value, id: &str) -> u64 {
    daemon_count(after, id).saturating_sub(daemon_count(before, id))
}

// ---------------------------------------------------------------------------------------------
// HTTP and SOAP by hand

/// What came back on one connection.
#[derive(Debug)]
struct Reply {
    /// The status code; `None` when the connection closed or was reset without a response.
    status: Option<u16>,
    /// Everything received (lossy UTF-8).
    text: String,
    /// From connecting to the end of the connection.
    took: Duration,
}

impl Reply {
    /// The UPnP error code of a SOAP fault in the reply.
    fn fault(&self) -> Option<u16> {
        let body = self.text.split_once("\r\n\r\n")?.1;
        upnp::fault_code(body.as_bytes())
    }
}

/// Sends `request` from `ns` to the IGD on a fresh connection (writing and reading at
/// once, so a server that answers before the request is all in is heard) and reads until
/// the server closes. Every request here asks for `Connection: close`.
fn exchange(ns: &Netns, request: &[u8]) -> Result<Reply> {
    exchange_with(ns, IGD, request)
}

fn exchange_with(ns: &Netns, to: SocketAddrV4, request: &[u8]) -> Result<Reply> {
    ns.enter(|| -> Result<Reply> {
        let start = Instant::now();
        let stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))
            .with_context(|| format!("connecting to {to}"))?;
        exchange_on(stream, start, request)
    })?
}

/// `exchange` from `ns`'s address `from` (one of several it has).
fn exchange_from(ns: &Netns, from: Ipv4Addr, request: &[u8]) -> Result<Reply> {
    ns.enter(|| -> Result<Reply> {
        let start = Instant::now();
        // std cannot bind before it connects; tokio's socket can, and gives the stream back.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddrV4::new(from, 0).into())?;
            let connect = socket.connect(IGD.into());
            let stream = tokio::time::timeout(Duration::from_secs(2), connect).await??;
            anyhow::Ok(stream.into_std()?)
        })?;
        stream.set_nonblocking(false)?;
        exchange_on(stream, start, request)
    })?
}

/// Sends `request` on `stream` (connected at `start`) and reads until the server closes.
fn exchange_on(stream: TcpStream, start: Instant, request: &[u8]) -> Result<Reply> {
    {
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        let mut received = Vec::new();
        thread::scope(|scope| {
            // A write error is the server closing early: what it said is read below.
            scope.spawn(move || writer.write_all(request));
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n @ 1..) = (&stream).read(&mut buf) {
                received.extend_from_slice(&buf[..n]);
            }
            // Unblocks the writer if the server stopped reading without closing.
            let _ = stream.shutdown(Shutdown::Both);
        });
        let text = String::from_utf8_lossy(&received).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
        Ok(Reply {
            status,
            text,
            took: start.elapsed(),
        })
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {IGD}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A SOAP POST to `path`, with a SOAPAction header when `soap_action` is given.
fn post(path: &str, soap_action: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {IGD}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(action) = soap_action {
        request += &format!("SOAPAction: \"{action}\"\r\n");
    }
    request += "\r\n";
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// AddPortMapping's arguments as upnpc sends them: TCP `external` -> `client`:`internal`.
fn add_args(client: Ipv4Addr, external: u16, internal: u16) -> Vec<(&'static str, String)> {
    vec![
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external.to_string()),
        ("NewProtocol", "TCP".into()),
        ("NewInternalPort", internal.to_string()),
        ("NewInternalClient", client.to_string()),
        ("NewEnabled", "1".into()),
        ("NewPortMappingDescription", "igd_hostile".into()),
        ("NewLeaseDuration", "3600".into()),
    ]
}

fn add_request(client: Ipv4Addr, external: u16, internal: u16) -> Vec<u8> {
    let body = upnp::soap_request(IP1, "AddPortMapping", &add_args(client, external, internal));
    post(
        IP_CONTROL,
        Some(&format!("{IP1}#AddPortMapping")),
        body.as_bytes(),
    )
}

/// `args` as SOAP argument elements, unescaped (the cases put markup in them on purpose).
fn raw_args(args: &[(&str, String)]) -> String {
    args.iter()
        .map(|(name, value)| format!("<{name}>{value}</{name}>"))
        .collect()
}

/// A SOAP envelope around `inner` (the Body's content), after `prolog` (a DOCTYPE, say).
fn envelope(prolog: &str, inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\r\n{prolog}<s:Envelope \
         xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>{inner}\
         </s:Body></s:Envelope>\r\n"
    )
}

/// The element of `action` of `service` with `args` (unescaped).
fn action(service: &str, action: &str, args: &[(&str, String)]) -> String {
    format!(
        "<u:{action} xmlns:u=\"{service}\">{}</u:{action}>",
        raw_args(args)
    )
}

/// AddPortMapping's arguments with `name` set to `value` (`None`: left out).
fn add_with(name: &str, value: Option<&str>) -> Vec<(&'static str, String)> {
    let mut args = add_args(LAN1_IP, 9611, 8611);
    match value {
        Some(value) => args
            .iter_mut()
            .filter(|(n, _)| *n == name)
            .for_each(|(_, v)| *v = value.into()),
        None => args.retain(|(n, _)| *n != name),
    }
    args
}

/// What a hostile request must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// HTTP 500 with a SOAP fault carrying this UPnP error code.
    Fault(u16),
    /// This HTTP status, no fault.
    Status(u16),
    /// A 4xx status, or the connection closed without a response.
    Refused,
}

/// Sends each `(label, request, expected)` from lan1 and checks the reply: as expected,
/// fast, and never echoing `secret` (a file's content).
fn expect_all(lab: &Lab, cases: &[(String, Vec<u8>, Expect)], secret: &str) -> Result<()> {
    let mut failures = Vec::new();
    for (label, request, expected) in cases {
        let reply = exchange(lab.lan(1), request)?;
        let ok = match *expected {
            Expect::Fault(code) => reply.status == Some(500) && reply.fault() == Some(code),
            Expect::Status(status) => reply.status == Some(status) && reply.fault().is_none(),
            Expect::Refused => reply.status.is_none_or(|s| (400..500).contains(&s)),
        };
        let leaked = !secret.is_empty() && reply.text.contains(secret);
        eprintln!(
            "{label}: {:?} {:?} in {:?}{}",
            reply.status,
            reply.fault(),
            reply.took,
            if leaked { " LEAKED" } else { "" }
        );
        if !ok || leaked || reply.took > FAST {
            failures.push(format!(
                "{label}: expected {expected:?}, got {:?} in {:?}:\n{}",
                reply.status,
                reply.took,
                tail(&reply.text, 12)
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// Nothing is mapped on TCP `external` at the CGN, in portproxy's table or as a hole in
/// the CPE's firewall.
fn not_mapped(lab: &Lab, external: u16) -> Result<()> {
    let nat = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
    ensure!(
        !nat.contains(&format!("dport {external} ")),
        "the CGN maps {external}:\n{nat}"
    );
    let mappings = lab.portproxy_mappings()?;
    let listed = mappings
        .as_array()
        .context("mappings --json is not an array")?
        .iter()
        .any(|m| m["external_port"].as_u64() == Some(external.into()));
    ensure!(
        !listed,
        "portproxy has a mapping on {external}: {mappings:#}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed SOAP

/// Not XML, broken XML, the action outside the envelope's body, missing arguments, bad
/// numbers, unknown actions, service types and versions, wrong methods and paths: each a
/// UPnP fault (401, 402, 7xx) with HTTP 500 or a plain 4xx/501, at once, counted as
/// refused; nothing mapped.
fn malformed_soap(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, |lab, daemon| {
        let add = |args: &[(&str, String)]| envelope("", &action(IP1, "AddPortMapping", args));
        let add_action = format!("{IP1}#AddPortMapping");
        let good = add(&add_args(LAN1_IP, 9611, 8611));
        let call = |body: &str| post(IP_CONTROL, Some(&add_action), body.as_bytes());
        let mut cases: Vec<(String, Vec<u8>, Expect)> = vec![
            (
                "not XML".into(),
                call("hello, this is not XML"),
                Expect::Fault(402),
            ),
            ("empty body".into(), call(""), Expect::Fault(402)),
            (
                "binary".into(),
                post(
                    IP_CONTROL,
                    Some(&add_action),
                    &(0..=255u8).cycle().take(4096).collect::<Vec<_>>(),
                ),
                Expect::Fault(402),
            ),
            (
                "truncated".into(),
                call(&good[..good.len() / 2]),
                Expect::Fault(402),
            ),
            (
                "mismatched end tag".into(),
                call(&good.replace("</s:Body>", "</s:Bodx>")),
                Expect::Fault(402),
            ),
            (
                "no envelope".into(),
                call(&action(
                    IP1,
                    "AddPortMapping",
                    &add_args(LAN1_IP, 9611, 8611),
                )),
                Expect::Fault(402),
            ),
            (
                "action in a SOAP header".into(),
                call(
                    &good
                        .replace("<s:Body>", "<s:Header>")
                        .replace("</s:Body>", "</s:Header><s:Body></s:Body>"),
                ),
                Expect::Fault(402),
            ),
            (
                "body's action is another".into(),
                post(
                    IP_CONTROL,
                    Some(&format!("{IP1}#DeletePortMapping")),
                    good.as_bytes(),
                ),
                Expect::Fault(402),
            ),
            (
                "8,000 levels deep".into(),
                call(&envelope(
                    "",
                    &format!("{}{}", "<a>".repeat(8000), "</a>".repeat(8000)),
                )),
                Expect::Fault(402),
            ),
            (
                "4,000 unknown arguments".into(),
                call(&add(&vec![("Junk", "1".to_string()); 4000])),
                Expect::Fault(402),
            ),
        ];
        for name in ["NewInternalClient", "NewExternalPort", "NewProtocol"] {
            cases.push((
                format!("without {name}"),
                call(&add(&add_with(name, None))),
                Expect::Fault(402),
            ));
        }
        for (name, value, expected) in [
            ("NewExternalPort", "70000", 402),
            ("NewExternalPort", "-1", 402),
            ("NewExternalPort", "0x50", 402),
            ("NewExternalPort", "", 402),
            ("NewExternalPort", "0", 716),
            ("NewInternalPort", "0", 732),
            ("NewInternalPort", "99999999999999999999", 402),
            ("NewLeaseDuration", "4294967296", 402),
            ("NewLeaseDuration", "forever", 402),
            ("NewProtocol", "SCTP", 402),
            ("NewInternalClient", "192.168.1", 402),
            ("NewInternalClient", "::1", 402),
            ("NewRemoteHost", "203.0.114.2", 726),
        ] {
            cases.push((
                format!("{name} = {value:?}"),
                call(&add(&add_with(name, Some(value)))),
                Expect::Fault(expected),
            ));
        }
        // Unknown actions, service types and versions, and an action of the other service.
        let calls: [(&str, &str, &str, &str); 8] = [
            (
                IP_CONTROL,
                IP1,
                "FrobnicatePortMapping",
                "FrobnicatePortMapping",
            ),
            // IGD:2's own action asked of version 1.
            (IP_CONTROL, IP1, "AddAnyPortMapping", "AddAnyPortMapping"),
            (
                IP_CONTROL,
                "urn:schemas-upnp-org:service:WANPPPConnection:1",
                "AddPortMapping",
                "AddPortMapping",
            ),
            (
                IP_CONTROL,
                "urn:schemas-upnp-org:service:WANIPConnection:3",
                "AddPortMapping",
                "AddPortMapping",
            ),
            (IP_CONTROL, IP1, "GetTotalBytesSent", "GetTotalBytesSent"),
            (COMMON_CONTROL, IP1, "AddPortMapping", "AddPortMapping"),
            (
                COMMON_CONTROL,
                "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:2",
                "GetTotalBytesSent",
                "GetTotalBytesSent",
            ),
            (
                COMMON_CONTROL,
                COMMON,
                "GetExternalIPAddress",
                "GetExternalIPAddress",
            ),
        ];
        for (control, service, name, element) in calls {
            let args = if element == "AddPortMapping" || element == "AddAnyPortMapping" {
                add_args(LAN1_IP, 9611, 8611)
            } else {
                Vec::new()
            };
            let body = envelope("", &action(service, element, &args));
            cases.push((
                format!("{service}#{name} at {control}"),
                post(control, Some(&format!("{service}#{name}")), body.as_bytes()),
                Expect::Fault(401),
            ));
        }
        for (label, header) in [
            ("no SOAPAction", None),
            ("SOAPAction without #", Some(IP1)),
            ("SOAPAction #", Some("#")),
            ("SOAPAction empty", Some("")),
        ] {
            cases.push((
                label.into(),
                post(IP_CONTROL, header, good.as_bytes()),
                Expect::Fault(401),
            ));
        }
        // A SOAPAction that is not text (obs-text bytes).
        let mut binary_action = post(IP_CONTROL, Some("\u{1}"), good.as_bytes());
        let at = binary_action
            .iter()
            .position(|&b| b == 1)
            .context("the marker byte")?;
        binary_action.splice(at..=at, [0xff, 0xfe, b'#', 0xfd]);
        cases.push((
            "SOAPAction not UTF-8".into(),
            binary_action,
            Expect::Fault(401),
        ));
        let faults = cases
            .iter()
            .filter(|(_, _, e)| matches!(e, Expect::Fault(_)))
            .count() as u64;
        for (label, request, expected) in [
            ("GET of a control URL", get(IP_CONTROL), Expect::Status(404)),
            ("GET of nothing", get("/nowhere"), Expect::Status(404)),
            (
                "GET out of the root",
                get("/../../../../etc/passwd"),
                Expect::Status(404),
            ),
            (
                "DELETE of a description",
                b"DELETE /igd1.xml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
                Expect::Status(501),
            ),
            (
                "POST elsewhere",
                post("/ctl/Nothing", Some(&add_action), good.as_bytes()),
                Expect::Status(404),
            ),
            (
                "not HTTP",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello TLS\r\n\r\n".to_vec(),
                Expect::Refused,
            ),
        ] {
            cases.push((label.into(), request, expected));
        }

        let before = stats(lab, daemon)?;
        expect_all(lab, &cases, "root:x:0:0")?;
        let after = stats(lab, daemon)?;
        let refused = grew(&before, &after, "upnp_refused");
        let answered = grew(&before, &after, "upnp_answered");
        eprintln!("upnp_refused +{refused}, upnp_answered +{answered}");
        ensure!(
            refused == faults && answered == 0,
            "expected {faults} refusals and no answer counted, got +{refused} and +{answered}"
        );
        not_mapped(lab, 9611)?;
        ensure!(
            lab.holes()?.is_empty(),
            "firewall holes after refusals: {:?}",
            lab.holes()?
        );
        Ok(())
    })
}
http_paths!(malformed_soap);

// ---------------------------------------------------------------------------------------------
// 2. XML bombs and external entities

/// Billion laughs, a quadratic blow-up, external entities (a file, a URL on the internet
/// host, a parameter entity) and an otherwise good call carrying a DOCTYPE: each refused
/// with 402 within a second, with nothing expanded, read or fetched (the reply is small and
/// holds no line of /etc/passwd, the internet host sees no connection), nothing mapped.
fn xml_bombs(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, |lab, daemon| {
        let add_action = format!("{IP1}#AddPortMapping");
        let with_description = |prolog: &str, description: &str| {
            let mut args = add_args(LAN1_IP, 9621, 8621);
            args[6].1 = description.into();
            envelope(prolog, &action(IP1, "AddPortMapping", &args))
        };
        let mut laughs = String::from("<!DOCTYPE lolz [<!ENTITY lol0 \"lol\">");
        for level in 1..10 {
            laughs += &format!(
                "<!ENTITY lol{level} \"{}\">",
                format!("&lol{};", level - 1).repeat(10)
            );
        }
        laughs += "]>";
        let quadratic = format!("<!DOCTYPE q [<!ENTITY a \"{}\">]>", "x".repeat(30_000));
        let secret = std::fs::read_to_string("/etc/passwd")?
            .lines()
            .next()
            .unwrap_or("root:x:0:0")
            .to_string();
        // The internet host is where an external entity over HTTP would be fetched from.
        let inet = lab
            .inet()
            .enter(|| std::net::TcpListener::bind("0.0.0.0:8080"))??;
        inet.set_nonblocking(true)?;
        let bodies = [
            ("billion laughs", with_description(&laughs, "&lol9;")),
            (
                "quadratic blow-up",
                with_description(&quadratic, &"&a;".repeat(1000)),
            ),
            (
                "external entity (file)",
                with_description(
                    "<!DOCTYPE d [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>",
                    "&xxe;",
                ),
            ),
            (
                "external entity (http)",
                with_description(
                    "<!DOCTYPE d [<!ENTITY xxe SYSTEM \"http://203.0.114.2:8080/x\">]>",
                    "&xxe;",
                ),
            ),
            (
                "external parameter entity",
                with_description(
                    "<!DOCTYPE d [<!ENTITY % p SYSTEM \"file:///etc/passwd\"> %p;]>",
                    "x",
                ),
            ),
            (
                "external DTD",
                with_description(
                    "<!DOCTYPE s:Envelope SYSTEM \"http://203.0.114.2:8080/soap.dtd\">",
                    "x",
                ),
            ),
            (
                "a good call with a DOCTYPE",
                with_description("<!DOCTYPE s:Envelope []>", "x"),
            ),
            ("an undeclared entity", with_description("", "&nothing;")),
        ];
        let cases: Vec<(String, Vec<u8>, Expect)> = bodies
            .iter()
            .map(|(label, body)| {
                (
                    label.to_string(),
                    post(IP_CONTROL, Some(&add_action), body.as_bytes()),
                    Expect::Fault(402),
                )
            })
            .collect();
        let before = stats(lab, daemon)?;
        expect_all(lab, &cases, &secret)?;
        for (label, request, _) in &cases {
            let reply = exchange(lab.lan(1), request)?;
            ensure!(
                reply.text.len() < 2048 && !reply.text.contains("lollol"),
                "{label}: a {} byte reply:\n{}",
                reply.text.len(),
                tail(&reply.text, 5)
            );
        }
        let after = stats(lab, daemon)?;
        let refused = grew(&before, &after, "upnp_refused");
        ensure!(
            refused == 2 * cases.len() as u64,
            "expected {} refusals counted, got +{refused}",
            2 * cases.len()
        );
        let fetched = inet.accept().is_ok();
        ensure!(
            !fetched,
            "an external entity was fetched from the internet host"
        );
        not_mapped(lab, 9621)?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))?;
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or_default();
        eprintln!("portproxy {rss}");
        Ok(())
    })
}
http_paths!(xml_bombs);

// ---------------------------------------------------------------------------------------------
// 3. Oversized and lying requests

/// A body over 64 KiB (honest, chunked, or under a Content-Length saying less or far more),
/// a Content-Length that is no number, 40 headers, a 16 KiB header and a request line of
/// 16 KiB: each refused (413/431/400 or the connection closed) within a second and counted
/// as dropped_http; nothing mapped.
fn oversized(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, |lab, daemon| {
        let add_action = format!("{IP1}#AddPortMapping");
        let head = |extra: &str| {
            format!(
                "POST {IP_CONTROL} HTTP/1.1\r\nHost: {IGD}\r\nContent-Type: text/xml\r\n\
                 SOAPAction: \"{add_action}\"\r\n{extra}\r\n"
            )
        };
        // A good call whose description makes it 100 KiB.
        let mut args = add_args(LAN1_IP, 9631, 8631);
        args[6].1 = "x".repeat(100 * 1024);
        let big = upnp::soap_request(IP1, "AddPortMapping", &args);
        let with_body = |head: String, body: &[u8]| {
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(body);
            bytes
        };
        let chunked = {
            let mut body = String::new();
            for chunk in big.as_bytes().chunks(8192) {
                body += &format!(
                    "{:x}\r\n{}\r\n",
                    chunk.len(),
                    String::from_utf8_lossy(chunk)
                );
            }
            body + "0\r\n\r\n"
        };
        let many_headers: String = (0..40).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
        let cases: Vec<(String, Vec<u8>, Expect)> = vec![
            (
                "100 KiB body".into(),
                post(IP_CONTROL, Some(&add_action), big.as_bytes()),
                Expect::Status(413),
            ),
            (
                "100 KiB body, chunked".into(),
                with_body(
                    head("Transfer-Encoding: chunked\r\nConnection: close\r\n"),
                    chunked.as_bytes(),
                ),
                Expect::Status(413),
            ),
            (
                "100 KiB body under Content-Length: 2^40".into(),
                with_body(
                    head("Content-Length: 1099511627776\r\nConnection: close\r\n"),
                    big.as_bytes(),
                ),
                Expect::Status(413),
            ),
            (
                "Content-Length that is no number".into(),
                with_body(
                    head("Content-Length: 1e3\r\nConnection: close\r\n"),
                    big.as_bytes(),
                ),
                Expect::Refused,
            ),
            (
                "Content-Length beyond u64".into(),
                with_body(
                    head("Content-Length: 99999999999999999999999\r\nConnection: close\r\n"),
                    big.as_bytes(),
                ),
                Expect::Refused,
            ),
            (
                "two Content-Lengths".into(),
                with_body(
                    head("Content-Length: 10\r\nContent-Length: 20\r\nConnection: close\r\n"),
                    big.as_bytes(),
                ),
                Expect::Refused,
            ),
            (
                "40 headers".into(),
                with_body(head(&format!("{many_headers}Content-Length: 0\r\n")), b""),
                Expect::Refused,
            ),
            (
                "a 16 KiB header".into(),
                with_body(
                    head(&format!(
                        "X-Big: {}\r\nContent-Length: 0\r\n",
                        "y".repeat(16384)
                    )),
                    b"",
                ),
                Expect::Refused,
            ),
            (
                "a 16 KiB request line".into(),
                format!(
                    "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    "z".repeat(16384)
                )
                .into_bytes(),
                Expect::Refused,
            ),
        ];
        let before = stats(lab, daemon)?;
        expect_all(lab, &cases, "")?;

        // Content-Length says less than is sent (keep-alive): the rest is read as the next
        // request, which is no HTTP, and the connection is closed.
        let lying = with_body(head("Content-Length: 100\r\n"), big.as_bytes());
        let reply = exchange(lab.lan(1), &lying)?;
        eprintln!(
            "Content-Length: 100 with 100 KiB: {:?} {:?} in {:?}",
            reply.status,
            reply.fault(),
            reply.took
        );
        ensure!(
            reply.status == Some(500) && reply.fault() == Some(402) && reply.took < FAST,
            "a body cut short by its Content-Length: {reply:?}"
        );
        let after = stats(lab, daemon)?;
        let dropped = grew(&before, &after, "dropped_http");
        eprintln!("dropped_http +{dropped}");
        ensure!(
            dropped as usize >= cases.len(),
            "expected at least {} connections counted as dropped_http, got +{dropped}",
            cases.len()
        );
        not_mapped(lab, 9631)
    })
}
http_paths!(oversized);

// ---------------------------------------------------------------------------------------------
// 4. Slow clients

/// How many connections the slow client keeps open (the IGD takes 32 at once).
const SLOW_CONNECTIONS: usize = 40;
/// How long the slow client goes on: past the IGD's 10 s per connection.
const SLOW_FOR: Duration = Duration::from_secs(14);

/// lan2 keeps 40 connections open, each sending a request head a byte a second and opening
/// a new one whenever the IGD closes one (slowloris). Meanwhile lan1's description fetches
/// and calls are each served at once, every slow connection is cut well before its head
/// is in, and the cuts are counted.
fn slow_clients(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, |lab, daemon| {
        let before = stats(lab, daemon)?;
        let stop = AtomicBool::new(false);
        let (lan1, lan2) = (lab.lan(1), lab.lan(2));
        let (slow, served) = thread::scope(|scope| {
            let slow = scope.spawn(|| lan2.enter(|| slowloris(&stop)));
            // Let the slow connections take their places first.
            thread::sleep(Duration::from_secs(3));
            let mut served = Vec::new();
            let started = Instant::now();
            let mut n = 0u16;
            while started.elapsed() < Duration::from_secs(9) {
                let request = match n % 3 {
                    0 => get("/igd2.xml"),
                    1 => post(
                        IP_CONTROL,
                        Some(&format!("{IP1}#GetExternalIPAddress")),
                        upnp::soap_request(IP1, "GetExternalIPAddress", &[]).as_bytes(),
                    ),
                    _ => add_request(LAN1_IP, 9641 + n, 8641 + n),
                };
                served.push(exchange(lan1, &request));
                n += 1;
                thread::sleep(Duration::from_millis(500));
            }
            stop.store(true, Ordering::Relaxed);
            (slow.join(), served)
        });
        let slow = slow.map_err(|_| anyhow::anyhow!("the slow client panicked"))???;
        eprintln!(
            "slow client: {} connections, {} cut by the IGD, longest {:?}, {} bytes sent",
            slow.opened, slow.cut, slow.longest, slow.bytes
        );
        let mut failures = Vec::new();
        for (i, reply) in served.into_iter().enumerate() {
            let reply = reply?;
            eprintln!("lan1 request {i}: {:?} in {:?}", reply.status, reply.took);
            if reply.status != Some(200) || reply.took > Duration::from_secs(2) {
                failures.push(format!("{i}: {:?} in {:?}", reply.status, reply.took));
            }
        }
        ensure!(
            failures.is_empty(),
            "lan1 was not served while lan2 held slow connections: {failures:?}"
        );
        ensure!(
            slow.cut >= SLOW_CONNECTIONS && slow.longest < Duration::from_secs(6),
            "the slow connections were not cut early: {} cut, longest {:?}",
            slow.cut,
            slow.longest
        );
        let after = stats(lab, daemon)?;
        let dropped = grew(&before, &after, "dropped_http");
        eprintln!("dropped_http +{dropped}");
        ensure!(
            dropped as usize >= slow.cut,
            "{} slow connections cut, dropped_http +{dropped}",
            slow.cut
        );
        Ok(())
    })
}
http_paths!(slow_clients);

/// A SOAP call whose head comes at once and whose body trickles in a byte every half
/// second: answered 408 and closed once the body has taken 3 s, long before the 10 s a
/// connection may last, and counted as dropped_http.
fn trickled_body(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, |lab, daemon| {
        let before = stats(lab, daemon)?;
        let body = upnp::soap_request(IP1, "AddPortMapping", &add_args(LAN1_IP, 9671, 8671));
        let head = post(IP_CONTROL, Some(&format!("{IP1}#AddPortMapping")), b"");
        let head = String::from_utf8(head)?.replace(
            "Content-Length: 0",
            &format!("Content-Length: {}", body.len()),
        );
        let (status, took) = lab.lan(1).enter(|| -> Result<(Option<u16>, Duration)> {
            let start = Instant::now();
            let mut stream = TcpStream::connect_timeout(&IGD.into(), Duration::from_secs(2))?;
            stream.write_all(head.as_bytes())?;
            stream.set_nonblocking(true)?;
            let mut received = Vec::new();
            for &byte in body.as_bytes() {
                let mut buf = [0u8; 1024];
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
                if stream.write(&[byte]).is_err() || start.elapsed() > REPLY_TIMEOUT {
                    break;
                }
                thread::sleep(Duration::from_millis(500));
            }
            let text = String::from_utf8_lossy(&received);
            let status = text
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok());
            Ok((status, start.elapsed()))
        })??;
        eprintln!("trickled body: {status:?} after {took:?}");
        ensure!(
            status == Some(408) && took < Duration::from_secs(6),
            "a trickled body got {status:?} after {took:?}, expected 408 within 6 s"
        );
        let after = stats(lab, daemon)?;
        ensure!(
            grew(&before, &after, "dropped_http") >= 1,
            "the trickled body was not counted as dropped_http"
        );
        not_mapped(lab, 9671)
    })
}
http_paths!(trickled_body);

#[derive(Debug, Default)]
struct Slowloris {
    opened: usize,
    /// Connections the IGD closed (a write failed or the peer closed).
    cut: usize,
    /// The longest time one of them was held open.
    longest: Duration,
    bytes: usize,
}

/// Keeps `SLOW_CONNECTIONS` connections to the IGD, each sending one more byte of a never
/// ending request head every second, until `stop` or `SLOW_FOR`.
fn slowloris(stop: &AtomicBool) -> Result<Slowloris> {
    const HEAD: &[u8] = b"GET /igd1.xml HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nX-Slow: ";
    let mut out = Slowloris::default();
    let mut slots: Vec<Option<(TcpStream, Instant, usize)>> =
        (0..SLOW_CONNECTIONS).map(|_| None).collect();
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < SLOW_FOR {
        let tick = Instant::now();
        for slot in &mut slots {
            let Some((stream, opened, sent)) = slot else {
                if let Ok(stream) =
                    TcpStream::connect_timeout(&IGD.into(), Duration::from_millis(500))
                {
                    stream.set_nonblocking(true)?;
                    *slot = Some((stream, Instant::now(), 0));
                    out.opened += 1;
                }
                continue;
            };
            let byte = HEAD.get(*sent).copied().unwrap_or(b'a');
            // The IGD closing shows as a read of 0 bytes (FIN) or an error (RST), and
            // sooner or later as a failed write.
            let mut probe = [0u8; 512];
            let closed = match (&*stream).read(&mut probe) {
                Ok(0) => true,
                // An answer (a 408, say): the close follows.
                Ok(_) => false,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    (&*stream).write(&[byte]).is_err()
                }
                Err(_) => true,
            };
            if closed {
                out.cut += 1;
                out.longest = out.longest.max(opened.elapsed());
                *slot = None;
            } else {
                *sent += 1;
                out.bytes += 1;
            }
        }
        thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 5. The WAN side

/// From the CGN, over the softwire: TCP to port 5000 of the CPE's WAN address and of its
/// LAN address (routed to it), and M-SEARCH to the CPE's WAN and LAN addresses and the
/// group. The TCP connections are refused (the SYNs reached the CPE: counted there), the
/// searches get no answer and are counted as from the WAN.
fn wan_side(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, |lab, daemon| {
        lab.cpe().run(
            "nft",
            &["add table inet igd_hostile; \
                 add counter inet igd_hostile syn; \
                 add chain inet igd_hostile pre { type filter hook prerouting priority -300; }; \
                 add rule inet igd_hostile pre iifname \"softwire\" tcp dport 5000 \
                 tcp flags syn counter name syn"],
        )?;
        let before = stats(lab, daemon)?;
        let mut tcp = Vec::new();
        for addr in [CPE_SOFTWIRE_IP, LAN_GATEWAY] {
            let to = SocketAddrV4::new(addr, IGD_HTTP_PORT);
            let outcome = lab
                .cgn()
                .enter(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)))?;
            tcp.push((to, outcome.map(drop).map_err(|e| e.kind())));
        }
        eprintln!("TCP from the CGN: {tcp:?}");
        ensure!(
            tcp.iter().all(|(_, r)| r.is_err()),
            "the IGD accepted a connection from the WAN: {tcp:?}"
        );
        let syns = run_expect(
            lab.cpe(),
            "nft",
            &["list", "counter", "inet", "igd_hostile", "syn"],
            &[],
        )?;
        ensure!(
            !syns.contains("packets 0 "),
            "the SYNs from the CGN did not reach the CPE, so nothing was tested:\n{syns}"
        );

        let search = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n";
        lab.cgn().ip("route add 224.0.0.0/4 dev softwire")?;
        let answers = lab.cgn().enter(|| -> Result<Vec<String>> {
            let socket = UdpSocket::bind((CGN_SOFTWIRE_IP, 0))?;
            socket.set_multicast_loop_v4(false)?;
            socket.set_multicast_ttl_v4(2)?;
            for dst in [CPE_SOFTWIRE_IP, LAN_GATEWAY, SSDP_GROUP] {
                socket.send_to(search, SocketAddrV4::new(dst, 1900))?;
            }
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut answers = Vec::new();
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    answers.push(format!(
                        "{from}: {}",
                        String::from_utf8_lossy(&buf[..len.min(80)])
                    ));
                }
            }
            Ok(answers)
        })??;
        ensure!(
            answers.is_empty(),
            "searches from the WAN were answered: {answers:?}"
        );
        let after = stats(lab, daemon)?;
        let from_wan = grew(&before, &after, "dropped_from_wan")
            + kernel_count(&after, "search_from_wan")
                .saturating_sub(kernel_count(&before, "search_from_wan"));
        let answered = grew(&before, &after, "search_answered");
        eprintln!("searches from the WAN counted: +{from_wan}, answered +{answered}");
        ensure!(
            from_wan >= 1 && answered == 0,
            "expected the searches from the WAN counted and none answered, got +{from_wan} and +{answered}"
        );
        Ok(())
    })
}
every_path!(wan_side);

// ---------------------------------------------------------------------------------------------
// 6. Mappings for another host

/// lan1 asks for mappings to lan2, to the CPE, to an address off the LAN, to the
/// broadcast and unspecified addresses: 606 each, and nothing at the CGN, in the table or
/// in the CPE's firewall set. lan2 maps a port of its own; lan1 cannot delete it (606),
/// nor take its external port (718); it stays mapped and open.
fn another_host(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, |lab, daemon| {
        let before = stats(lab, daemon)?;
        let mut cases = Vec::new();
        for (i, client) in [
            LAN2_IP,
            LAN_GATEWAY,
            CPE_SOFTWIRE_IP,
            Ipv4Addr::new(203, 0, 114, 2),
            Ipv4Addr::new(192, 168, 1, 255),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
        ]
        .into_iter()
        .enumerate()
        {
            let external = 9651 + i as u16;
            cases.push((
                format!("NewInternalClient {client}"),
                add_request(client, external, 8651),
                Expect::Fault(606),
            ));
        }
        expect_all(lab, &cases, "")?;
        for i in 0..cases.len() {
            not_mapped(lab, 9651 + i as u16)?;
        }
        let holes = lab.holes()?;
        ensure!(holes.is_empty(), "firewall holes after 606s: {holes:?}");

        // lan2's own mapping stays lan2's.
        let reply = exchange(lab.lan(2), &add_request(LAN2_IP, 9660, 8660))?;
        ensure!(reply.status == Some(200), "lan2's own mapping: {reply:?}");
        let delete = envelope(
            "",
            &action(
                IP1,
                "DeletePortMapping",
                &[
                    ("NewRemoteHost", String::new()),
                    ("NewExternalPort", "9660".into()),
                    ("NewProtocol", "TCP".into()),
                ],
            ),
        );
        let others = [
            (
                "lan1 deletes lan2's mapping".to_string(),
                post(
                    IP_CONTROL,
                    Some(&format!("{IP1}#DeletePortMapping")),
                    delete.as_bytes(),
                ),
                Expect::Fault(606),
            ),
            (
                "lan1 deletes lan2's mapping by range".to_string(),
                post(
                    IP_CONTROL,
                    Some(&format!("{IP2}#DeletePortMappingRange")),
                    envelope(
                        "",
                        &action(
                            IP2,
                            "DeletePortMappingRange",
                            &[
                                ("NewStartPort", "1".into()),
                                ("NewEndPort", "65535".into()),
                                ("NewProtocol", "TCP".into()),
                                ("NewManage", "1".into()),
                            ],
                        ),
                    )
                    .as_bytes(),
                ),
                // Only its own are looked at: it has none.
                Expect::Fault(730),
            ),
            (
                "lan1 takes lan2's external port".to_string(),
                add_request(LAN1_IP, 9660, 8661),
                Expect::Fault(718),
            ),
        ];
        expect_all(lab, &others, "")?;
        check_mapping(lab, 9660, lab.lan(2), 8660)?;
        let holes = lab.holes()?;
        ensure!(
            holes.len() == 1 && holes[0].host == LAN2_IP.to_string() && holes[0].port == 8660,
            "expected only lan2's hole, got {holes:?}"
        );
        let after = stats(lab, daemon)?;
        let refused = grew(&before, &after, "upnp_refused");
        ensure!(
            refused == (cases.len() + others.len()) as u64,
            "expected {} refusals counted, got +{refused}",
            cases.len() + others.len()
        );
        Ok(())
    })
}
every_path!(another_host);

// ---------------------------------------------------------------------------------------------
// 7. Event subscriptions (GENA)

const EVENTS: &str = "/evt/IPConn";
/// Where lan1's and lan2's event sinks listen.
const SINK_PORT: u16 = 49152;
/// Where the flooders' callbacks point: nothing listens there.
const NO_SINK_PORT: u16 = 49153;
/// portproxy's bounds (serve/igd/events.rs): subscriptions per host and in all.
const PER_HOST: usize = 16;
const TOTAL: usize = 64;

/// A (UN)SUBSCRIBE as bytes, its headers as given (names and values unchecked).
fn gena_request(method: &str, path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {IGD}\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// A good SUBSCRIBE for events at `host`:`port`.
fn subscribe_request(host: Ipv4Addr, port: u16) -> Vec<u8> {
    let callback = format!("<http://{host}:{port}/events>");
    gena_request(
        "SUBSCRIBE",
        EVENTS,
        &[
            ("CALLBACK", callback.as_bytes()),
            ("NT", b"upnp:event"),
            ("TIMEOUT", b"Second-300"),
        ],
    )
}

/// A header of a reply (name in any case).
fn reply_header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    let head = reply.text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A SUBSCRIBE from `ns`'s address `from` that must be taken: its SID.
fn subscribed(ns: &Netns, from: Ipv4Addr, request: &[u8]) -> Result<String> {
    let reply = exchange_from(ns, from, request)?;
    let sid = reply_header(&reply, "sid").filter(|sid| sid.starts_with("uuid:"));
    match (reply.status, sid) {
        (Some(200), Some(sid)) => Ok(sid.to_string()),
        _ => anyhow::bail!("SUBSCRIBE from {from}: {reply:?}"),
    }
}

/// A renewal of `sid` from `ns`'s address `from`: its status and SID.
fn renew(ns: &Netns, from: Ipv4Addr, sid: &str) -> Result<(Option<u16>, Option<String>)> {
    let request = gena_request(
        "SUBSCRIBE",
        EVENTS,
        &[("SID", sid.as_bytes()), ("TIMEOUT", b"Second-300")],
    );
    let reply = exchange_from(ns, from, &request)?;
    Ok((reply.status, reply_header(&reply, "sid").map(String::from)))
}

/// Malformed SUBSCRIBE and UNSUBSCRIBE requests: no, empty, bracketless, foreign (another
/// LAN host, the internet, a name, user info, HTTPS), too many (5 and 200) and non-text
/// callbacks; NT wrong or missing; a header twice; a SID with NT or CALLBACK; the SID of
/// nobody and of another host; oversized headers. Each a 412 or 400 (or, oversized, a
/// refusal) at once, counted as gena_refused, no subscription taken. Absurd TIMEOUTs are
/// taken within the bounds (60..1800 s). Then floods: one address takes 20 subscriptions
/// (the per-host bound is 16: its own oldest make room), four more take 16 each (the
/// bound in all is 64: the flooders' make room). Through all of it lan1's and lan2's
/// subscriptions stay: renewed with their SIDs, and evented when lan1 then maps a port.
fn gena_hostile(softwire: Softwire, path: DataPath) -> Result<()> {
    with_igd(softwire, path, |lab, daemon| {
        let (lan1, lan2) = (lab.lan(1), lab.lan(2));
        let sink1 = lan1.serve_events(SINK_PORT)?;
        let sink2 = lan2.serve_events(SINK_PORT)?;
        let sid1 = subscribed(lan1, LAN1_IP, &subscribe_request(LAN1_IP, SINK_PORT))?;
        let sid2 = subscribed(lan2, LAN2_IP, &subscribe_request(LAN2_IP, SINK_PORT))?;
        for (sink, sid) in [(&sink1, &sid1), (&sink2, &sid2)] {
            sink.wait_for(Duration::from_secs(5), |e| e.header("sid") == Some(sid))?;
        }

        let own = |port: u16| format!("<http://{LAN1_IP}:{port}/events>");
        let cb = own(SINK_PORT);
        let nt: (&str, &[u8]) = ("NT", b"upnp:event");
        let five = own(SINK_PORT).repeat(5);
        let many = own(SINK_PORT).repeat(200);
        let nobody = "uuid:00000000-0000-4000-8000-000000000000";
        let subscribe = |headers: &[(&str, &[u8])]| gena_request("SUBSCRIBE", EVENTS, headers);
        let unsubscribe = |headers: &[(&str, &[u8])]| gena_request("UNSUBSCRIBE", EVENTS, headers);
        let with_callback = |callback: &str| subscribe(&[("CALLBACK", callback.as_bytes()), nt]);
        let mut cases: Vec<(String, Vec<u8>, Expect)> = vec![
            ("no CALLBACK".into(), subscribe(&[nt]), Expect::Status(412)),
            (
                "empty CALLBACK".into(),
                with_callback(""),
                Expect::Status(412),
            ),
            (
                "CALLBACK without brackets".into(),
                with_callback(&format!("http://{LAN1_IP}:{SINK_PORT}/events")),
                Expect::Status(412),
            ),
            (
                "CALLBACK unclosed".into(),
                with_callback(&format!("<http://{LAN1_IP}:{SINK_PORT}/events")),
                Expect::Status(412),
            ),
            (
                "CALLBACK over HTTPS".into(),
                with_callback(&format!("<https://{LAN1_IP}:{SINK_PORT}/events>")),
                Expect::Status(412),
            ),
            (
                "CALLBACK to lan2 (CallStranger)".into(),
                with_callback(&format!("<http://{LAN2_IP}:{SINK_PORT}/events>")),
                Expect::Status(412),
            ),
            (
                "CALLBACK to the internet host".into(),
                with_callback("<http://203.0.114.2:8080/events>"),
                Expect::Status(412),
            ),
            (
                "CALLBACK by name".into(),
                with_callback("<http://lan1.lan:49152/events>"),
                Expect::Status(412),
            ),
            (
                "CALLBACK with user info".into(),
                with_callback(&format!("<http://{LAN1_IP}@203.0.114.2/events>")),
                Expect::Status(412),
            ),
            (
                "lan1's, then lan2's CALLBACK".into(),
                with_callback(&format!("{cb}<http://{LAN2_IP}:{SINK_PORT}/>")),
                Expect::Status(412),
            ),
            (
                "5 CALLBACKs".into(),
                with_callback(&five),
                Expect::Status(412),
            ),
            (
                "200 CALLBACKs".into(),
                with_callback(&many),
                Expect::Status(412),
            ),
            (
                "CALLBACK not text".into(),
                subscribe(&[("CALLBACK", b"<http://\xff\xfe/>"), nt]),
                Expect::Status(412),
            ),
            (
                "NT wrong".into(),
                subscribe(&[("CALLBACK", cb.as_bytes()), ("NT", b"upnp:propchange")]),
                Expect::Status(412),
            ),
            (
                "no NT".into(),
                subscribe(&[("CALLBACK", cb.as_bytes())]),
                Expect::Status(412),
            ),
            (
                "NT twice".into(),
                subscribe(&[("CALLBACK", cb.as_bytes()), nt, nt]),
                Expect::Status(400),
            ),
            (
                "CALLBACK twice".into(),
                subscribe(&[("CALLBACK", cb.as_bytes()), ("CALLBACK", cb.as_bytes()), nt]),
                Expect::Status(400),
            ),
            (
                "SID and CALLBACK".into(),
                subscribe(&[("SID", sid1.as_bytes()), ("CALLBACK", cb.as_bytes())]),
                Expect::Status(400),
            ),
            (
                "SID and NT".into(),
                subscribe(&[("SID", sid1.as_bytes()), nt]),
                Expect::Status(400),
            ),
            (
                "UNSUBSCRIBE with SID and NT".into(),
                unsubscribe(&[("SID", sid1.as_bytes()), nt]),
                Expect::Status(400),
            ),
            (
                "renewal of nobody's SID".into(),
                subscribe(&[("SID", nobody.as_bytes())]),
                Expect::Status(412),
            ),
            (
                "UNSUBSCRIBE of nobody's SID".into(),
                unsubscribe(&[("SID", nobody.as_bytes())]),
                Expect::Status(412),
            ),
            (
                "empty SID".into(),
                subscribe(&[("SID", b"")]),
                Expect::Status(412),
            ),
            (
                "UNSUBSCRIBE without SID".into(),
                unsubscribe(&[]),
                Expect::Status(412),
            ),
            (
                "renewal of lan2's SID".into(),
                subscribe(&[("SID", sid2.as_bytes())]),
                Expect::Status(412),
            ),
            (
                "UNSUBSCRIBE of lan2's SID".into(),
                unsubscribe(&[("SID", sid2.as_bytes())]),
                Expect::Status(412),
            ),
        ];
        let refusals = cases.len() as u64;
        let big = "<http://192.168.1.2/>".repeat(800);
        let many_headers: Vec<(String, String)> = (0..40)
            .map(|i| (format!("X-Header-{i}"), i.to_string()))
            .collect();
        let mut headers: Vec<(&str, &[u8])> = many_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        headers.extend([("CALLBACK", cb.as_bytes()), nt]);
        cases.extend([
            (
                "SUBSCRIBE elsewhere".into(),
                gena_request(
                    "SUBSCRIBE",
                    "/evt/Nothing",
                    &[("CALLBACK", cb.as_bytes()), nt],
                ),
                Expect::Status(404),
            ),
            (
                "a 16 KiB CALLBACK".into(),
                with_callback(&big),
                Expect::Refused,
            ),
            ("40 headers".into(), subscribe(&headers), Expect::Refused),
        ]);
        let before = stats(lab, daemon)?;
        expect_all(lab, &cases, "")?;
        let after = stats(lab, daemon)?;
        let refused = grew(&before, &after, "gena_refused");
        let taken = grew(&before, &after, "gena_subscribed");
        ensure!(
            refused == refusals && taken == 0,
            "expected {refusals} refusals and no subscription counted, got +{refused} and +{taken}"
        );

        // Absurd TIMEOUTs: taken, within the bounds, and given back.
        for timeout in [
            "Second-99999999999999999999".to_string(),
            "Second-0".into(),
            "Second--5".into(),
            "Second-infinite".into(),
            "Minute-5".into(),
            format!("Second-{}", "9".repeat(4000)),
        ] {
            let request = subscribe(&[
                ("CALLBACK", cb.as_bytes()),
                nt,
                ("TIMEOUT", timeout.as_bytes()),
            ]);
            let reply = exchange(lan1, &request)?;
            let granted = reply_header(&reply, "timeout")
                .and_then(|t| t.strip_prefix("Second-")?.parse::<u32>().ok());
            ensure!(
                reply.status == Some(200) && granted.is_some_and(|t| (60..=1800).contains(&t)),
                "TIMEOUT {:.40}: {:?} {granted:?}",
                timeout,
                reply.status
            );
            let sid = reply_header(&reply, "sid").context("no SID")?.to_string();
            let gone = exchange(lan1, &unsubscribe(&[("SID", sid.as_bytes())]))?;
            ensure!(gone.status == Some(200), "UNSUBSCRIBE {sid}: {gone:?}");
        }

        // Floods from five more addresses of lan1's: the first takes PER_HOST + 4, the
        // others PER_HOST each, which is over TOTAL with lan1's and lan2's.
        let flooders: Vec<Ipv4Addr> = (20..25).map(|n| Ipv4Addr::new(192, 168, 1, n)).collect();
        for addr in &flooders {
            lan1.ip(&format!("addr add {addr}/24 dev eth0"))?;
        }
        let before = stats(lab, daemon)?;
        let mut flood = 0;
        for (i, addr) in flooders.iter().enumerate() {
            let count = if i == 0 { PER_HOST + 4 } else { PER_HOST };
            for _ in 0..count {
                subscribed(lan1, *addr, &subscribe_request(*addr, NO_SINK_PORT))?;
                flood += 1;
            }
        }
        let after = stats(lab, daemon)?;
        let evicted = grew(&before, &after, "gena_evicted");
        let held = flood + 2 - evicted as usize;
        eprintln!("{flood} subscriptions from flooders, {evicted} ended to make room");
        ensure!(
            held == TOTAL && grew(&before, &after, "gena_subscribed") == flood as u64,
            "after {flood} subscriptions: {evicted} ended, so {held} held (bound {TOTAL})"
        );
        // The flooders' own made room: lan1's and lan2's stay.
        for (ns, addr, sid) in [(lan1, LAN1_IP, &sid1), (lan2, LAN2_IP, &sid2)] {
            let (status, renewed) = renew(ns, addr, sid)?;
            ensure!(
                status == Some(200) && renewed.as_deref() == Some(sid.as_str()),
                "{addr}'s subscription after the floods: {status:?} {renewed:?}"
            );
        }
        let reply = exchange(lan1, &add_request(LAN1_IP, 9681, 8681))?;
        ensure!(reply.status == Some(200), "AddPortMapping: {reply:?}");
        for (sink, sid) in [(&sink1, &sid1), (&sink2, &sid2)] {
            sink.wait_for(Duration::from_secs(5), |e| {
                e.header("sid") == Some(sid.as_str())
                    && e.variable("PortMappingNumberOfEntries") == Some("1")
            })?;
        }
        Ok(())
    })
}
http_paths!(gena_hostile);
