//! Interface facts the programs need: the link type (Ethernet or not) and the MAC address,
//! from `SIOCGIFHWADDR` on a socket. Unlike `/sys/class/net`, which shows the interfaces of
//! the namespace sysfs was mounted in, a socket always sees the process's own network
//! namespace (`nsenter --net` without a fresh /sys, as in some test harnesses).

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};

/// ARPHRD_ETHER: the device carries Ethernet headers (veth, bridge, eth0.1).
const ARPHRD_ETHER: u16 = 1;

/// Link type and hardware address of an interface.
pub struct Link {
    /// ARPHRD_* (1 Ethernet, 769 ipip6/ARPHRD_TUNNEL6, 65534 TUN/ARPHRD_NONE, ...).
    pub arphrd: u16,
    pub mac: [u8; 6],
}

impl Link {
    /// No Ethernet header on this device (an L3 softwire or TUN).
    pub fn is_l3(&self) -> bool {
        self.arphrd != ARPHRD_ETHER
    }
}

pub fn link(iface: &str) -> anyhow::Result<Link> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        bail!("{iface:?} is not a valid interface name");
    }
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a socket for SIOCGIFHWADDR");
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid socket and a properly initialised ifreq the kernel writes into.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if ret != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("reading the link type and address of {iface}"));
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let hwaddr = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hwaddr.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(Link {
        arphrd: hwaddr.sa_family,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_ethernet() {
        // lo is ARPHRD_LOOPBACK (772): no Ethernet header, so it counts as L3.
        let lo = link("lo").unwrap();
        assert_eq!(lo.arphrd, 772);
        assert!(lo.is_l3());
        assert_eq!(lo.mac, [0; 6]);
    }

    #[test]
    fn unknown_interface_is_an_error_naming_it() {
        let err = link("no-such-if0").err().unwrap();
        assert!(format!("{err:#}").contains("no-such-if0"), "{err:#}");
        assert!(link("").is_err());
        assert!(link("a-name-far-too-long-for-linux").is_err());
    }
}
