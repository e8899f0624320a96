//! One debug line per relayed packet (`portproxy -vv`), through aya-log.
//!
//! Cost when off: the daemon sets aya-log's `AYA_LOG_LEVEL` global before loading (0 below
//! `-vv`). It is read-only data, so the verifier knows the level check is false and removes
//! these calls as dead code: the programs run as if they had none.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::debug;
use portproxy_common::{STAT_PCP_TO_CGN, STAT_PCP_TO_CLIENT};

use crate::packet::Udp4;

#[inline(always)]
fn protocol(stat: u32) -> &'static str {
    if stat == STAT_PCP_TO_CGN || stat == STAT_PCP_TO_CLIENT {
        "PCP"
    } else {
        "NAT-PMP"
    }
}

/// A request relayed from a LAN client to the CGN (`stat`: its protocol's counter).
#[inline(always)]
pub fn request<C: EbpfContext>(ctx: &C, stat: u32, pkt: &Udp4, cgn_be: u32) {
    debug!(
        ctx,
        "{} request {:i}:{} -> CGN {:i} (fast path)",
        protocol(stat),
        pkt.src_be.to_ne_bytes(),
        u16::from_be(pkt.sport_be),
        cgn_be.to_ne_bytes()
    );
}

/// A reply relayed from the CGN to its client.
#[inline(always)]
pub fn reply<C: EbpfContext>(ctx: &C, stat: u32, pkt: &Udp4) {
    debug!(
        ctx,
        "{} reply CGN {:i} -> {:i}:{} (fast path)",
        protocol(stat),
        pkt.src_be.to_ne_bytes(),
        pkt.dst_be.to_ne_bytes(),
        u16::from_be(pkt.dport_be)
    );
}

/// An M-SEARCH relayed from a LAN client to the WAN.
#[inline(always)]
pub fn search<C: EbpfContext>(ctx: &C, pkt: &Udp4) {
    debug!(
        ctx,
        "M-SEARCH {:i}:{} -> WAN (fast path)",
        pkt.src_be.to_ne_bytes(),
        u16::from_be(pkt.sport_be)
    );
}

/// A NOTIFY from the CGN multicast on the LAN.
#[inline(always)]
pub fn notify<C: EbpfContext>(ctx: &C, pkt: &Udp4) {
    debug!(
        ctx,
        "NOTIFY CGN {:i} -> LAN (fast path)",
        pkt.src_be.to_ne_bytes()
    );
}
