//! Command-line options. The names follow the original 2009 portproxy so that
//! existing init scripts keep working; `--xdp` and `--timeout` are new.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::mapping::Key;

/// Set to 1 to keep `--xdp` off the kernel path, as on a kernel without BPF
/// (tests use it to cover the fallback).
pub const FORCE_SOCKETS_ENV: &str = "PORTPROXY_FORCE_SOCKETS";

/// Where the mapping table is saved unless told otherwise: kept across reboots.
pub const DEFAULT_MAPPINGS_FILE: &str = "/var/lib/portproxy/mappings.json";

/// Where the manual forwards are kept unless told otherwise: next to the mapping table.
pub const DEFAULT_FORWARDS_FILE: &str = "/var/lib/portproxy/forwards.json";

/// Where the fast path pins its maps unless told otherwise (`bpftool map dump pinned .../CLIENTS`).
/// The option exists in the socket-only build too, so one command line fits both builds.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portproxy";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "portproxy",
    version,
    about = "Carries NAT-PMP, PCP and UPnP (SSDP, HTTP) from the LAN to the carrier-grade NAT behind a DS-Lite softwire, answering what the CGN does not speak",
    after_help = "Addresses default from the interfaces; the CGN address from the default route through \
                  the WAN interface, or the tunnel's peer address."
)]
pub struct Options {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// LAN interface (the bridge the clients are on).
    #[arg(long, default_value = "br-lan", value_name = "IFACE")]
    pub lan_iface: String,

    /// WAN interface: the softwire towards the CGN (ipip6 tunnel or Ethernet).
    #[arg(long, default_value = "eth0.1", value_name = "IFACE")]
    pub wan_iface: String,

    /// LAN address to listen on [default: the LAN interface's first IPv4 address].
    #[arg(short = 'l', long = "lan-addr", value_name = "ADDR")]
    pub lan_addr: Option<Ipv4Addr>,

    /// WAN address to send from [default: the WAN interface's first IPv4 address].
    #[arg(short = 'w', long = "wan-addr", value_name = "ADDR")]
    pub wan_addr: Option<Ipv4Addr>,

    /// CGN address [default: the gateway of the default route via the WAN interface, or its peer].
    #[arg(short = 'n', long = "cgn-addr", value_name = "ADDR")]
    pub cgn_addr: Option<Ipv4Addr>,

    /// Relay NAT-PMP and PCP (UDP 5351).
    #[arg(long, default_value = "1", value_name = "0|1", value_parser = flag, action = clap::ArgAction::Set)]
    pub nat_pmp: bool,

    /// Relay SSDP discovery (UDP 1900).
    #[arg(long, default_value = "1", value_name = "0|1", value_parser = flag, action = clap::ArgAction::Set)]
    pub upnp_udp: bool,

    /// Relay UPnP HTTP/SOAP to the CGN's IGD at the LAN address and point SSDP LOCATION there.
    #[arg(long, default_value = "0", value_name = "0|1", value_parser = flag, action = clap::ArgAction::Set)]
    pub upnp_tcp: bool,

    #[arg(long, default_value_t = 5351, value_name = "PORT", value_parser = port)]
    /// NAT-PMP/PCP port on both sides.
    pub nat_pmp_port: u16,

    /// SSDP port on both sides.
    #[arg(long, default_value_t = 1900, value_name = "PORT", value_parser = port)]
    pub upnp_udp_port: u16,

    /// First TCP port relayed to the CGN's IGD (further ports seen in LOCATION are relayed on demand).
    #[arg(long, default_value_t = 5000, value_name = "PORT", value_parser = port)]
    pub upnp_tcp_port1: u16,

    /// Second TCP port relayed to the CGN's IGD.
    #[arg(long, default_value_t = 2869, value_name = "PORT", value_parser = port)]
    pub upnp_tcp_port2: u16,

    /// Seconds a relayed request's state waits for replies after the client's last request.
    #[arg(long = "timeout", default_value = "60", value_name = "SECS", value_parser = seconds)]
    pub pending_timeout: Duration,

