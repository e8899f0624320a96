//! What the kernel knows about the interfaces: index, IPv4 addresses and the
//! routes through them, read over rtnetlink. The choices made from that data
//! (which address, which CGN) are plain functions so they can be tested.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::Handle;

/// One IPv4 address of an interface. On point-to-point links (tunnels) the
/// kernel also records the peer's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    pub local: Ipv4Addr,
    pub prefix_len: u8,
    pub peer: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub addrs: Vec<IfAddr>,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// The link named `name`; `None` if it does not exist (yet).
async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<netlink_packet_route::link::LinkMessage>> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match link {
        Ok(link) => Ok(link),
        // The kernel answers ENODEV for a name it does not know.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading interface {name}")),
    }
}

/// Reads an interface and its IPv4 addresses; `None` if it does not exist (yet).
pub async fn iface(handle: &Handle, name: &str) -> Result<Option<Iface>> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(None);
    };
    let index = link.header.index;
    let up = link.header.flags.contains(LinkFlags::Up);
    let mut addrs = Vec::new();
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .with_context(|| format!("reading addresses of {name}"))?
    {
        let (mut local, mut address) = (None, None);
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
                AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
                _ => {}
            }
        }
        // IFA_LOCAL is our address; IFA_ADDRESS is the same, or the peer on
        // point-to-point links. Without IFA_LOCAL, IFA_ADDRESS is ours.
        if let Some(ours) = local.or(address) {
            let peer = address.filter(|a| *a != ours);
            addrs.push(IfAddr {
                local: ours,
                prefix_len: msg.header.prefix_len,
                peer,
            });
        }
    }
    Ok(Some(Iface {
        name: name.to_string(),
        index,
        up,
        addrs,
    }))
}

pub async fn iface_names(handle: &Handle) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await? {
        for attr in link.attributes {
            if let LinkAttribute::IfName(n) = attr {
                names.push(n);
            }
        }
    }
    Ok(names)
}

/// Reads the IPv4 routes of the main table.
pub async fn routes(handle: &Handle) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    let mut stream = handle
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .context("reading the routing table")?
    {
        if msg.header.table != netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut route = Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => route.dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                _ => {}
            }
        }
        routes.push(route);
    }
    Ok(routes)
}

/// The CGN is the next hop of the default route through the WAN interface;
/// on a tunnel without a gateway, the tunnel's peer address.
pub fn cgn_address(wan: &Iface, routes: &[Route]) -> Option<Ipv4Addr> {
    let via_wan = |r: &&Route| r.oif == Some(wan.index);
    routes
        .iter()
        .filter(via_wan)
        .find(|r| r.prefix_len == 0)
        .and_then(|r| r.gateway)
        .or_else(|| wan.addrs.iter().find_map(|a| a.peer))
}

/// The address portproxy uses on an interface: the given one or the interface's first
/// IPv4 address. `Err` says what is missing, which may still appear (DHCP, netifd).
pub fn pick_address(
    iface: &Iface,
    given: Option<Ipv4Addr>,
    option: &str,
) -> Result<IfAddr, String> {
    match given {
        Some(addr) => iface
            .addrs
            .iter()
            .find(|a| a.local == addr)
            .copied()
            .ok_or_else(|| {
                format!(
                    "address {addr} ({option}) on {} (it has: {})",
                    iface.name,
                    list(iface)
                )
            }),
        None => iface.addrs.first().copied().ok_or_else(|| {
            format!(
                "an IPv4 address on {} (or give one with {option})",
                iface.name
            )
        }),
    }
}

