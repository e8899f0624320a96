//! Sending a rewritten packet out of the other side.
//!
//! - To the WAN: an L2 WAN gets `bpf_redirect_neigh` (the kernel resolves the next hop to the
//!   CGN and writes both MACs) for unicast, or explicit MACs + `bpf_redirect` for multicast
//!   (`redirect_neigh` refuses multicast); an L3 WAN gets `bpf_redirect`, which strips the
//!   Ethernet header the LAN packet still carries.
//! - To the LAN: a packet from an L3 WAN first gets room for an Ethernet header
//!   (`bpf_skb_change_head`); then dst/src MAC and ethertype are written and the packet is
//!   redirected to the egress of the LAN device (the bridge forwards it by its FDB).

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_skb_change_head},
    programs::TcContext,
};
use portproxy_common::Config;

use crate::packet::ETH_HLEN;

const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();

/// Writes a full Ethernet header at offset 0.
#[inline(always)]
fn write_eth(ctx: &TcContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), i64> {
    let mut hdr = [0u8; ETH_HLEN];
    hdr[..6].copy_from_slice(&dst);
    hdr[6..12].copy_from_slice(&src);
    hdr[12..].copy_from_slice(&ETH_P_IP);
    ctx.store(0, &hdr, 0)
}

/// Maps a redirect helper's return value to an action (`Err` when it refused).
#[inline(always)]
fn action(ret: i64) -> Result<i32, i64> {
    if ret == i64::from(TC_ACT_REDIRECT) {
        Ok(ret as i32)
    } else {
        Err(ret)
    }
}

/// A LAN packet (with its Ethernet header) to the unicast next hop on the WAN.
#[inline(always)]
pub fn to_wan_unicast(cfg: &Config) -> Result<i32, i64> {
    // SAFETY: helper call with valid scalar arguments; NULL params = look the next hop up.
    let ret = unsafe {
        if cfg.wan_is_l3 != 0 {
            bpf_redirect(cfg.wan_ifindex, 0)
        } else {
            bpf_redirect_neigh(cfg.wan_ifindex, core::ptr::null_mut(), 0, 0)
        }
    };
    action(ret)
}

/// A LAN packet (with its Ethernet header) to a multicast group on the WAN.
#[inline(always)]
pub fn to_wan_multicast(ctx: &TcContext, cfg: &Config, group_mac: [u8; 6]) -> Result<i32, i64> {
    if cfg.wan_is_l3 == 0 {
        write_eth(ctx, group_mac, cfg.wan_mac)?;
    }
    // SAFETY: helper call with valid scalar arguments.
    action(unsafe { bpf_redirect(cfg.wan_ifindex, 0) })
}

/// A WAN packet to `dst_mac` on the LAN. On an L3 WAN the packet has no Ethernet header
/// yet: one is added first, so every offset into the packet moves by `ETH_HLEN`.
#[inline(always)]
pub fn to_lan(ctx: &TcContext, cfg: &Config, dst_mac: [u8; 6]) -> Result<i32, i64> {
    if cfg.wan_is_l3 != 0 {
        // SAFETY: `ctx.skb.skb` is the program's own context pointer.
        let ret = unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_HLEN as u32, 0) };
        if ret != 0 {
            return Err(ret);
        }
    }
    write_eth(ctx, dst_mac, cfg.lan_mac)?;
    // SAFETY: helper call with valid scalar arguments.
    action(unsafe { bpf_redirect(cfg.lan_ifindex, 0) })
}