    /// Clients (address and port) with a request in flight at once; more are dropped and
    /// counted. On the fast path, the size of the CLIENTS map (about 100 bytes an entry).
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_clients: u32,

    /// Requests and searches per second one LAN host may send on average (bursts of twice
    /// that), and 64 requests in flight per host; more are dropped and counted, so one host
    /// cannot starve the others. 0 turns both limits off.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub rate_limit: u32,

    /// Firewall holes for granted mappings: auto (when a forward chain drops by default),
    /// nft (always), off. See the README's firewall section.
    #[arg(long, value_enum, default_value_t = FirewallMode::Auto, value_name = "MODE")]
    pub firewall: FirewallMode,

    /// Mappings the table (and the firewall) holds at once; relayed grants beyond get no hole
    /// (counted), requests portproxy answers itself are refused.
    #[arg(long, default_value_t = 1024, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_mappings: u32,

    /// Mappings one LAN host may hold at once; beyond, as for --max-mappings.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_mappings_per_host: u32,

    /// NAT-PMP and PCP: auto (relay what the CGN speaks, answer the other protocol here and
    /// map it with the one the CGN speaks), relay (relay both as they are), proxy (answer
    /// both here). The CGN is probed at start and after every interface change.
    #[arg(long, value_enum, default_value_t = Mode::Auto, value_name = "MODE")]
    pub mode: Mode,

    /// Double NAT (NAT444, or a router behind the provider's): auto (when the nftables
    /// ruleset masquerades or SNATs traffic leaving the WAN interface), on, off. With it,
    /// NAT-PMP, PCP and UPnP are answered here, and each mapping is a DNAT on this router
    /// plus a mapping of its WAN address at the CGN. See the README's double-NAT section.
    #[arg(long, value_enum, default_value_t = DoubleNat::Auto, value_name = "MODE")]
    pub double_nat: DoubleNat,

    /// Use the eBPF fast path (XDP/TC) where the kernel allows it; falls back to sockets otherwise.
    #[arg(long)]
    pub xdp: bool,

    /// Fast path hook layout: tc (TC only; the fastest in `cargo xtask bench`), auto (XDP in
    /// front of TC where it fits, native where the driver allows), generic (the same with XDP
    /// in skb mode).
    #[arg(long, value_enum, default_value_t = Hooks::Tc, value_name = "LAYOUT")]
    pub hooks: Hooks,

    /// Where the mapping table is kept across restarts and reboots (written only when it
    /// changed, at most every 10 s; see the README).
    #[arg(long, default_value = DEFAULT_MAPPINGS_FILE, value_name = "FILE")]
    pub mappings_file: PathBuf,

    /// Where the manual forwards (`portproxy forward`) are kept: written at every change.
    #[arg(long, default_value = DEFAULT_FORWARDS_FILE, value_name = "FILE")]
    pub forwards_file: PathBuf,

    /// The JSON API and the web page on the LAN address (never on the WAN side): 1 on, 0 off.
    #[arg(long, default_value = "1", value_name = "0|1", value_parser = flag, action = clap::ArgAction::Set)]
    pub api: bool,

    /// TCP port of the API and the web page on the LAN address.
    #[arg(long, default_value_t = 8351, value_name = "PORT", value_parser = port)]
    pub api_port: u16,

    /// File whose first line is the password that allows changes through the API and the
    /// page (log in, delete a mapping); without it both are read-only.
    #[arg(long, value_name = "FILE")]
    pub api_password_file: Option<PathBuf>,

    /// Names the API answers to besides the LAN address (comma-separated, say openwrt.lan);
    /// a request naming another host is refused, so a web site cannot rebind its name to
    /// the router and read or change it.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub api_hosts: Vec<String>,

    /// DHCP leases (dnsmasq's format) that give LAN hosts their names on the page.
    #[arg(long, default_value = "/tmp/dhcp.leases", value_name = "FILE")]
    pub leases_file: PathBuf,

    /// Where the fast path pins its maps (on a BPF filesystem, mounted if needed).
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR", global = true)]
    pub pin_dir: PathBuf,

