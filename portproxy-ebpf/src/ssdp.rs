//! SSDP (UDP 1900). M-SEARCH from a LAN client leaves on the WAN with the client's own source
//! (multicast to 239.255.255.250; a unicast search to LAN_ADDR:1900 is re-addressed to the
//! group, as the socket relay sends it); the CGN's unicast answers then reach the client by
//! normal routing. NOTIFY from the CGN is multicast on the LAN from LAN_ADDR. Searches from
//! the WAN are never relayed. LOCATION headers are not rewritten here (the socket relay does
//! that when its HTTP relay runs).

use portproxy_common::{Config, STAT_DROP_RATE_LIMIT, STAT_SEARCH_FROM_WAN};

use crate::{
    dispatch::Verdict,
    limit,
    packet::{Packet, Udp4},
};

const M_SEARCH: [u8; 8] = *b"M-SEARCH";
const NOTIFY: [u8; 8] = *b"NOTIFY *";

/// Does the payload start with `word`?
#[inline(always)]
fn starts_with<P: Packet>(p: &P, pkt: &Udp4, word: &[u8; 8]) -> bool {
    if !pkt.complete || pkt.payload_len < word.len() {
        return false;
    }
    matches!(p.load::<[u8; 8]>(pkt.payload()), Ok(start) if start == *word)
}

/// LAN -> WAN: `pkt` is UDP to 239.255.255.250:1900 or LAN_ADDR:1900 from a LAN host.
#[inline(always)]
pub fn from_lan<P: Packet>(p: &P, pkt: Udp4) -> Verdict {
    if starts_with(p, &pkt, &M_SEARCH) {
        Verdict::Search(pkt)
    } else {
        // NOTIFY from LAN devices and anything else stays on the LAN.
        Verdict::Pass
    }
}

/// Admits an M-SEARCH about to be relayed: one token of its source address's bucket, shared
/// with its NAT-PMP/PCP requests (`limit`). `Some(stat)`: drop the search and count `stat`.
#[inline(always)]
pub fn admit(pkt: &Udp4) -> Result<Option<u32>, i64> {
    let charged = limit::charge(pkt.src_be, limit::now())?;
    Ok(charged.is_none().then_some(STAT_DROP_RATE_LIMIT))
}

/// WAN -> LAN: `pkt` is UDP to 239.255.255.250:1900 arriving on the WAN.
#[inline(always)]
pub fn from_wan<P: Packet>(p: &P, cfg: &Config, pkt: Udp4) -> Verdict {
    if starts_with(p, &pkt, &M_SEARCH) {
        return Verdict::PassAs(STAT_SEARCH_FROM_WAN);
    }
    if pkt.src_be != cfg.cgn_addr_be || !starts_with(p, &pkt, &NOTIFY) {
        return Verdict::Pass;
    }
    Verdict::Notify(pkt)
}
