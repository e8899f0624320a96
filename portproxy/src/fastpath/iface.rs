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
    // The request's type is the C library's (glibc: unsigned long, musl: int).
    let request = libc::SIOCGIFHWADDR as libc::Ioctl;
    // SAFETY: valid socket and a properly initialised ifreq the kernel writes into.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), request, &mut req) };
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

// ---------------------------------------------------------------------------------------------
// XDP attachments over rtnetlink: what is attached (also by other processes, or left by a
// killed run through netlink, which outlives its process) and removing such a leftover.

/// XDP attach modes as netlink and bpf_link_create name them.
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;

/// One XDP program attached to an interface: its mode (`XDP_FLAGS_*_MODE`) and program id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpAttached {
    pub mode: u32,
    pub prog_id: u32,
}

/// A netlink request: header + ifinfomsg for `ifindex` + `attrs` (already encoded).
fn nl_request(kind: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 16 + attrs.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    // ifinfomsg: family AF_UNSPEC, type 0, index, flags 0, change 0.
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(attrs);
    msg
}

fn nl_attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut attr = Vec::with_capacity(len.next_multiple_of(4));
    attr.extend_from_slice(&(len as u16).to_ne_bytes());
    attr.extend_from_slice(&kind.to_ne_bytes());
    attr.extend_from_slice(payload);
    attr.resize(len.next_multiple_of(4), 0);
    attr
}

/// `(type without flags, payload)` of each attribute in `buf`.
fn nl_attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, payload))
    })
}

/// Sends one request on a fresh rtnetlink socket and returns the first reply message.
fn nl_exchange(request: &[u8]) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid buffer and length.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    // SAFETY: valid buffer and length.
    let got = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    if buf.len() < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink reply",
        ));
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(-errno));
        }
    }
    Ok(buf)
}

/// The XDP programs attached to `ifindex`, by mode.
pub fn xdp_attached(ifindex: u32) -> io::Result<Vec<XdpAttached>> {
    let reply = nl_exchange(&nl_request(RTM_GETLINK, 0, ifindex, &[]))?;
    if u16::from_ne_bytes([reply[4], reply[5]]) != RTM_NEWLINK || reply.len() < 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected RTM_GETLINK reply",
        ));
    }
    let msg_len =
        (u32::from_ne_bytes([reply[0], reply[1], reply[2], reply[3]]) as usize).min(reply.len());
    let mut attached = Vec::new();
    for (kind, payload) in nl_attrs(&reply[32..msg_len]) {
        if kind != IFLA_XDP {
            continue;
        }
        for (inner, value) in nl_attrs(payload) {
            let mode = match inner {
                IFLA_XDP_SKB_PROG_ID => XDP_FLAGS_SKB_MODE,
                IFLA_XDP_DRV_PROG_ID => XDP_FLAGS_DRV_MODE,
                _ => continue,
            };
            if let Ok(id) = <[u8; 4]>::try_from(value) {
                attached.push(XdpAttached {
                    mode,
                    prog_id: u32::from_ne_bytes(id),
                });
            }
        }
    }
    Ok(attached)
}

/// Removes the XDP program attached in `mode` through netlink. Fails with EBUSY when it is
/// held by a BPF link (a live process owns it).
pub fn xdp_detach_netlink(ifindex: u32, mode: u32) -> io::Result<()> {
    let mut nested = nl_attr(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    nested.extend(nl_attr(IFLA_XDP_FLAGS, &mode.to_ne_bytes()));
    let attr = nl_attr(IFLA_XDP | NLA_F_NESTED, &nested);
    nl_exchange(&nl_request(RTM_SETLINK, NLM_F_ACK, ifindex, &attr)).map(|_| ())
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
    fn loopback_has_no_xdp_program() {
        assert_eq!(xdp_attached(1).unwrap(), Vec::new());
    }

    #[test]
    fn netlink_attributes_round_trip() {
        let mut nested = nl_attr(IFLA_XDP_SKB_PROG_ID, &7u32.to_ne_bytes());
        nested.extend(nl_attr(2, &[1]));
        let outer = nl_attr(IFLA_XDP | NLA_F_NESTED, &nested);
        let attrs: Vec<_> = nl_attrs(&outer).collect();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].0, IFLA_XDP);
        let inner: Vec<_> = nl_attrs(attrs[0].1).collect();
        assert_eq!(
            inner,
            vec![
                (IFLA_XDP_SKB_PROG_ID, &7u32.to_ne_bytes()[..]),
                (2, &[1u8][..])
            ]
        );
    }

    #[test]
    fn unknown_interface_is_an_error_naming_it() {
        let err = link("no-such-if0").err().unwrap();
        assert!(format!("{err:#}").contains("no-such-if0"), "{err:#}");
        assert!(link("").is_err());
        assert!(link("a-name-far-too-long-for-linux").is_err());
    }
}
