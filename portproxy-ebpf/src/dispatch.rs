//! Where each packet's fate is decided, once for both hooks: `lan` and `wan` parse the
//! packet through `Packet` (TC or XDP) and return a `Verdict`; `tc` and `xdp` carry it out
//! (rewrite, redirect, count) each with the means of its hook.

use portproxy_common::{
    ClientValue, Config, FLAG_PORT_CONTROL, FLAG_SSDP, SSDP_GROUP_BE, STAT_DROP_MALFORMED,
    STAT_DROP_NOT_ON_LAN, STAT_PASSED_OWN,
};

use crate::{
    packet::{self, ETH_HLEN, Packet, Udp4},
    port_control, ssdp,
};

/// What to do with a packet.
pub enum Verdict {
    /// Not ours: to the stack (`STAT_PASSED`).
    Pass,
    /// To the stack, counted as the given `STAT_*` (own source, M-SEARCH from the WAN).
    PassAs(u32),
    /// Dropped, counted as the given `STAT_*`.
    Drop(u32),
    /// A well-formed NAT-PMP/PCP request from a LAN client: to the CGN, with the client's
    /// source kept and the client remembered in `CLIENTS`. The `STAT_*` of its protocol.
    Request(Udp4, u32),
    /// An SSDP M-SEARCH from a LAN client: to the group on the WAN.
    Search(Udp4),
    /// A well-formed NAT-PMP/PCP reply from the CGN for the client of this `CLIENTS` entry:
    /// to that client, from the LAN address. The `STAT_*` of its protocol.
    Reply(Udp4, u32, *mut ClientValue),
    /// An SSDP NOTIFY from the CGN: to the group on the LAN, from the LAN address.
    Notify(Udp4),
}

/// As a router, relay only what has a hop left: `tc` and `xdp` drop a packet to relay that
/// arrived with TTL 1 or 0 (`STAT_DROP_TTL`) and send the rest with TTL - 1. Without this,
/// two relays facing each other pass a search back and forth until the rate limit stops it.
/// (Checked where a verdict is carried out, not by rewriting the verdict here: moving a
/// `Verdict` through one more match made LLVM copy its undefined padding, which the
/// verifier refuses.)
#[inline(always)]
pub fn hop_left(pkt: &Udp4) -> bool {
    pkt.ttl > 1
}

/// Sent by the CPE itself: never relayed again (no loops).
#[inline(always)]
fn own_source(cfg: &Config, pkt: &Udp4) -> bool {
    pkt.src_be == cfg.lan_addr_be || pkt.src_be == cfg.wan_addr_be
}

/// Inside the LAN prefix (`lan_mask_be`). A source outside it on the LAN device is spoofed
/// (or misconfigured): relayed in its name, the CGN would map for and answer a third party.
#[inline(always)]
fn on_lan(cfg: &Config, pkt: &Udp4) -> bool {
    (pkt.src_be ^ cfg.lan_addr_be) & cfg.lan_mask_be == 0
}

/// Multicast (224.0.0.0/4, e.g. NAT-PMP announcements to 224.0.0.1) or limited broadcast.
#[inline(always)]
fn multicast_or_broadcast(addr_be: u32) -> bool {
    let first = addr_be.to_ne_bytes()[0];
    first & 0xf0 == 0xe0 || addr_be == u32::MAX
}

/// A packet arriving on the LAN device (always Ethernet).
#[inline(always)]
pub fn lan<P: Packet>(p: &P, cfg: &Config) -> Result<Verdict, i64> {
    if !packet::is_ethernet_ipv4(p) {
        return Ok(Verdict::Pass);
    }
    let Some(pkt) = packet::udp4(p, ETH_HLEN) else {
        return Ok(Verdict::Pass);
    };
    if pkt.first_fragment {
        // Nothing to relay in pieces: to the stack, unless it declares a length no
        // NAT-PMP/PCP request can have (the socket relay would drop it once reassembled).
        let ours = cfg.flags & FLAG_PORT_CONTROL != 0
            && pkt.dport_be == cfg.port_control_port_be
            && pkt.dst_be == cfg.lan_addr_be
            && !own_source(cfg, &pkt)
            && on_lan(cfg, &pkt);
        return Ok(if ours && port_control::oversized(&pkt) {
            Verdict::Drop(STAT_DROP_MALFORMED)
        } else {
            Verdict::Pass
        });
    }
    if own_source(cfg, &pkt) {
        return Ok(Verdict::PassAs(STAT_PASSED_OWN));
    }
    if cfg.flags & FLAG_PORT_CONTROL != 0
        && pkt.dport_be == cfg.port_control_port_be
        && pkt.dst_be == cfg.lan_addr_be
    {
        if !on_lan(cfg, &pkt) {
            return Ok(Verdict::Drop(STAT_DROP_NOT_ON_LAN));
        }
        return port_control::request(p, cfg, pkt);
    }
    if cfg.flags & FLAG_SSDP != 0
        && pkt.dport_be == cfg.ssdp_port_be
        && (pkt.dst_be == SSDP_GROUP_BE || pkt.dst_be == cfg.lan_addr_be)
    {
        let on_lan = on_lan(cfg, &pkt);
        return Ok(match ssdp::from_lan(p, pkt) {
            // What stays on the LAN anyway (NOTIFY, answers) is not ours to judge.
            Verdict::Pass => Verdict::Pass,
            _ if !on_lan => Verdict::Drop(STAT_DROP_NOT_ON_LAN),
            verdict => verdict,
        });
    }
    Ok(Verdict::Pass)
}

/// A packet arriving on the WAN device: Ethernet, or bare IP on an L3 softwire
/// (`wan_is_l3`).
#[inline(always)]
pub fn wan<P: Packet>(p: &P, cfg: &Config) -> Result<Verdict, i64> {
    let l3 = if cfg.wan_is_l3 != 0 {
        // No MAC header: skb->protocol is not checked (a test run derives it from bytes
        // that are not an Ethernet header); `udp4` checks the IP version nibble.
        0
    } else {
        if !packet::is_ethernet_ipv4(p) {
            return Ok(Verdict::Pass);
        }
        ETH_HLEN
    };
    let Some(pkt) = packet::udp4(p, l3) else {
        return Ok(Verdict::Pass);
    };
    if pkt.first_fragment {
        return Ok(Verdict::Pass);
    }
    if own_source(cfg, &pkt) {
        return Ok(Verdict::PassAs(STAT_PASSED_OWN));
    }
    if cfg.flags & FLAG_PORT_CONTROL != 0
        && pkt.sport_be == cfg.port_control_port_be
        && pkt.dst_be != cfg.wan_addr_be
        && !multicast_or_broadcast(pkt.dst_be)
    {
        return port_control::reply(p, cfg, pkt);
    }
    if cfg.flags & FLAG_SSDP != 0 && pkt.dport_be == cfg.ssdp_port_be && pkt.dst_be == SSDP_GROUP_BE
    {
        return Ok(ssdp::from_wan(p, cfg, pkt));
    }
    Ok(Verdict::Pass)
}
