//! `cargo xtask lab [--keep] [--softwire l2|l3] [--xdp] [--nat444]`: builds a virtual DS-Lite
//! network (with `--nat444`, a home router that masquerades the LAN like fw4), starts
//! portproxy on its CPE, runs the real clients against it, shows what the CGN granted and
//! whether the internet host got through, then removes everything (or, with `--keep`,
//! leaves it up for trying things by hand until Ctrl-C).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use tests::{DataPath, LAN_GATEWAY, LAN1_IP, Lab, Netns, PUBLIC_IP, Softwire, pcp_map_tcp};

#[derive(Parser)]
#[command(about = "Runs portproxy in a virtual DS-Lite network and shows what it relays")]
struct Args {
    /// Leave the lab up and wait for Ctrl-C before removing it.
    #[arg(long)]
    keep: bool,
    /// The CPE-CGN link: l2 (veth) or l3 (TUN devices joined by a forwarder).
    #[arg(long, default_value = "l2", value_name = "l2|l3")]
    softwire: Softwire,
    /// Run portproxy on the eBPF fast path (--xdp).
    #[arg(long)]
    xdp: bool,
    /// Double NAT: the CPE masquerades the LAN out of the softwire like OpenWrt's fw4
    /// (NAT444), so portproxy maps in two halves (the CGN to the CPE, the CPE to the host).
    #[arg(long)]
    nat444: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// One line of the summary.
struct Row {
    client: &'static str,
    asked: String,
    granted: Result<String>,
    reached: Option<Result<String>>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let nat = if args.nat444 { ", NAT444 CPE" } else { "" };
    eprintln!("building the lab ({} softwire{nat}) ...", args.softwire);
    let mut builder = Lab::builder(args.softwire);
    if args.nat444 {
        builder = builder.nat444();
    }
    let lab = builder.build()?;
    let dir = lab.dir().display().to_string();
    let path = if args.xdp {
        DataPath::FastPath
    } else {
        DataPath::Sockets
    };
    let portproxy = match lab.spawn_portproxy_on(
        path,
        &["--lan-iface", "br-lan", "--wan-iface", "softwire", "-vv"],
    ) {
        Ok(portproxy) => Some(portproxy),
        Err(error) => {
            eprintln!("portproxy did not start: {error:#}");
            None
        }
    };
    let ok = match &portproxy {
        Some(_) => {
            let rows = demo(&lab);
            print_table(&rows);
            if let Some(portproxy) = &portproxy {
                print_data_path(&lab, portproxy);
            }
            rows.iter()
                .all(|row| row.granted.is_ok() && row.reached.as_ref().is_none_or(Result::is_ok))
        }
        None => false,
    };
    if args.keep {
        print_keep_help(&lab, &dir, args.nat444);
        while !STOP.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(200));
        }
        eprintln!("removing the lab ...");
    } else if let Some(portproxy) = portproxy.as_ref().filter(|_| !ok) {
        eprintln!("{}", lab.diagnostics());
        eprintln!("=== portproxy log\n{}", portproxy.log());
    }
    drop(portproxy);
    drop(lab);
    if !ok {
        bail!("the demo did not go through; see above");
    }
    Ok(())
}

/// Which data path carried the clients, from `portproxy stats`.
fn print_data_path(lab: &Lab, portproxy: &tests::Daemon) {
    match lab.portproxy_stats(portproxy) {
        Ok(stats) => {
            println!(
                "\nportproxy ran on: {}",
                stats["data_path"].as_str().unwrap_or("?")
            );
            for hook in stats["hooks"].as_array().into_iter().flatten() {
                println!("  hook: {}", hook.as_str().unwrap_or("?"));
            }
            if let Some(reason) = stats["fallback_reason"].as_str() {
                println!("  fell back to sockets: {reason}");
            }
        }
        Err(error) => eprintln!("portproxy stats: {error:#}"),
    }
}

