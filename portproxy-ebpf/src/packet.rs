//! Reading the Ethernet/IPv4/UDP headers, the same way for TC and XDP.
//!
//! `Packet` is the small access abstraction the decision code (`dispatch`, `port_control`,
//! `ssdp`) is written against: bounded copies out of the packet through
//! `bpf_skb_load_bytes` (TC) or `bpf_xdp_load_bytes` (XDP). No direct packet pointers:
//! nothing to re-validate after `bpf_skb_change_head`, the verifier only sees bounded helper
//! calls, and one copy of the protocol checks serves both hooks.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    helpers::generated::bpf_xdp_load_bytes,
    programs::{TcContext, XdpContext},
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;

/// Offsets inside the IPv4 header.
pub const IP_TOT_LEN: usize = 2;
pub const IP_TTL: usize = 8;
pub const IP_SRC: usize = 12;
pub const IP_DST: usize = 16;
pub const IP_CSUM: usize = 10;
/// Offset of the checksum inside the UDP header.
pub const UDP_CSUM: usize = 6;

/// Read access to a packet, from its first byte (the Ethernet header on an L2 device).
pub trait Packet {
    /// Copies `size_of::<T>()` bytes at `offset`; `Err` when they are not all there.
    fn load<T: Copy>(&self, offset: usize) -> Result<T, i64>;
    /// Bytes in the packet.
    fn len(&self) -> usize;
}

impl Packet for TcContext {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Result<T, i64> {
        TcContext::load(self, offset)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Result<T, i64> {
        let mut value = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most `size_of::<T>()` bytes into `value`.
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                offset as u32,
                value.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            )
        };
        if ret == 0 {
            // SAFETY: fully written by the helper.
            Ok(unsafe { value.assume_init() })
        } else {
            Err(ret)
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }
}

/// An unfragmented IPv4/UDP packet whose headers are all in the packet.
pub struct Udp4 {
    /// Offset of the IPv4 header (0 on an L3 device, 14 after an Ethernet header).
    pub l3: usize,
    /// Offset of the UDP header (`l3` + IHL * 4: options honoured).
    pub l4: usize,
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub ttl: u8,
    /// IP total length (host order).
    pub tot_len: u16,
    /// Whether the IP total length and the UDP length are consistent with each other and
    /// with the packet (the datagram is complete). Only packets identified as ours are
    /// dropped for this; anything else goes to the stack, which has its own checks.
    pub complete: bool,
    /// UDP payload length per the UDP header (meaningful only when `complete`, or as the
    /// length a `first_fragment` declares for the whole datagram).
    pub payload_len: usize,
    /// The first fragment of a fragmented datagram (offset 0, more fragments): its UDP
    /// header is here, the rest of the datagram is not (`complete` is false).
    pub first_fragment: bool,
}

impl Udp4 {
    /// Offset of the UDP payload.
    #[inline(always)]
    pub fn payload(&self) -> usize {
        self.l4 + UDP_HLEN
    }
}

/// Is there an IPv4 packet after an Ethernet header (the LAN, an L2 WAN)?
#[inline(always)]
pub fn is_ethernet_ipv4<P: Packet>(p: &P) -> bool {
    matches!(p.load::<u16>(12), Ok(proto) if proto == ETH_P_IP_BE)
}

/// Parses IPv4 + UDP at `l3`. `None`: not IPv4/UDP, a fragment other than the first, or
/// headers not all present.
#[inline(always)]
pub fn udp4<P: Packet>(p: &P, l3: usize) -> Option<Udp4> {
    let ver_ihl: u8 = p.load(l3).ok()?;
    if ver_ihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let frag = u16::from_be(p.load::<u16>(l3 + 6).ok()?);
    // A fragment offset: no UDP header to look at.
    if frag & 0x1fff != 0 {
        return None;
    }
    let first_fragment = frag & 0x2000 != 0;
    let ttl: u8 = p.load(l3 + IP_TTL).ok()?;
    let proto: u8 = p.load(l3 + 9).ok()?;
    if proto != IPPROTO_UDP {
        return None;
    }
    let tot_len = u16::from_be(p.load::<u16>(l3 + IP_TOT_LEN).ok()?);
    let src_be: u32 = p.load(l3 + IP_SRC).ok()?;
    let dst_be: u32 = p.load(l3 + IP_DST).ok()?;
    let l4 = l3 + ihl;
    let sport_be: u16 = p.load(l4).ok()?;
    let dport_be: u16 = p.load(l4 + 2).ok()?;
    let udp_len = usize::from(u16::from_be(p.load::<u16>(l4 + 4).ok()?));
    let total = usize::from(tot_len);
    let complete =
        !first_fragment && udp_len >= UDP_HLEN && total >= ihl + udp_len && l3 + total <= p.len();
    Some(Udp4 {
        l3,
        l4,
        src_be,
        dst_be,
        sport_be,
        dport_be,
        ttl,
        tot_len,
        complete,
        payload_len: udp_len.saturating_sub(UDP_HLEN),
        first_fragment,
    })
}

/// The IPv4 header's word holding the TTL and the protocol (UDP), as it lies in the packet.
#[inline(always)]
pub fn ttl_word(ttl: u8) -> u16 {
    u16::from_ne_bytes([ttl, IPPROTO_UDP])
}

/// The client's MAC: the Ethernet source of a LAN packet.
#[inline(always)]
pub fn eth_src<P: Packet>(p: &P) -> Option<[u8; 6]> {
    p.load(6).ok()
}