    /// Where the daemon keeps its status file (`portproxy stats`) and control socket
    /// (`portproxy mappings`, `portproxy forward`).
    #[arg(
        long,
        default_value = "/run/portproxy",
        value_name = "DIR",
        global = true
    )]
    pub state_dir: PathBuf,

    /// More output: -v configuration and counters, -vv one line per relayed packet.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Options {
    /// What clap cannot check alone: options that contradict each other.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.lan_iface == self.wan_iface {
            anyhow::bail!(
                "--lan-iface and --wan-iface are both '{}'; they must differ",
                self.lan_iface
            );
        }
        Ok(())
    }
}

/// Whether portproxy opens the CPE's firewall for granted mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirewallMode {
    Auto,
    Nft,
    Off,
}

/// Who answers NAT-PMP and PCP clients: the CGN (relayed) or portproxy (served).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Auto,
    Relay,
    Proxy,
}

/// Whether this router translates the LAN itself, so mappings need a local half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DoubleNat {
    Auto,
    On,
    Off,
}

/// Which hooks the fast path uses (TC always carries what XDP does not finish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Hooks {
    Tc,
    Auto,
    Generic,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Show the running daemon's data path, hooks, live client entries and counters.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the mappings the running daemon knows: LAN host, external port, expiry, origin.
    Mappings {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Open PORT on this host at its gateway (PCP, NAT-PMP or UPnP IGD) and keep it open
    /// until interrupted; works on any Linux host, without root.
    #[cfg(feature = "map-client")]
    Map(crate::map::MapOptions),
    /// Manage the running daemon's manual forwards (kept at the CGN until deleted).
    #[command(subcommand)]
    Forward(ForwardCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum ForwardCommand {
    /// Forward a LAN host's port from the internet: HOST:PORT/PROTO, e.g. 192.168.1.2:8080/tcp.
    Add {
        #[arg(value_name = "HOST:PORT/PROTO")]
        target: Key,
        /// The external port wanted: that port or none (the forward fails if the CGN cannot
        /// give it), or any.
        #[arg(long, default_value = "any", value_name = "PORT|any", value_parser = external_port)]
        external: External,
        /// What it is for, shown in the lists (at most 256 bytes).
        #[arg(long, default_value = "", value_name = "TEXT")]
        description: String,
    },
    /// Show the forwards with their status: active (the external address and port),
    /// pending, or failed and why.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a forward's external port or description: HOST:PORT/PROTO.
    Change {
        #[arg(value_name = "HOST:PORT/PROTO")]
        target: Key,
        /// The external port wanted from now on, or any.
        #[arg(long, value_name = "PORT|any", value_parser = external_port)]
        external: Option<External>,
        /// Its new description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Delete a forward (at the CGN and its firewall hole too): HOST:PORT/PROTO.
    #[command(visible_alias = "delete")]
    Del {
        #[arg(value_name = "HOST:PORT/PROTO")]
        target: Key,
    },
}

fn flag(s: &str) -> Result<bool, String> {
    match s {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("expected 0 or 1, got '{s}'")),
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("expected a port number 1-65535, got '{s}'")),
    }
}

/// A forward's external port: that one, or (`None`) any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct External(pub Option<u16>);

fn external_port(s: &str) -> Result<External, String> {
    match s {
        "any" => Ok(External(None)),
        _ => port(s)
            .map(|p| External(Some(p)))
            .map_err(|e| format!("{e}, or any")),
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(n @ 1..=3600) => Ok(Duration::from_secs(n)),
        _ => Err(format!("expected seconds between 1 and 3600, got '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("portproxy").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_original() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.lan_iface.as_str(), o.wan_iface.as_str()),
            ("br-lan", "eth0.1")
        );
        assert!(o.nat_pmp && o.upnp_udp && !o.upnp_tcp && !o.xdp);
        assert_eq!((o.nat_pmp_port, o.upnp_udp_port), (5351, 1900));
        assert_eq!(o.pending_timeout, Duration::from_secs(60));
        assert_eq!(o.verbose, 0);
        assert!(o.command.is_none());
        assert_eq!(o.pin_dir, PathBuf::from("/sys/fs/bpf/portproxy"));
        assert_eq!(o.hooks, Hooks::Tc);
        assert_eq!(o.mode, Mode::Auto);
        assert_eq!(o.double_nat, DoubleNat::Auto);
        assert_eq!(
            parse(&["--double-nat", "on"]).unwrap().double_nat,
            DoubleNat::On
        );
        assert!(parse(&["--double-nat", "yes"]).is_err());
        assert!(o.api && o.api_password_file.is_none() && o.api_hosts.is_empty());
        assert_eq!(o.api_port, 8351);
    }

    #[test]
    fn api_host_names_are_a_list() {
        let o = parse(&["--api-hosts", "openwrt.lan,router"]).unwrap();
        assert_eq!(o.api_hosts, ["openwrt.lan", "router"]);
    }

    #[test]
    fn stats_subcommand_shares_the_directories() {
        let o = parse(&["stats", "--json", "--state-dir", "/tmp/x"]).unwrap();
        assert!(matches!(o.command, Some(Command::Stats { json: true })));
        assert_eq!(o.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn forward_subcommands() {
        let o = parse(&[
            "forward",
            "add",
            "192.168.1.2:8080/tcp",
            "--external",
            "9080",
            "--description",
            "web",
        ])
        .unwrap();
        let Some(Command::Forward(ForwardCommand::Add {
            target,
            external,
            description,
        })) = o.command
        else {
            panic!("{:?}", o.command);
        };
        assert_eq!(target.to_string(), "192.168.1.2:8080/tcp");
        assert_eq!(
            (external, description.as_str()),
            (External(Some(9080)), "web")
        );
        let o = parse(&["forward", "add", "192.168.1.3:53/UDP"]).unwrap();
        assert!(matches!(
            o.command,
            Some(Command::Forward(ForwardCommand::Add {
                external: External(None),
                ..
            }))
        ));
        let o = parse(&["forward", "del", "192.168.1.3:53/udp"]).unwrap();
        assert!(matches!(
            o.command,
            Some(Command::Forward(ForwardCommand::Del { .. }))
        ));
        let o = parse(&["forward", "list", "--json"]).unwrap();
        assert!(matches!(
            o.command,
            Some(Command::Forward(ForwardCommand::List { json: true }))
        ));
        for (args, expected) in [
            (&["forward", "add", "192.168.1.2:0/tcp"][..], "1-65535"),
            (&["forward", "add", "192.168.1.2:80/sctp"], "tcp or udp"),
            (&["forward", "add", "192.168.1.2/tcp"], "HOST:PORT/PROTO"),
            (&["forward", "add", "lan1:80/tcp"], "not an IPv4 address"),
            (
                &["forward", "add", "192.168.1.2:80/tcp", "--external", "0"],
                "or any",
            ),
            (&["forward", "del"], "HOST:PORT/PROTO"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn original_short_options() {
        let o = parse(&[
            "-l",
            "192.168.1.1",
            "-w",
            "192.0.0.2",
            "-n",
            "192.0.0.1",
            "-vv",
            "--upnp-tcp",
            "1",
        ])
        .unwrap();
        assert_eq!(o.lan_addr, Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(o.wan_addr, Some(Ipv4Addr::new(192, 0, 0, 2)));
        assert_eq!(o.cgn_addr, Some(Ipv4Addr::new(192, 0, 0, 1)));
        assert_eq!(o.verbose, 2);
        assert!(o.upnp_tcp);
    }

    #[test]
    fn bad_values_are_rejected_with_the_reason() {
        let err = parse(&["--nat-pmp", "2"]).unwrap_err().to_string();
        assert!(err.contains("expected 0 or 1"), "{err}");
        assert!(
            parse(&["--nat-pmp-port", "0"])
                .unwrap_err()
                .to_string()
                .contains("1-65535")
        );
        assert!(parse(&["-l", "192.168.1"]).is_err());
        assert!(
            parse(&["--timeout", "0"])
                .unwrap_err()
                .to_string()
                .contains("between 1 and 3600")
        );
        assert!(parse(&["--bogus"]).is_err());
        let err = parse(&["--lan-iface", "x", "--wan-iface", "x"])
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("must differ"), "{err}");
    }
}
