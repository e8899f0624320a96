//! Carrying out a `Verdict` in XDP, where it fits (see `portproxy/src/fastpath/loader.rs` for
//! the layout): the same decisions as TC (`dispatch`), with XDP's own means. No checksum
//! helpers (addresses are rewritten with RFC 1624 incremental updates,
//! `portproxy_common::csum_replace_u32`), no `bpf_redirect_neigh` (the next hop's MAC comes
//! from `bpf_fib_lookup`), no way to grow a packet for an L3 device.
//!
//! A TC program is always attached behind each XDP program on the same device. What XDP
//! cannot finish it hands on with `XDP_PASS`, uncounted (TC counts the packet's fate), or
//! counted as `STAT_XDP_DEFERRED` when it was a relay XDP could not do:
//! - `xdp_lan`: the CGN's neighbour entry is not resolved yet (`bpf_fib_lookup` says
//!   NO_NEIGH: TC's `bpf_redirect_neigh` resolves it), the route does not leave through the
//!   WAN device, or the WAN is L3 (XDP_REDIRECT into an L3 device does not work);
//! - `xdp_wan`: running natively, where a redirect into the LAN bridge fails (a bridge has
//!   no `ndo_xdp_xmit`); it still drops unsolicited, spoofed and malformed replies at the
//!   earliest point. In skb (generic) mode the loader sets `FLAG_XDP_WAN_REDIRECT` and
//!   `xdp_wan` relays into the bridge itself.
//!
//! The rate limit and quota (`limit`) are charged by the hook that relays: here only once XDP
//! is committed to the redirect (after `next_hop`), never for a packet handed on to TC, which
//! charges it itself. Each request and search is charged exactly once.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use portproxy_common::{
    Config, FLAG_XDP_WAN_REDIRECT, SSDP_GROUP_BE, SSDP_GROUP_MAC, STAT_DROP_TTL, STAT_NOTIFY_IN,
    STAT_SEARCH_OUT, STAT_XDP_DEFERRED, STAT_XDP_RELAYED, csum_replace_u16, csum_replace_u32,
    udp_csum_replace_u32,
};

use crate::{
    dispatch::{self, Verdict},
    grants, maps,
    packet::{ETH_HLEN, IP_CSUM, IP_DST, IP_SRC, IP_TTL, Packet as _, UDP_CSUM, Udp4, ttl_word},
    port_control, ssdp,
    stats::count,
    trace,
};

const AF_INET: u8 = 2;
const IPPROTO_UDP: u8 = 17;
const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();

/// `xdp_lan`: a packet arriving on the LAN device.
#[inline(always)]
pub fn lan(ctx: &XdpContext) -> Result<u32, i64> {
    let Some(cfg) = maps::config() else {
        return Ok(XDP_PASS);
    };
    let verdict = dispatch::lan(ctx, cfg)?;
    if cfg.wan_is_l3 != 0 {
        // Nothing XDP can send there; drops are TC's to count as well.
        return Ok(defer(&verdict));
    }
    act(ctx, cfg, verdict)
}

/// `xdp_wan`: a packet arriving on an Ethernet WAN device.
#[inline(always)]
pub fn wan(ctx: &XdpContext) -> Result<u32, i64> {
    let Some(cfg) = maps::config() else {
        return Ok(XDP_PASS);
    };
    if cfg.wan_is_l3 != 0 {
        // Generic XDP on an L3 device must not touch the packet (docs/kernel.md); not attached
        // there by the loader anyway.
        return Ok(XDP_PASS);
    }
    let verdict = dispatch::wan(ctx, cfg)?;
    act(ctx, cfg, verdict)
}

/// Hands a packet on to the TC program behind, counting a relay XDP did not do.
#[inline(always)]
fn defer(verdict: &Verdict) -> u32 {
    if matches!(
        verdict,
        Verdict::Request(..) | Verdict::Search(..) | Verdict::Reply(..) | Verdict::Notify(..)
    ) {
        count(STAT_XDP_DEFERRED);
    }
    XDP_PASS
}

