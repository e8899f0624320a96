//! `portproxy map`'s command line.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use clap::{Args, ValueEnum};

use crate::proto::Transport;
use crate::upstream::Via;

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit status: 0 done (mapped with --once, deleted with --delete, or \
    deleted after SIGINT/SIGTERM); 1 another error; 2 bad arguments; 3 no gateway (no default \
    route: give --gateway); 4 nothing answered (no protocol tried answered the gateway, or it \
    stopped answering a delete); 5 the gateway refused (the reason in words)."
)]
pub struct MapOptions {
    /// The port to open on this host, and its protocol (tcp unless /udp).
    #[arg(value_name = "PORT[/tcp|udp]")]
    pub port: PortSpec,

    /// The external port to ask for [default: the same as PORT]; the gateway may grant another.
    #[arg(long, value_name = "PORT", value_parser = port)]
    pub external: Option<u16>,

    /// Seconds the mapping is asked for; it is renewed at half of what the gateway grants.
    #[arg(long, default_value_t = 3600, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub lifetime: u32,

    /// The gateway to ask [default: the default route's gateway, or its tunnel's peer].
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,

    /// Use only this protocol [default: PCP, NAT-PMP, UPnP IGD: the first the gateway speaks].
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub protocol: Option<Protocol>,

    /// Add the mapping, print it with its lifetime, and exit (it expires unless renewed).
    #[arg(long, conflicts_with = "delete")]
    pub once: bool,

    /// Delete the mapping a `--once` made (same PORT, protocol and --external) and exit.
    #[arg(long)]
    pub delete: bool,

    /// One JSON object a line, one line per event, for scripts.
    #[arg(long)]
    pub json: bool,
}

impl MapOptions {
    /// The protocols to try, in order.
    pub fn protocols(&self) -> Vec<Via> {
        match self.protocol {
            Some(p) => vec![p.via()],
            None => vec![Via::Pcp, Via::NatPmp, Via::Upnp],
        }
    }

    /// The external port asked for first.
    pub fn suggested_port(&self) -> u16 {
        self.external.unwrap_or(self.port.port)
    }
}

/// `PORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub port: u16,
    pub transport: Transport,
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<PortSpec, String> {
        let (number, transport) = match s.split_once('/') {
            None => (s, Transport::Tcp),
            Some((n, t)) if t.eq_ignore_ascii_case("tcp") => (n, Transport::Tcp),
            Some((n, t)) if t.eq_ignore_ascii_case("udp") => (n, Transport::Udp),
            Some((_, t)) => return Err(format!("expected tcp or udp after '/', got '{t}'")),
        };
        Ok(PortSpec {
            port: port(number)?,
            transport,
        })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.transport.name())
    }
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Pcp,
    NatPmp,
    Upnp,
}

impl Protocol {
    fn via(self) -> Via {
        match self {
            Protocol::Pcp => Via::Pcp,
            Protocol::NatPmp => Via::NatPmp,
            Protocol::Upnp => Via::Upnp,
        }
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("expected a port number 1-65535, got '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Command, Options};

    fn parse(args: &[&str]) -> Result<MapOptions, clap::Error> {
        let all = ["portproxy", "map"].into_iter().chain(args.iter().copied());
        match Options::try_parse_from(all)?.command {
            Some(Command::Map(opts)) => Ok(opts),
            other => panic!("not a map command: {other:?}"),
        }
    }

    #[test]
    fn a_port_alone_is_tcp_with_defaults() {
        let o = parse(&["8080"]).unwrap();
        assert_eq!(
            o.port,
            PortSpec {
                port: 8080,
                transport: Transport::Tcp
            }
        );
        assert_eq!((o.external, o.lifetime, o.gateway), (None, 3600, None));
        assert!(!o.once && !o.delete && !o.json);
        assert_eq!(o.suggested_port(), 8080);
        assert_eq!(o.protocols(), [Via::Pcp, Via::NatPmp, Via::Upnp]);
    }

    #[test]
    fn every_option() {
        let o = parse(&[
            "5000/UDP",
            "--external",
            "9000",
            "--lifetime",
            "60",
            "--gateway",
            "192.168.1.1",
            "--protocol",
            "nat-pmp",
            "--once",
            "--json",
        ])
        .unwrap();
        assert_eq!(o.port.to_string(), "5000/udp");
        assert_eq!(o.suggested_port(), 9000);
        assert_eq!(o.lifetime, 60);
        assert_eq!(o.gateway, Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(o.protocols(), [Via::NatPmp]);
        assert!(o.once && o.json);
        assert!(
            parse(&["22", "--delete", "--protocol", "upnp"])
                .unwrap()
                .delete
        );
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["0"]).contains("1-65535"));
        assert!(err(&["70000"]).contains("1-65535"));
        assert!(err(&["80/sctp"]).contains("tcp or udp"));
        assert!(err(&["80", "--external", "0"]).contains("1-65535"));
        assert!(err(&["80", "--lifetime", "0"]).contains("lifetime"));
        assert!(err(&["80", "--once", "--delete"]).contains("cannot be used with"));
        assert!(err(&["80", "--protocol", "smtp"]).contains("pcp"));
        assert!(err(&["80", "--gateway", "router"]).contains("gateway"));
        assert!(err(&[]).contains("PORT"));
    }
}