fn list(iface: &Iface) -> String {
    if iface.addrs.is_empty() {
        return "no IPv4 address".into();
    }
    iface
        .addrs
        .iter()
        .map(|a| format!("{}/{}", a.local, a.prefix_len))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wan(addrs: Vec<IfAddr>) -> Iface {
        Iface {
            name: "softwire".into(),
            index: 7,
            up: true,
            addrs,
        }
    }

    const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 2);
    const AFTR: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 1);

    #[test]
    fn cgn_from_the_default_gateway_on_the_wan() {
        let iface = wan(vec![IfAddr {
            local: B4,
            prefix_len: 29,
            peer: None,
        }]);
        let routes = [
            Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                oif: Some(3),
            },
            Route {
                dst: Ipv4Addr::new(192, 0, 0, 0),
                prefix_len: 29,
                gateway: None,
                oif: Some(7),
            },
            Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(AFTR),
                oif: Some(7),
            },
        ];
        assert_eq!(cgn_address(&iface, &routes), Some(AFTR));
    }

    #[test]
    fn cgn_from_the_tunnel_peer() {
        let iface = wan(vec![IfAddr {
            local: B4,
            prefix_len: 32,
            peer: Some(AFTR),
        }]);
        let routes = [Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: None,
            oif: Some(7),
        }];
        assert_eq!(cgn_address(&iface, &routes), Some(AFTR));
    }

    #[test]
    fn no_cgn_without_route_or_peer() {
        let iface = wan(vec![IfAddr {
            local: B4,
            prefix_len: 29,
            peer: None,
        }]);
        assert_eq!(cgn_address(&iface, &[]), None);
    }

    #[test]
    fn addresses_default_to_the_first_and_are_checked() {
        let iface = wan(vec![
            IfAddr {
                local: B4,
                prefix_len: 29,
                peer: None,
            },
            IfAddr {
                local: Ipv4Addr::new(192, 0, 0, 3),
                prefix_len: 29,
                peer: None,
            },
        ]);
        assert_eq!(pick_address(&iface, None, "-w").unwrap().local, B4);
        assert_eq!(
            pick_address(&iface, Some(Ipv4Addr::new(192, 0, 0, 3)), "-w")
                .unwrap()
                .local,
            Ipv4Addr::new(192, 0, 0, 3)
        );
        let missing = pick_address(&iface, Some(AFTR), "-w").unwrap_err();
        assert_eq!(
            missing,
            "address 192.0.0.1 (-w) on softwire (it has: 192.0.0.2/29, 192.0.0.3/29)"
        );
        let missing = pick_address(&wan(vec![]), None, "-w").unwrap_err();
        assert_eq!(missing, "an IPv4 address on softwire (or give one with -w)");
    }
}

/// An interface's traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
}

/// Interface `index` as the kernel describes it.
async fn link_by_index(
    handle: &Handle,
    index: u32,
) -> Result<netlink_packet_route::link::LinkMessage> {
    handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .with_context(|| format!("reading interface {index}"))?
        .with_context(|| format!("no interface {index}"))
}

/// The traffic counters of interface `index` (its 64-bit statistics).
pub async fn traffic(handle: &Handle, index: u32) -> Result<Traffic> {
    let link = link_by_index(handle, index).await?;
    link.attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::Stats64(s) => Some(Traffic {
                tx_bytes: s.tx_bytes,
                rx_bytes: s.rx_bytes,
                tx_packets: s.tx_packets,
                rx_packets: s.rx_packets,
            }),
            _ => None,
        })
        .with_context(|| format!("interface {index} has no statistics"))
}

/// What the API shows of the softwire: the link's kind (`ip6tnl`, `veth`...), a tunnel's
/// endpoints, and the interface's IPv6 addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Softwire {
    pub kind: Option<String>,
    pub local: Option<IpAddr>,
    pub remote: Option<IpAddr>,
    pub ipv6: Vec<String>,
}

/// The softwire view of interface `name`; `None` if it does not exist (yet).
pub async fn softwire(handle: &Handle, name: &str) -> Result<Option<Softwire>> {
    use netlink_packet_route::link::{InfoData, InfoIpTunnel, LinkInfo};
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(None);
    };
    let index = link.header.index;
    let mut view = Softwire::default();
    let infos = link.attributes.iter().filter_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    });
    for info in infos.flatten() {
        match info {
            LinkInfo::Kind(kind) => view.kind = Some(kind.to_string()),
            LinkInfo::Data(InfoData::IpTunnel(attrs)) => {
                for attr in attrs {
                    match attr {
                        InfoIpTunnel::Local(a) => view.local = Some(*a),
                        InfoIpTunnel::Remote(a) => view.remote = Some(*a),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .with_context(|| format!("reading addresses of interface {index}"))?
    {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V6(a)) = attr {
                view.ipv6.push(format!("{a}/{}", msg.header.prefix_len));
            }
        }
    }
    Ok(Some(view))
}

/// The IPv4 neighbours of interface `index` with their link-layer address
/// (`aa:bb:cc:dd:ee:ff`).
pub async fn neighbours(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, String)>> {
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    let mut found = Vec::new();
    let mut stream = handle
        .neighbours()
        .get()
        .set_address_family(netlink_packet_route::AddressFamily::Inet)
        .execute();
    while let Some(msg) = stream.try_next().await.context("reading the neighbours")? {
        if msg.header.ifindex != index {
            continue;
        }
        let (mut ip, mut mac) = (None, None);
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    let hex: Vec<String> = l.iter().map(|b| format!("{b:02x}")).collect();
                    mac = Some(hex.join(":"));
                }
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            found.push((ip, mac));
        }
    }
    Ok(found)
}