#[inline(always)]
fn act(ctx: &XdpContext, cfg: &Config, verdict: Verdict) -> Result<u32, i64> {
    match verdict {
        // TC behind us counts these.
        Verdict::Pass | Verdict::PassAs(_) => Ok(XDP_PASS),
        Verdict::Drop(stat) => {
            count(stat);
            Ok(XDP_DROP)
        }
        Verdict::Request(pkt, _)
        | Verdict::Search(pkt)
        | Verdict::Reply(pkt, ..)
        | Verdict::Notify(pkt)
            if !dispatch::hop_left(&pkt) =>
        {
            count(STAT_DROP_TTL);
            Ok(XDP_DROP)
        }
        Verdict::Request(pkt, stat) => {
            let Some((dmac, smac)) = next_hop(ctx, cfg, &pkt) else {
                count(STAT_XDP_DEFERRED);
                return Ok(XDP_PASS);
            };
            if let Some(dropped) = port_control::admit(ctx, cfg, &pkt)? {
                count(dropped);
                return Ok(XDP_DROP);
            }
            set_addr(ctx, &pkt, IP_DST, pkt.dst_be, cfg.cgn_addr_be)?;
            hop(ctx, &pkt)?;
            write_eth(ctx, dmac, smac)?;
            let action = redirect(cfg.wan_ifindex)?;
            trace::request(ctx, stat, &pkt, cfg.cgn_addr_be);
            relayed(action, stat)
        }
        Verdict::Search(pkt) => {
            if let Some(dropped) = ssdp::admit(cfg, &pkt)? {
                count(dropped);
                return Ok(XDP_DROP);
            }
            if pkt.dst_be != SSDP_GROUP_BE {
                set_addr(ctx, &pkt, IP_DST, pkt.dst_be, SSDP_GROUP_BE)?;
            }
            hop(ctx, &pkt)?;
            write_eth(ctx, SSDP_GROUP_MAC, cfg.wan_mac)?;
            let action = redirect(cfg.wan_ifindex)?;
            trace::search(ctx, &pkt);
            relayed(action, STAT_SEARCH_OUT)
        }
        Verdict::Reply(pkt, stat, entry) => {
            // Grants go to `GRANTS` from TC, which can copy them (`grants::report`).
            if cfg.flags & FLAG_XDP_WAN_REDIRECT == 0
                || grants::kind(ctx, cfg, &pkt) != grants::Kind::Other
            {
                count(STAT_XDP_DEFERRED);
                return Ok(XDP_PASS);
            }
            let mac = port_control::touch(entry);
            set_addr(ctx, &pkt, IP_SRC, pkt.src_be, cfg.lan_addr_be)?;
            hop(ctx, &pkt)?;
            write_eth(ctx, mac, cfg.lan_mac)?;
            let action = redirect(cfg.lan_ifindex)?;
            trace::reply(ctx, stat, &pkt);
            relayed(action, stat)
        }
        Verdict::Notify(pkt) => {
            if cfg.flags & FLAG_XDP_WAN_REDIRECT == 0 {
                count(STAT_XDP_DEFERRED);
                return Ok(XDP_PASS);
            }
            set_addr(ctx, &pkt, IP_SRC, pkt.src_be, cfg.lan_addr_be)?;
            hop(ctx, &pkt)?;
            write_eth(ctx, SSDP_GROUP_MAC, cfg.lan_mac)?;
            let action = redirect(cfg.lan_ifindex)?;
            trace::notify(ctx, &pkt);
            relayed(action, STAT_NOTIFY_IN)
        }
    }
}

#[inline(always)]
fn relayed(action: u32, stat: u32) -> Result<u32, i64> {
    count(stat);
    count(STAT_XDP_RELAYED);
    Ok(action)
}

