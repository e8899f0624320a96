//! The CGN (AFTR): nftables NAT for the subscriber and miniupnpd serving NAT-PMP, PCP and
//! UPnP IGD to it over the softwire.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};

use crate::{Daemon, IGD_HTTP_PORT, Netns, PCP_PORT};

/// What the lab's CGN speaks to its subscribers: everything miniupnpd does, or one protocol,
/// like the CGNs users have (a DS-Lite AFTR offers PCP only, an older carrier box NAT-PMP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgnKind {
    /// NAT-PMP, PCP and UPnP IGD.
    Everything,
    /// PCP only: NAT-PMP requests (version 0) are dropped before miniupnpd sees them.
    PcpOnly,
    /// NAT-PMP only: PCP requests (any version but 0) are dropped.
    NatPmpOnly,
    /// UPnP IGD only (miniupnpd's NAT-PMP/PCP off), as IGD:2 (with AddAnyPortMapping).
    UpnpOnly,
    /// UPnP IGD only, describing itself as IGD:1 (no AddAnyPortMapping), as many do.
    UpnpIgd1Only,
}

impl CgnKind {
    fn port_control(self) -> bool {
        !matches!(self, CgnKind::UpnpOnly | CgnKind::UpnpIgd1Only)
    }

    fn upnp(self) -> bool {
        matches!(
            self,
            CgnKind::Everything | CgnKind::UpnpOnly | CgnKind::UpnpIgd1Only
        )
    }

    /// The nftables input filter that silences one of NAT-PMP and PCP: miniupnpd's
    /// `enable_natpmp` covers both. The first payload byte (`@th,64,8`) is the version.
    /// Written on several lines: the one-line form with `priority -10;` fails to parse.
    fn filter(self) -> Option<&'static str> {
        match self {
            CgnKind::PcpOnly => Some(
                "table inet cgn_speaks {
    chain input {
        type filter hook input priority -10; policy accept;
        udp dport 5351 @th,64,8 0 drop
    }
}
",
            ),
            CgnKind::NatPmpOnly => Some(
                "table inet cgn_speaks {
    chain input {
        type filter hook input priority -10; policy accept;
        udp dport 5351 @th,64,8 != 0 drop
    }
}
",
            ),
            CgnKind::Everything | CgnKind::UpnpOnly | CgnKind::UpnpIgd1Only => None,
        }
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How the lab's miniupnpd is configured (kept by the lab to restart it alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Miniupnpd {
    /// Seconds between SSDP NOTIFYs.
    pub notify_interval: u32,
    pub kind: CgnKind,
    /// The longest PCP lifetime it grants (`max_lifetime`; `None`: miniupnpd's day).
    /// NAT-PMP lifetimes are the client's.
    pub pcp_max_lifetime: Option<u32>,
}

/// Masquerades the subscriber out of `wan0`, plus the empty chains miniupnpd fills.
/// miniupnpd needs its NAT table to be `inet` (with `ip` every add fails: "send_batch failed").
const RULESET: &str = r#"
table inet filter {
    chain miniupnpd {
    }
    chain forward {
        type filter hook forward priority 0; policy accept;
        jump miniupnpd
    }
}
table inet nat {
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "wan0" ip saddr { 192.168.1.0/24, 192.0.0.0/29 } masquerade
    }
}
"#;

/// Installs the CGN's nftables ruleset, with the filter of `kind` if it has one.
pub(crate) fn install_ruleset(cgn: &Netns, dir: &Path, kind: CgnKind) -> Result<()> {
    let path = dir.join("cgn.nft");
    let ruleset = format!("{RULESET}{}", kind.filter().unwrap_or_default());
    std::fs::write(&path, ruleset).with_context(|| format!("writing {path:?}"))?;
    cgn.run("nft", &["-f", &path.to_string_lossy()])?;
    Ok(())
}

