//! The effective configuration: the options with every address filled in
//! from the interfaces.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use rtnetlink::Handle;

use crate::cli::Options;
use crate::netif;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub iface: String,
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Side {
    /// Whether `ip` is in this side's network (its address and prefix length).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub lan: Side,
    pub wan: Side,
    pub cgn: Ipv4Addr,
    pub nat_pmp: bool,
    pub upnp_udp: bool,
    pub upnp_tcp: bool,
    pub nat_pmp_port: u16,
    pub ssdp_port: u16,
    pub http_ports: [u16; 2],
    pub pending_timeout: Duration,
    pub max_clients: u32,
    /// Requests per second per LAN host; 0 for no limit.
    pub rate_limit: u32,
    /// The fast path's hook layout.
    pub hooks: crate::cli::Hooks,
}

/// What the interfaces allow right now.
#[derive(Debug)]
pub enum Resolved {
    Ready(Config),
    /// Something that can still appear (an interface, its address, the route to the CGN):
    /// what it is, for the log and `portproxy stats`; and the LAN side when it is there
    /// already (the API serves on it whatever the WAN side does).
    Waiting {
        what: String,
        lan: Option<Side>,
    },
}

impl Config {
    /// Fills in every address from the interfaces, the LAN's first. `Err` only when netlink
    /// itself fails; anything not there yet is `Resolved::Waiting`, since on a router the
    /// softwire appears late (after DHCPv6 and the AFTR's name resolve).
    pub async fn resolve(opts: &Options, handle: &Handle) -> Result<Resolved> {
        let lan_side = match lan_side(opts, handle).await? {
            Ok(lan) => lan,
            Err(what) => return Ok(Resolved::Waiting { what, lan: None }),
        };
        let waiting = |what| {
            Ok(Resolved::Waiting {
                what,
                lan: Some(lan_side.clone()),
            })
        };
        let Some(wan) = netif::iface(handle, &opts.wan_iface).await? else {
            return waiting(missing_iface(handle, &opts.wan_iface, "--wan-iface").await);
        };
        if !wan.up {
            return waiting(format!("{} to come up", wan.name));
        }
        // The address first: without one there is no route through the interface either.
        let wan_side = match side(&wan, opts.wan_addr, "-w") {
            Ok(wan) => wan,
            Err(missing) => return waiting(missing),
        };
        let cgn = match opts.cgn_addr {
            Some(addr) => addr,
            None => match netif::cgn_address(&wan, &netif::routes(handle).await?) {
                Some(addr) => addr,
                None => {
                    return waiting(format!(
                        "a default route with a gateway through {} or a tunnel peer, to find the \
                         CGN (or give its address with -n ADDR)",
                        wan.name
                    ));
                }
            },
        };
        Ok(Resolved::Ready(Config {
            lan: lan_side,
            wan: wan_side,
            cgn,
            nat_pmp: opts.nat_pmp,
            upnp_udp: opts.upnp_udp,
            upnp_tcp: opts.upnp_tcp,
            nat_pmp_port: opts.nat_pmp_port,
            ssdp_port: opts.upnp_udp_port,
            http_ports: [opts.upnp_tcp_port1, opts.upnp_tcp_port2],
            pending_timeout: opts.pending_timeout,
            max_clients: opts.max_clients,
            rate_limit: opts.rate_limit,
            hooks: opts.hooks,
        }))
    }
}

/// The LAN side: its interface there, up and addressed; else what it waits for.
async fn lan_side(opts: &Options, handle: &Handle) -> Result<Result<Side, String>> {
    let Some(lan) = netif::iface(handle, &opts.lan_iface).await? else {
        return Ok(Err(
            missing_iface(handle, &opts.lan_iface, "--lan-iface").await
        ));
    };
    if !lan.up {
        return Ok(Err(format!("{} to come up", lan.name)));
    }
    Ok(side(&lan, opts.lan_addr, "-l"))
}

/// "interface X (--option) to exist", with the interfaces there are, for a typo.
async fn missing_iface(handle: &Handle, name: &str, option: &str) -> String {
    let names = netif::iface_names(handle).await.unwrap_or_default();
    format!(
        "interface {name} ({option}) to exist (interfaces here: {})",
        names.join(", ")
    )
}

fn side(iface: &netif::Iface, given: Option<Ipv4Addr>, option: &str) -> Result<Side, String> {
    let addr = netif::pick_address(iface, given, option)?;
    Ok(Side {
        iface: iface.name.clone(),
        index: iface.index,
        addr: addr.local,
        prefix_len: addr.prefix_len,
    })
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        for (name, side) in [("LAN", &self.lan), ("WAN", &self.wan)] {
            writeln!(
                f,
                "{name}  {} (index {}) address {}/{}",
                side.iface, side.index, side.addr, side.prefix_len
            )?;
        }
        writeln!(f, "CGN  {}", self.cgn)?;
        writeln!(
            f,
            "NAT-PMP/PCP {} (port {})",
            on(self.nat_pmp),
            self.nat_pmp_port
        )?;
        writeln!(f, "SSDP {} (port {})", on(self.upnp_udp), self.ssdp_port)?;
        writeln!(
            f,
            "UPnP HTTP {} (ports {} {})",
            on(self.upnp_tcp),
            self.http_ports[0],
            self.http_ports[1]
        )?;
        write!(
            f,
            "pending timeout {}s, at most {} clients in flight",
            self.pending_timeout.as_secs(),
            self.max_clients
        )
    }
}

#[cfg(test)]
impl Config {
    /// A CPE as the lab has it, for unit tests.
    pub fn example() -> Config {
        let side = |iface: &str, index, addr| Side {
            iface: iface.into(),
            index,
            addr,
            prefix_len: 24,
        };
        Config {
            lan: side("br-lan", 2, Ipv4Addr::new(192, 168, 1, 1)),
            wan: side("softwire", 3, Ipv4Addr::new(192, 0, 0, 2)),
            cgn: Ipv4Addr::new(192, 0, 0, 1),
            nat_pmp: true,
            upnp_udp: true,
            upnp_tcp: false,
            nat_pmp_port: 5351,
            ssdp_port: 1900,
            http_ports: [5000, 2869],
            pending_timeout: Duration::from_secs(60),
            max_clients: 4096,
            rate_limit: 10,
            hooks: crate::cli::Hooks::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan(prefix_len: u8) -> Side {
        Side {
            iface: "br-lan".into(),
            index: 2,
            addr: Ipv4Addr::new(192, 168, 1, 1),
            prefix_len,
        }
    }

    #[test]
    fn the_lan_is_its_prefix() {
        assert!(lan(24).contains(Ipv4Addr::new(192, 168, 1, 200)));
        assert!(!lan(24).contains(Ipv4Addr::new(192, 168, 2, 2)));
        assert!(!lan(24).contains(Ipv4Addr::new(203, 0, 114, 2)));
        assert!(
            lan(32).contains(Ipv4Addr::new(192, 168, 1, 1))
                && !lan(32).contains(Ipv4Addr::new(192, 168, 1, 2))
        );
        assert!(lan(0).contains(Ipv4Addr::new(8, 8, 8, 8)));
    }
}