/// `(dst MAC, src MAC)` of the CGN's next hop out of the WAN device, when the kernel's FIB
/// and neighbour table know it; `None` leaves the packet to TC.
#[inline(always)]
fn next_hop(ctx: &XdpContext, cfg: &Config, pkt: &Udp4) -> Option<([u8; 6], [u8; 6])> {
    // SAFETY: all-zero is a valid bpf_fib_lookup (a plain C struct of integers).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_UDP;
    params.sport = pkt.sport_be;
    params.dport = pkt.dport_be;
    params.__bindgen_anon_1.tot_len = pkt.tot_len;
    // As if forwarded from the LAN device (the lookup checks forwarding on it).
    params.ifindex = cfg.lan_ifindex;
    params.__bindgen_anon_3.ipv4_src = pkt.src_be;
    params.__bindgen_anon_4.ipv4_dst = cfg.cgn_addr_be;
    // SAFETY: valid context and a params struct of the size given.
    let ret = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || params.ifindex != cfg.wan_ifindex {
        return None;
    }
    Some((params.dmac, params.smac))
}

#[inline(always)]
fn store<T>(ctx: &XdpContext, offset: usize, value: &T) -> Result<(), i64> {
    // SAFETY: the helper reads `size_of::<T>()` bytes from `value`.
    let ret = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            offset as u32,
            (value as *const T).cast_mut().cast(),
            size_of::<T>() as u32,
        )
    };
    if ret == 0 { Ok(()) } else { Err(ret) }
}

/// Replaces the IPv4 address at `field` (`IP_SRC` / `IP_DST`), updating the IP header
/// checksum and the UDP checksum (pseudo-header) by RFC 1624; an absent (zero) UDP checksum
/// stays absent.
#[inline(always)]
fn set_addr(
    ctx: &XdpContext,
    pkt: &Udp4,
    field: usize,
    old_be: u32,
    new_be: u32,
) -> Result<(), i64> {
    let ip_csum = u16::from_be(ctx.load::<u16>(pkt.l3 + IP_CSUM)?);
    let udp_csum = u16::from_be(ctx.load::<u16>(pkt.l4 + UDP_CSUM)?);
    store(
        ctx,
        pkt.l3 + IP_CSUM,
        &csum_replace_u32(ip_csum, old_be, new_be).to_be(),
    )?;
    store(
        ctx,
        pkt.l4 + UDP_CSUM,
        &udp_csum_replace_u32(udp_csum, old_be, new_be).to_be(),
    )?;
    store(ctx, pkt.l3 + field, &new_be)
}

/// TTL - 1 with the IP header checksum updated by RFC 1624 (the TTL is above 1, `dispatch`).
#[inline(always)]
fn hop(ctx: &XdpContext, pkt: &Udp4) -> Result<(), i64> {
    let ttl = pkt.ttl.wrapping_sub(1);
    let ip_csum = u16::from_be(ctx.load::<u16>(pkt.l3 + IP_CSUM)?);
    let updated = csum_replace_u16(ip_csum, ttl_word(pkt.ttl), ttl_word(ttl));
    store(ctx, pkt.l3 + IP_CSUM, &updated.to_be())?;
    store(ctx, pkt.l3 + IP_TTL, &ttl)
}

#[inline(always)]
fn write_eth(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), i64> {
    let mut hdr = [0u8; ETH_HLEN];
    hdr[..6].copy_from_slice(&dst);
    hdr[6..12].copy_from_slice(&src);
    hdr[12..].copy_from_slice(&ETH_P_IP);
    store(ctx, 0, &hdr)
}

/// `XDP_REDIRECT` to `ifindex` (the transmit happens after the program returns; a target
/// that cannot take it drops the frame, which is why the loader decides what may redirect).
#[inline(always)]
fn redirect(ifindex: u32) -> Result<u32, i64> {
    // SAFETY: helper call with valid scalar arguments.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret == i64::from(aya_ebpf::bindings::xdp_action::XDP_REDIRECT) {
        Ok(ret as u32)
    } else {
        Err(ret)
    }
}
