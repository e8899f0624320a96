//! A UPnP IGD on the LAN address: RFC 6970's interworking function. When the CGN does not
//! speak UPnP (or `--mode proxy`), LAN control points (games, consoles, torrent clients)
//! find portproxy as their gateway's IGD: it answers their SSDP searches (`ssdp`, through
//! the SSDP socket of `relay::ssdp`), serves IGD:1 and IGD:2 descriptions and SOAP control
//! (`http`, `description`) and carries out each action at the CGN in PCP or NAT-PMP
//! (`control`, through `Mapper`), keeping long leases alive there. Subscribers to its
//! services' events are told of a new external address or mapping count (`events`).

mod control;
mod description;
mod events;
mod http;
mod ssdp;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;

use self::control::Control;
pub use self::events::Events;
use super::Mapper;
use crate::clock::boot_time;
use crate::config::Config;
use crate::relay::Tasks;
use crate::sockets;
use crate::stats::{Counter, Stats};

/// This build has the IGD server (see `no_igd.rs` for one without).
pub const NO_IGD_SERVER: Option<&str> = None;

/// How often leases are looked at for renewal at the CGN.
const RENEW_CHECK: Duration = Duration::from_secs(5);

pub struct IgdServer {
    control: Control,
    /// GENA subscriptions and their events.
    events: Arc<Events>,
    stats: Arc<Stats>,
    /// The root devices of IGD:1 and IGD:2.
    uuids: [String; 2],
    targets: Vec<ssdp::Target>,
    /// BOOTID.UPNP.ORG: changes when the device (re)appears.
    boot_id: u32,
}

impl IgdServer {
    /// The IGD on the data path of `mapper`; `events` (the daemon's) carries its
    /// subscriptions over from the data path before.
    pub fn new(
        mapper: Arc<Mapper>,
        events: Arc<Events>,
        netlink: rtnetlink::Handle,
        stats: Arc<Stats>,
    ) -> IgdServer {
        let cfg = mapper.config();
        let uuids = [uuid(cfg, 1), uuid(cfg, 2)];
        let targets = ssdp::targets([&uuids[0], &uuids[1]], cfg.lan.addr, cfg.http_ports[0]);
        let boot_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32 & 0x7fff_ffff);
        events.serve(mapper.clone());
        IgdServer {
            events,
            control: Control {
                mapper,
                started: boot_time(),
                netlink,
            },
            stats,
            uuids,
            targets,
            boot_id,
        }
    }

    fn config(&self) -> &Config {
        self.control.mapper.config()
    }

    /// Binds the HTTP port on the LAN address (before "ready", so a port in use fails
    /// the start).
    pub fn bind(&self) -> Result<TcpListener> {
        let cfg = self.config();
        let port = cfg.http_ports[0];
        let addr = std::net::SocketAddrV4::new(cfg.lan.addr, port);
        sockets::tcp_listener(&cfg.lan, port)
            .map_err(|e| sockets::explain_bind(e, "UPnP IGD", addr, "--upnp-udp"))
            .with_context(|| format!("the IGD on {}", cfg.lan.iface))
    }

    /// Serves HTTP on `listener` and keeps leases alive at the CGN, until cancelled.
    pub async fn run(self: Arc<Self>, listener: TcpListener, tasks: Tasks) -> Result<()> {
        let renewing = {
            let igd = self.clone();
            async move {
                loop {
                    tokio::time::sleep(RENEW_CHECK).await;
                    igd.control.renew().await;
                }
            }
        };
        tokio::select! {
            result = http::serve(self, listener, tasks) => result,
            () = renewing => unreachable!("the renewal loop does not end"),
        }
    }

    fn is_lan_host(&self, ip: Ipv4Addr) -> bool {
        let cfg = self.config();
        crate::mapping::is_lan_host(ip, &cfg.lan, &[cfg.lan.addr, cfg.wan.addr])
    }

    fn description(&self, version: u8) -> String {
        description::document(version, &self.uuids[usize::from(version == 2)])
    }

    /// The answers to a search for `st` (none when it is not for an IGD).
    pub fn answers(&self, st: &str) -> Vec<String> {
        let answers: Vec<String> = ssdp::matching(&self.targets, st)
            .map(|t| ssdp::response(t, st, self.boot_id))
            .collect();
        if !answers.is_empty() {
            self.stats.add(Counter::SearchAnswered);
        }
        answers
    }

    /// Every NOTIFY: ssdp:alive, or ssdp:byebye.
    pub fn notifies(&self, alive: bool) -> Vec<String> {
        let port = self.config().ssdp_port;
        self.targets
            .iter()
            .map(|t| ssdp::notify(t, alive, self.boot_id, port))
            .collect()
    }

    /// How often the NOTIFY alive go out: twice per validity.
    pub fn notify_interval() -> Duration {
        Duration::from_secs(ssdp::MAX_AGE_SECS / 2)
    }
}

