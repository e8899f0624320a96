//! A virtual DS-Lite network for portproxy's privileged tests and the `lab` demo.
//!
//! One [`Lab`] is five network namespaces with unique names, so labs run in parallel:
//!
//! ```text
//!  lan1 ─┐                       softwire                         wan0
//!        ├─ br-lan  [cpe] ───────────────────────────── [cgn] ──────────── inet
//!  lan2 ─┘          portproxy   L2: veth                miniupnpd, NAT
//!                               L3: TUN pair + forwarder thread
//!
//!  lan1 192.168.1.2, lan2 192.168.1.3, default via the cpe's br-lan 192.168.1.1
//!  cpe softwire 192.0.0.2 <-> cgn softwire 192.0.0.1
//!  cgn wan0 203.0.114.1 (the subscriber's public address) <-> inet 203.0.114.2
//! ```
//!
//! The CPE is a DS-Lite B4 (routes, no NAT); the CGN is the AFTR: it masquerades the
//! subscriber's addresses and runs miniupnpd (NAT-PMP, PCP, UPnP IGD) for them.
//! Everything a lab creates is removed when it is dropped, also on panic.

pub mod bench;
mod cgn;
mod daemon;
mod datapath;
mod gena;
mod iroh_client;
pub mod load;
mod map_client;
mod net_check;
mod netns;
mod pcp_client;
mod topology;
mod tunpipe;

use std::net::Ipv4Addr;

pub use cgn::CgnKind;
pub use daemon::Daemon;
pub use datapath::{DataPath, Forward, Hole};
pub use gena::{Event, EventSink, response_header};
pub use iroh_client::{IrohMapping, IrohProtocol, iroh_map_udp};
pub use map_client::{MAPPED_WITHIN, map_events, wait_map_event};
pub use net_check::{TcpServer, send_raw_udp};
pub use netns::{Netns, show_output};
pub use pcp_client::{PcpMapping, pcp_map_tcp};
pub use topology::{Lab, LabBuilder, Softwire, SoftwireStage};

/// The CPE's LAN address: the LAN hosts' default gateway, where portproxy listens.
pub const LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
/// `lan1`'s address.
pub const LAN1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// `lan2`'s address.
pub const LAN2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
/// The CPE's end of the softwire (the B4 address).
pub const CPE_SOFTWIRE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 2);
/// The CGN's end of the softwire (the AFTR address), where miniupnpd listens.
pub const CGN_SOFTWIRE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 1);
/// The subscriber's public address: the CGN's `wan0`.
///
/// Not TEST-NET-3 (203.0.113.0/24): miniupnpd 2.3.1 refuses to start with any IANA
/// special-purpose address as `ext_ip`, and libminiupnpc calls an IGD with such an external
/// address "not connected". This globally routable block next to TEST-NET-3 exists only
/// inside the lab: no lab namespace has a route out of the lab.
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 1);
/// The internet host `inet`.
pub const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 2);
/// miniupnpd's HTTP port (description and SOAP control URLs).
pub const IGD_HTTP_PORT: u16 = 5000;
/// The SSDP multicast group.
pub const SSDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
/// NAT-PMP and PCP server port.
pub const PCP_PORT: u16 = 5351;