/// miniupnpd's configuration.
///
/// Why `listening_ip=softwire/8`: miniupnpd 2.3.1 serves only clients inside one of its
/// `listening_ip` networks (address & mask); it ignores NAT-PMP, PCP and SSDP from other
/// sources and closes their HTTP connections ("not from a LAN"). It binds its NAT-PMP/PCP
/// socket to the listening address (192.0.0.1:5351) and its SSDP socket to the interface,
/// and multicasts NOTIFY from that address. The AFTR has to serve two networks, both
/// arriving on the softwire: the LAN hosts (192.168.1.0/24) for NAT-PMP/PCP, which the B4
/// relays with their source preserved, and the B4 itself (192.0.0.2) for SSDP and HTTP.
/// A second `listening_ip` for the LAN needs a CGN address inside 192.168.1.0/24 (without
/// one miniupnpd exits: IP_MULTICAST_IF fails), and such an address would take over the
/// route to the subscriber. So the softwire's network is widened to /8, the shortest
/// prefix holding both 192.0.0.0/29 and 192.168.1.0/24; the internet side (203.0.114.0/24)
/// stays outside. Naming the interface (rather than the address, which only draws a
/// warning) binds SSDP to it, and works for the veth and the TUN (`192.0.0.1 peer
/// 192.0.0.2`, a /32) alike.
///
/// No `ext_ip`: miniupnpd takes the external address from `wan0`, so a new one there
/// (`Lab::change_public_address`) is what it grants and announces after a SIGUSR1.
///
/// Files miniupnpd writes by default (/var/run/miniupnpd.pid, which also makes a second
/// instance exit with "already running", and its lease file) go to the lab's directory.
///
/// With `pcp_max_lifetime`, `min_lifetime` goes down with it (miniupnpd wants it below the
/// maximum; its default is 120 s).
fn config(dir: &Path, options: Miniupnpd) -> String {
    let Miniupnpd {
        notify_interval,
        kind,
        pcp_max_lifetime,
    } = options;
    let dir = dir.display();
    let lifetimes = pcp_max_lifetime.map_or_else(String::new, |max| {
        format!("min_lifetime={}\nmax_lifetime={max}\n", max / 2)
    });
    let yes = |on: bool| if on { "yes" } else { "no" };
    let (natpmp, upnp) = (yes(kind.port_control()), yes(kind.upnp()));
    let igd1 = yes(kind == CgnKind::UpnpIgd1Only);
    format!(
        "ext_ifname=wan0
listening_ip=softwire/8
http_port={IGD_HTTP_PORT}
enable_natpmp={natpmp}
enable_upnp={upnp}
force_igd_desc_v1={igd1}
secure_mode=no
pcp_allow_thirdparty=yes
{lifetimes}notify_interval={notify_interval}
lease_file={dir}/miniupnpd.leases
minissdpdsocket={dir}/minissdpd.sock
upnp_table_name=filter
upnp_nat_table_name=nat
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 192.168.1.0/24 1024-65535
allow 1024-65535 192.0.0.0/29 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"
    )
}

/// Starts miniupnpd in the foreground in `cgn` and waits until the NAT-PMP/PCP, SSDP and
/// HTTP sockets `kind` needs exist.
pub(crate) fn start_miniupnpd(cgn: &Netns, dir: &Path, options: Miniupnpd) -> Result<Daemon> {
    let kind = options.kind;
    let conf = dir.join("miniupnpd.conf");
    std::fs::write(&conf, config(dir, options)).with_context(|| format!("writing {conf:?}"))?;
    let mut cmd = cgn.command("miniupnpd");
    cmd.arg("-d")
        .arg("-f")
        .arg(&conf)
        .arg("-P")
        .arg(dir.join("miniupnpd.pid"));
    let mut daemon = Daemon::spawn("miniupnpd", cmd, dir.join("miniupnpd.log"))?;
    daemon.wait_ready(READY_TIMEOUT, |d| {
        let net = format!("/proc/{}/net", d.pid());
        let udp = read(&format!("{net}/udp"));
        let tcp = read(&format!("{net}/tcp")) + &read(&format!("{net}/tcp6"));
        (!kind.port_control() || bound(&udp, PCP_PORT, None))
            && (!kind.upnp() || (bound(&udp, 1900, None) && bound(&tcp, IGD_HTTP_PORT, Some("0A"))))
    })?;
    Ok(daemon)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether a /proc/net/{udp,tcp,tcp6} table has a socket on local `port` (in `state`).
fn bound(table: &str, port: u16, state: Option<&str>) -> bool {
    let port = format!("{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<_> = line.split_whitespace().collect();
        fields.get(1).and_then(|local| local.rsplit(':').next()) == Some(&port)
            && state.is_none_or(|state| fields.get(3) == Some(&state))
    })
}