/// Runs each client through portproxy (gateway 192.168.1.1) from lan1.
fn demo(lab: &Lab) -> Vec<Row> {
    let lan1 = lab.lan(1);
    let gateway = LAN_GATEWAY.to_string();
    let host = LAN1_IP.to_string();
    let reach = |internal: u16, external: u16| -> Result<String> {
        let _server = lan1.serve_tcp(internal)?;
        let reply = lab
            .inet()
            .connect_tcp(SocketAddr::from((PUBLIC_IP, external)))?;
        Ok(format!("yes, reached {reply}:{internal}"))
    };
    let mut rows = Vec::new();

    rows.push(Row {
        client: "natpmpc",
        asked: "public address".into(),
        granted: stdout(lan1, "natpmpc", &["-g", &gateway])
            .and_then(|out| find_after(&out, "Public IP address : ")),
        reached: None,
    });
    let granted = stdout(
        lan1,
        "natpmpc",
        &["-g", &gateway, "-a", "9081", "8081", "tcp", "600"],
    )
    .and_then(|out| find_after(&out, "Mapped public port "));
    rows.push(Row {
        client: "natpmpc",
        asked: format!("TCP {host}:8081 as public 9081"),
        reached: Some(match &granted {
            Ok(_) => reach(8081, 9081),
            Err(_) => Err(anyhow::anyhow!("not tried")),
        }),
        // "Mapped public port 9081 protocol TCP to local port 8081 liftime 600"
        granted: granted.map(|g| {
            let words: Vec<_> = g.split_whitespace().collect();
            let port = words.first().copied().unwrap_or("?");
            format!(
                "{PUBLIC_IP}:{port} for {} s",
                words.last().copied().unwrap_or("?")
            )
        }),
    });

    rows.push(Row {
        client: "upnpc",
        asked: "discover the IGD (-s)".into(),
        granted: stdout(lan1, "upnpc", &["-s"]).and_then(|out| {
            let igd = find_after(&out, "Found valid IGD : ")?;
            let ip = find_after(&out, "ExternalIPAddress = ")?;
            Ok(format!("{igd}, external {ip}"))
        }),
        reached: None,
    });
    let granted = stdout(lan1, "upnpc", &["-a", &host, "8082", "9082", "tcp"])
        .and_then(|out| find_after(&out, "is redirected to internal "));
    rows.push(Row {
        client: "upnpc",
        asked: format!("TCP {host}:8082 as public 9082 (-a)"),
        reached: Some(match &granted {
            Ok(_) => reach(8082, 9082),
            Err(_) => Err(anyhow::anyhow!("not tried")),
        }),
        granted: granted.map(|g| format!("{PUBLIC_IP}:9082 -> {g}")),
    });
    rows.push(Row {
        client: "upnpc",
        asked: "list the mappings (-l)".into(),
        granted: stdout(lan1, "upnpc", &["-l"]).map(|out| {
            // Entries look like " 0 TCP  9082->192.168.1.2:8082 'libminiupnpc' '' 0".
            let n = out
                .lines()
                .filter(|line| {
                    line.contains("->")
                        && line.trim_start().starts_with(|c: char| c.is_ascii_digit())
                })
                .count();
            format!("{n} mapping(s) listed")
        }),
        reached: None,
    });

    let granted = pcp_map_tcp(lan1, LAN_GATEWAY, LAN1_IP, 8083, 9083, 600);
    rows.push(Row {
        client: "PCP (crab_nat)",
        asked: format!("MAP TCP {host}:8083, suggesting 9083"),
        reached: Some(match &granted {
            Ok(m) => reach(8083, m.external_port),
            Err(_) => Err(anyhow::anyhow!("not tried")),
        }),
        granted: granted
            .map(|m| format!("{}:{} for {} s", m.external_ip, m.external_port, m.lifetime)),
    });
    rows
}

fn stdout(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    let output = ns.run(program, args)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The rest of the first line of `text` that contains `marker`, after it.
fn find_after(text: &str, marker: &str) -> Result<String> {
    text.lines()
        .find_map(|line| {
            line.split_once(marker)
                .map(|(_, rest)| rest.trim().to_owned())
        })
        .with_context(|| format!("no {marker:?} in the output:\n{text}"))
}

fn print_table(rows: &[Row]) {
    let cell = |result: &Result<String>| match result {
        Ok(text) => text.clone(),
        // The first line of the outermost error keeps the table readable.
        Err(error) => format!("FAILED: {}", error.to_string().lines().next().unwrap_or("")),
    };
    let lines: Vec<[String; 4]> = rows
        .iter()
        .map(|row| {
            [
                row.client.to_owned(),
                row.asked.clone(),
                cell(&row.granted),
                row.reached.as_ref().map_or("-".into(), cell),
            ]
        })
        .collect();
    let header = [
        "client (lan1)",
        "asked",
        "the CGN granted",
        "internet host got through",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for line in &lines {
        for (width, text) in widths.iter_mut().zip(line) {
            *width = (*width).max(text.len());
        }
    }
    let print = |line: &[String; 4]| {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(text, w)| format!("{text:w$}"))
            .collect();
        println!("{}", cells.join(" | ").trim_end());
    };
    println!();
    print(&header);
    println!("{}", widths.map(|w| "-".repeat(w)).join("-+-"));
    lines.iter().for_each(print);
    println!();
}

fn print_keep_help(lab: &Lab, dir: &str, nat444: bool) {
    let name = |ns: &Netns| ns.name().to_owned();
    let lan1 = name(lab.lan(1));
    println!("The lab stays up. In another shell, as root:");
    for ns in lab.namespaces() {
        println!("  ip netns exec {:<24} bash    # {}", ns.name(), ns.role());
    }
    println!();
    println!("  ip netns exec {lan1} natpmpc -g {LAN_GATEWAY}");
    println!("  ip netns exec {lan1} natpmpc -g {LAN_GATEWAY} -a 9090 8090 tcp 600");
    println!("  ip netns exec {lan1} upnpc -l");
    println!("  ip netns exec {lan1} upnpc -a {LAN1_IP} 8091 9091 tcp");
    println!(
        "  ip netns exec {} nft list table inet nat   # the CGN's mappings",
        name(lab.cgn())
    );
    if nat444 {
        println!(
            "  ip netns exec {} nft list table inet portproxy_nat   # the CPE's forwards",
            name(lab.cpe())
        );
    }
    println!("  ip netns exec {lan1} python3 -m http.server 8090   # a service on lan1");
    println!(
        "  ip netns exec {} curl http://{PUBLIC_IP}:9090/   # from the internet",
        name(lab.inet())
    );
    println!();
    println!("Logs: {dir}/portproxy-0.log, {dir}/miniupnpd.log");
    println!("Ctrl-C removes the lab.");
}
