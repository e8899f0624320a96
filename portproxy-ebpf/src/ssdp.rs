//! SSDP (UDP 1900). M-SEARCH from a LAN client leaves on the WAN with the client's own source
//! (multicast to 239.255.255.250; a unicast search to LAN_ADDR:1900 is re-addressed to the
//! group, as the socket relay sends it); the CGN's unicast answers then reach the client by
//! normal routing. NOTIFY from the CGN is multicast on the LAN from LAN_ADDR. Searches from
//! the WAN are never relayed. LOCATION headers are not rewritten here (the socket relay does
//! that when its HTTP relay runs).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use portproxy_common::{
    Config, SSDP_GROUP_BE, SSDP_GROUP_MAC, STAT_NOTIFY_IN, STAT_SEARCH_FROM_WAN, STAT_SEARCH_OUT,
};

use crate::{
    csum,
    packet::{IP_DST, IP_SRC, Udp4},
    redirect,
    stats::{count, pass},
};

const M_SEARCH: [u8; 8] = *b"M-SEARCH";
const NOTIFY: [u8; 8] = *b"NOTIFY *";

/// Does the payload start with `word`?
#[inline(always)]
fn starts_with(ctx: &TcContext, pkt: &Udp4, word: &[u8; 8]) -> bool {
    if !pkt.complete || pkt.payload_len < word.len() {
        return false;
    }
    matches!(ctx.load::<[u8; 8]>(pkt.payload()), Ok(start) if start == *word)
}

/// LAN -> WAN: `pkt` is UDP to 239.255.255.250:1900 or LAN_ADDR:1900 from a LAN host.
#[inline(always)]
pub fn from_lan(ctx: &TcContext, cfg: &Config, pkt: &Udp4) -> Result<i32, i64> {
    if !starts_with(ctx, pkt, &M_SEARCH) {
        // NOTIFY from LAN devices and anything else stays on the LAN.
        return Ok(pass());
    }
    if pkt.dst_be != SSDP_GROUP_BE {
        csum::set_addr(ctx, pkt, IP_DST, pkt.dst_be, SSDP_GROUP_BE)?;
    }
    let action = redirect::to_wan_multicast(ctx, cfg, SSDP_GROUP_MAC)?;
    count(STAT_SEARCH_OUT);
    Ok(action)
}

/// WAN -> LAN: `pkt` is UDP to 239.255.255.250:1900 arriving on the WAN.
#[inline(always)]
pub fn from_wan(ctx: &TcContext, cfg: &Config, pkt: &Udp4) -> Result<i32, i64> {
    if starts_with(ctx, pkt, &M_SEARCH) {
        count(STAT_SEARCH_FROM_WAN);
        return Ok(TC_ACT_OK as i32);
    }
    if pkt.src_be != cfg.cgn_addr_be || !starts_with(ctx, pkt, &NOTIFY) {
        return Ok(pass());
    }
    csum::set_addr(ctx, pkt, IP_SRC, pkt.src_be, cfg.lan_addr_be)?;
    let action = redirect::to_lan(ctx, cfg, SSDP_GROUP_MAC)?;
    count(STAT_NOTIFY_IN);
    Ok(action)
}
