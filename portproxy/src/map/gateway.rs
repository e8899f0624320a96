//! The gateway `portproxy map` asks: the next hop of the default route, read over rtnetlink
//! as the daemon reads its CGN's (`netif`), or the peer of a tunnel the route goes through.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::netif::{self, Iface, Route};

/// The default route's gateway, if there is one.
pub async fn default_gateway() -> Result<Option<Ipv4Addr>> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    let routes = netif::routes(&handle).await?;
    let mut ifaces = Vec::new();
    for name in netif::iface_names(&handle).await? {
        if let Some(iface) = netif::iface(&handle, &name).await? {
            ifaces.push(iface);
        }
    }
    Ok(gateway(&routes, &ifaces))
}

/// The gateway of the first interface with a default route through it.
fn gateway(routes: &[Route], ifaces: &[Iface]) -> Option<Ipv4Addr> {
    routes
        .iter()
        .filter(|r| r.prefix_len == 0)
        .filter_map(|r| ifaces.iter().find(|i| Some(i.index) == r.oif))
        .find_map(|iface| netif::cgn_address(iface, routes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netif::IfAddr;

    fn iface(index: u32, local: Ipv4Addr, peer: Option<Ipv4Addr>) -> Iface {
        Iface {
            name: format!("if{index}"),
            index,
            up: true,
            addrs: vec![IfAddr {
                local,
                prefix_len: 24,
                peer,
            }],
        }
    }

    fn route(prefix_len: u8, gateway: Option<Ipv4Addr>, oif: u32) -> Route {
        Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len,
            gateway,
            oif: Some(oif),
        }
    }

    #[test]
    fn the_default_routes_next_hop() {
        let router = Ipv4Addr::new(192, 168, 1, 1);
        let ifaces = [iface(2, Ipv4Addr::new(192, 168, 1, 2), None)];
        let routes = [route(24, None, 2), route(0, Some(router), 2)];
        assert_eq!(gateway(&routes, &ifaces), Some(router));
    }

    #[test]
    fn a_tunnels_peer_without_a_next_hop() {
        let aftr = Ipv4Addr::new(192, 0, 0, 1);
        let ifaces = [
            iface(2, Ipv4Addr::new(10, 0, 0, 2), None),
            iface(5, Ipv4Addr::new(192, 0, 0, 2), Some(aftr)),
        ];
        assert_eq!(gateway(&[route(0, None, 5)], &ifaces), Some(aftr));
    }

    #[test]
    fn no_default_route_no_gateway() {
        let ifaces = [iface(2, Ipv4Addr::new(192, 168, 1, 2), None)];
        assert_eq!(gateway(&[route(24, None, 2)], &ifaces), None);
        assert_eq!(gateway(&[route(0, None, 2)], &ifaces), None);
        assert_eq!(gateway(&[], &[]), None);
    }
}
