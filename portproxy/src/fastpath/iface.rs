//! Interface facts the programs need, over rtnetlink: the link type (Ethernet or not), the
//! MAC address and the XDP programs attached, and removing such a program. Unlike
//! `/sys/class/net`, which shows the interfaces of the namespace sysfs was mounted in, a
//! netlink socket always sees the process's own network namespace (`nsenter --net` without a
//! fresh /sys, as in some test harnesses).
//!
//! One request and its answer on a blocking socket: the loader is synchronous and runs on
//! the daemon's tokio runtime, where rtnetlink's async connection would need a runtime of
//! its own.

use std::io;

use anyhow::{Context as _, bail};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage, LinkXdp};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Link type and hardware address of an interface.
pub struct Link {
    pub kind: LinkLayerType,
    /// Zero unless the device has a 6-byte hardware address (an L3 softwire has none, or its
    /// tunnel endpoint).
    pub mac: [u8; 6],
}

impl Link {
    /// No Ethernet header on this device (an L3 softwire or TUN).
    pub fn is_l3(&self) -> bool {
        self.kind != LinkLayerType::Ether
    }
}

pub fn link(iface: &str) -> anyhow::Result<Link> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        bail!("{iface:?} is not a valid interface name");
    }
    let mut request = LinkMessage::default();
    request
        .attributes
        .push(LinkAttribute::IfName(iface.to_string()));
    let link = get_link(request)
        .with_context(|| format!("reading the link type and address of {iface}"))?;
    let mac = link
        .attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::Address(addr) => <[u8; 6]>::try_from(addr.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or_default();
    Ok(Link {
        kind: link.header.link_layer_type,
        mac,
    })
}

// ---------------------------------------------------------------------------------------------
// XDP attachments: what is attached (also by other processes, or left by a killed run
// through netlink, which outlives its process) and removing such a leftover.

/// XDP attach modes as netlink and bpf_link_create name them.
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;

/// One XDP program attached to an interface: its mode (`XDP_FLAGS_*_MODE`) and program id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpAttached {
    pub mode: u32,
    pub prog_id: u32,
}

/// The XDP programs attached to `ifindex`, by mode.
pub fn xdp_attached(ifindex: u32) -> io::Result<Vec<XdpAttached>> {
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let link = get_link(request)?;
    let xdp = link.attributes.iter().filter_map(|attr| match attr {
        LinkAttribute::Xdp(xdp) => Some(xdp),
        _ => None,
    });
    Ok(xdp
        .flatten()
        .filter_map(|attr| match *attr {
            LinkXdp::SkbProgId(prog_id) => Some(XdpAttached {
                mode: XDP_FLAGS_SKB_MODE,
                prog_id,
            }),
            LinkXdp::DrvProgId(prog_id) => Some(XdpAttached {
                mode: XDP_FLAGS_DRV_MODE,
                prog_id,
            }),
            _ => None,
        })
        .collect())
}

/// Removes the XDP program attached in `mode` through netlink. Fails with EBUSY when it is
/// held by a BPF link (a live process owns it).
pub fn xdp_detach_netlink(ifindex: u32, mode: u32) -> io::Result<()> {
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    request.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(-1),
        LinkXdp::Flags(mode),
    ]));
    match exchange(RouteNetlinkMessage::SetLink(request), NLM_F_ACK)? {
        NetlinkPayload::Error(ack) if ack.code.is_none() => Ok(()),
        other => Err(unexpected(&other)),
    }
}

/// RTM_GETLINK for the link `request` names (by index or by IFLA_IFNAME).
fn get_link(request: LinkMessage) -> io::Result<LinkMessage> {
    match exchange(RouteNetlinkMessage::GetLink(request), 0)? {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(link),
        other => Err(unexpected(&other)),
    }
}

/// Sends one request on a fresh rtnetlink socket and returns the kernel's answer; an error
/// answer becomes its errno (ENODEV: no such interface).
fn exchange(
    message: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<NetlinkPayload<RouteNetlinkMessage>> {
    let mut request = NetlinkMessage::new(NetlinkHeader::default(), message.into());
    request.header.flags = NLM_F_REQUEST | flags;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);

    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    match reply.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        payload => Ok(payload),
    }
}

fn unexpected(payload: &NetlinkPayload<RouteNetlinkMessage>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected netlink answer: {payload:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_ethernet() {
        // No Ethernet header on lo, so it counts as L3.
        let lo = link("lo").unwrap();
        assert_eq!(lo.kind, LinkLayerType::Loopback);
        assert!(lo.is_l3());
        assert_eq!(lo.mac, [0; 6]);
    }

    #[test]
    fn loopback_has_no_xdp_program() {
        assert_eq!(xdp_attached(1).unwrap(), Vec::new());
    }

    #[test]
    fn unknown_interface_is_an_error_naming_it() {
        let err = link("no-such-if0").err().unwrap();
        assert!(format!("{err:#}").contains("no-such-if0"), "{err:#}");
        assert!(link("").is_err());
        assert!(link("a-name-far-too-long-for-linux").is_err());
    }
}
