//! Where each packet's fate is decided: which protocol handler (if any) it goes to.

use aya_ebpf::programs::TcContext;
use portproxy_common::{Config, FLAG_PORT_CONTROL, FLAG_SSDP, SSDP_GROUP_BE, STAT_PASSED_OWN};

use crate::{
    maps,
    packet::{self, ETH_HLEN, Udp4},
    port_control, ssdp,
    stats::{count, pass},
};

/// Sent by the CPE itself: never relayed again (no loops).
#[inline(always)]
fn own_source(cfg: &Config, pkt: &Udp4) -> bool {
    pkt.src_be == cfg.lan_addr_be || pkt.src_be == cfg.wan_addr_be
}

/// Multicast (224.0.0.0/4, e.g. NAT-PMP announcements to 224.0.0.1) or limited broadcast.
#[inline(always)]
fn multicast_or_broadcast(addr_be: u32) -> bool {
    let first = addr_be.to_ne_bytes()[0];
    first & 0xf0 == 0xe0 || addr_be == u32::MAX
}

/// Ingress of the LAN device (always Ethernet).
#[inline(always)]
pub fn lan_ingress(ctx: &TcContext) -> Result<i32, i64> {
    let Some(cfg) = maps::config() else {
        return Ok(pass());
    };
    if !packet::is_ethernet_ipv4(ctx) {
        return Ok(pass());
    }
    let Some(pkt) = packet::udp4(ctx, ETH_HLEN) else {
        return Ok(pass());
    };
    if own_source(cfg, &pkt) {
        count(STAT_PASSED_OWN);
        return Ok(pass_uncounted());
    }
    if cfg.flags & FLAG_PORT_CONTROL != 0
        && pkt.dport_be == cfg.port_control_port_be
        && pkt.dst_be == cfg.lan_addr_be
    {
        return port_control::request(ctx, cfg, &pkt);
    }
    if cfg.flags & FLAG_SSDP != 0
        && pkt.dport_be == cfg.ssdp_port_be
        && (pkt.dst_be == SSDP_GROUP_BE || pkt.dst_be == cfg.lan_addr_be)
    {
        return ssdp::from_lan(ctx, cfg, &pkt);
    }
    Ok(pass())
}

/// Ingress of the WAN device: Ethernet, or bare IP on an L3 softwire (`wan_is_l3`).
#[inline(always)]
pub fn wan_ingress(ctx: &TcContext) -> Result<i32, i64> {
    let Some(cfg) = maps::config() else {
        return Ok(pass());
    };
    let l3 = if cfg.wan_is_l3 != 0 {
        // No MAC header: skb->protocol is not checked (a test run derives it from bytes
        // that are not an Ethernet header); `udp4` checks the IP version nibble.
        0
    } else {
        if !packet::is_ethernet_ipv4(ctx) {
            return Ok(pass());
        }
        ETH_HLEN
    };
    let Some(pkt) = packet::udp4(ctx, l3) else {
        return Ok(pass());
    };
    if own_source(cfg, &pkt) {
        count(STAT_PASSED_OWN);
        return Ok(pass_uncounted());
    }
    if cfg.flags & FLAG_PORT_CONTROL != 0
        && pkt.sport_be == cfg.port_control_port_be
        && pkt.dst_be != cfg.wan_addr_be
        && !multicast_or_broadcast(pkt.dst_be)
    {
        return port_control::reply(ctx, cfg, &pkt);
    }
    if cfg.flags & FLAG_SSDP != 0 && pkt.dport_be == cfg.ssdp_port_be && pkt.dst_be == SSDP_GROUP_BE
    {
        return ssdp::from_wan(ctx, cfg, &pkt);
    }
    Ok(pass())
}

#[inline(always)]
fn pass_uncounted() -> i32 {
    aya_ebpf::bindings::TC_ACT_OK as i32
}