/// A UUID for the IGD of `version`, the same at every start on the same LAN (interface
/// name and address), so control points recognise the device they knew.
fn uuid(cfg: &Config, version: u8) -> String {
    let seed = format!("portproxy igd:{version} {} {}", cfg.lan.iface, cfg.lan.addr);
    // FNV-1a, twice with different offsets, for 128 bits.
    let fnv = |offset: u64| {
        seed.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    uuid_of(fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4))
}

/// The UUID of 128 bits `a` and `b`, with version 4 and variant bits set, so it looks like
/// any other UUID to a strict parser.
fn uuid_of(a: u64, b: u64) -> String {
    let a = (a & !0xf000) | 0x4000;
    let b = (b & !(0xc << 60)) | (0x8 << 60);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// The actions and state variables only WANIPConnection:2 has (the control answers them
/// only for :2, with 401 Invalid Action for :1).
const IP_CONNECTION_V2_ONLY: [&str; 5] = [
    "AddAnyPortMapping",
    "DeletePortMappingRange",
    "GetListOfPortMappings",
    "A_ARG_TYPE_Manage",
    "A_ARG_TYPE_PortListing",
];

/// WANIPConnection's service description of `version`: the actions the IGD answers for it.
/// Control points read it to choose: igd-next (iroh's port mapper), for one, calls
/// AddAnyPortMapping when the SCPD lists it, and falls back to AddPortMapping only when not.
fn ip_connection_scpd(version: u8) -> String {
    const PORT: &str = "ExternalPort";
    const PROTO: &str = "PortMappingProtocol";
    let entry: &[description::Argument] = &[
        ("NewInternalPort", true, "InternalPort"),
        ("NewInternalClient", true, "InternalClient"),
        ("NewEnabled", true, "PortMappingEnabled"),
        ("NewPortMappingDescription", true, "PortMappingDescription"),
        ("NewLeaseDuration", true, "PortMappingLeaseDuration"),
    ];
    let add: &[description::Argument] = &[
        ("NewRemoteHost", false, "RemoteHost"),
        ("NewExternalPort", false, PORT),
        ("NewProtocol", false, PROTO),
        ("NewInternalPort", false, "InternalPort"),
        ("NewInternalClient", false, "InternalClient"),
        ("NewEnabled", false, "PortMappingEnabled"),
        ("NewPortMappingDescription", false, "PortMappingDescription"),
        ("NewLeaseDuration", false, "PortMappingLeaseDuration"),
    ];
    let mut any = add.to_vec();
    any.push(("NewReservedPort", true, PORT));
    let specific: Vec<_> = [
        ("NewRemoteHost", false, "RemoteHost"),
        ("NewExternalPort", false, PORT),
        ("NewProtocol", false, PROTO),
    ]
    .into_iter()
    .chain(entry.iter().copied())
    .collect();
    let mut generic = vec![("NewPortMappingIndex", false, "PortMappingNumberOfEntries")];
    generic.extend(add.iter().map(|&(n, _, v)| (n, true, v)));
    let range: &[description::Argument] = &[
        ("NewStartPort", false, PORT),
        ("NewEndPort", false, PORT),
        ("NewProtocol", false, PROTO),
        ("NewManage", false, "A_ARG_TYPE_Manage"),
    ];
    let mut list = range.to_vec();
    list.push(("NewNumberOfPorts", false, "PortMappingNumberOfEntries"));
    list.push(("NewPortListing", true, "A_ARG_TYPE_PortListing"));
    let actions: &[(&str, &[description::Argument])] = &[
        ("AddPortMapping", add),
        ("AddAnyPortMapping", &any),
        ("DeletePortMapping", &add[..3]),
        ("DeletePortMappingRange", range),
        ("GetSpecificPortMappingEntry", &specific),
        ("GetGenericPortMappingEntry", &generic),
        ("GetListOfPortMappings", &list),
        (
            "GetExternalIPAddress",
            &[("NewExternalIPAddress", true, "ExternalIPAddress")],
        ),
        (
            "GetStatusInfo",
            &[
                ("NewConnectionStatus", true, "ConnectionStatus"),
                ("NewLastConnectionError", true, "LastConnectionError"),
                ("NewUptime", true, "Uptime"),
            ],
        ),
        (
            "GetConnectionTypeInfo",
            &[
                ("NewConnectionType", true, "ConnectionType"),
                (
                    "NewPossibleConnectionTypes",
                    true,
                    "PossibleConnectionTypes",
                ),
            ],
        ),
        (
            "GetNATRSIPStatus",
            &[
                ("NewRSIPAvailable", true, "RSIPAvailable"),
                ("NewNATEnabled", true, "NATEnabled"),
            ],
        ),
    ];
    let variables: &[description::Variable] = &[
        ("ExternalIPAddress", "string", true),
        ("PortMappingNumberOfEntries", "ui2", true),
        ("RemoteHost", "string", false),
        (PORT, "ui2", false),
        (PROTO, "string", false),
        ("InternalPort", "ui2", false),
        ("InternalClient", "string", false),
        ("PortMappingEnabled", "boolean", false),
        ("PortMappingDescription", "string", false),
        ("PortMappingLeaseDuration", "ui4", false),
        ("ConnectionStatus", "string", true),
        ("LastConnectionError", "string", false),
        ("Uptime", "ui4", false),
        ("ConnectionType", "string", false),
        ("PossibleConnectionTypes", "string", false),
        ("RSIPAvailable", "boolean", false),
        ("NATEnabled", "boolean", false),
        ("A_ARG_TYPE_Manage", "boolean", false),
        ("A_ARG_TYPE_PortListing", "string", false),
    ];
    let v2_only = |name: &str| version != 2 && IP_CONNECTION_V2_ONLY.contains(&name);
    let actions: Vec<_> = actions
        .iter()
        .copied()
        .filter(|(name, _)| !v2_only(name))
        .collect();
    let variables: Vec<_> = variables
        .iter()
        .copied()
        .filter(|(name, ..)| !v2_only(name))
        .collect();
    description::scpd(&actions, &variables)
}

/// WANCommonInterfaceConfig's service description.
fn common_if_scpd() -> String {
    let one = |arg, var| vec![(arg, true, var)];
    description::scpd(
        &[
            (
                "GetCommonLinkProperties",
                &[
                    ("NewWANAccessType", true, "WANAccessType"),
                    (
                        "NewLayer1UpstreamMaxBitRate",
                        true,
                        "Layer1UpstreamMaxBitRate",
                    ),
                    (
                        "NewLayer1DownstreamMaxBitRate",
                        true,
                        "Layer1DownstreamMaxBitRate",
                    ),
                    ("NewPhysicalLinkStatus", true, "PhysicalLinkStatus"),
                ],
            ),
            (
                "GetTotalBytesSent",
                &one("NewTotalBytesSent", "TotalBytesSent"),
            ),
            (
                "GetTotalBytesReceived",
                &one("NewTotalBytesReceived", "TotalBytesReceived"),
            ),
            (
                "GetTotalPacketsSent",
                &one("NewTotalPacketsSent", "TotalPacketsSent"),
            ),
            (
                "GetTotalPacketsReceived",
                &one("NewTotalPacketsReceived", "TotalPacketsReceived"),
            ),
        ],
        &[
            ("WANAccessType", "string", false),
            ("Layer1UpstreamMaxBitRate", "ui4", false),
            ("Layer1DownstreamMaxBitRate", "ui4", false),
            ("PhysicalLinkStatus", "string", true),
            ("TotalBytesSent", "ui4", false),
            ("TotalBytesReceived", "ui4", false),
            ("TotalPacketsSent", "ui4", false),
            ("TotalPacketsReceived", "ui4", false),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_distinct_and_well_formed() {
        let cfg = Config::example();
        let (one, two) = (uuid(&cfg, 1), uuid(&cfg, 2));
        assert_eq!(one, uuid(&cfg, 1));
        assert_ne!(one, two);
        for u in [&one, &two] {
            let parts: Vec<usize> = u.split('-').map(str::len).collect();
            assert_eq!(parts, [8, 4, 4, 4, 12], "{u}");
            assert_eq!(&u[14..15], "4", "{u}");
        }
    }

    #[test]
    fn the_scpds_list_every_action_of_their_version() {
        let (v1, v2) = (ip_connection_scpd(1), ip_connection_scpd(2));
        for action in ["AddPortMapping", "GetExternalIPAddress"] {
            assert!(v1.contains(&format!("<name>{action}</name>")), "{action}");
            assert!(v2.contains(&format!("<name>{action}</name>")), "{action}");
        }
        for name in IP_CONNECTION_V2_ONLY {
            assert!(v2.contains(&format!("<name>{name}</name>")), "{name}");
            assert!(!v1.contains(name), "WANIPConnection:1 lists {name}");
        }
        assert!(common_if_scpd().contains("<name>GetTotalBytesSent</name>"));
    }
}
