//! Grants for the mapping table: a success response from the CGN to a mapping request (NAT-PMP
//! map, PCP MAP, deletes included) that `port_control::reply` matched to a `CLIENTS` entry is
//! copied whole into the `GRANTS` ring buffer with its client tuple (`FLAG_REPORT_GRANTS`).
//! With `FLAG_HOLD_GRANTS` the program does not relay it: userspace opens the firewall hole
//! first, then delivers it. NAT-PMP's public address answers are reported too (the table
//! shows the external address; NAT-PMP grants do not carry it), and always relayed here.
//! Only these take this way; every other packet stays in the kernel.

use aya_ebpf::{
    btf_maps::RingBuf, helpers::generated::bpf_skb_load_bytes, macros::btf_map, programs::TcContext,
};
use portproxy_common::{
    ClientValue, Config, FLAG_HOLD_GRANTS, FLAG_REPORT_GRANTS, GRANT_MSG_LEN, GRANTS_BYTES,
    GrantEvent, STAT_GRANT_LOST, STAT_GRANT_REPORTED,
};

use crate::{
    packet::{Packet, Udp4},
    port_control,
    stats::count,
};

const RESPONSE_BIT: u8 = 0x80;
const NATPMP_MAP_RESPONSE_LEN: usize = 16;
const NATPMP_ADDRESS_RESPONSE_LEN: usize = 12;
const PCP_MAP_RESPONSE_LEN: usize = 24 + 36;
const PCP_OPCODE_MAP: u8 = 1;

#[btf_map]
static GRANTS: RingBuf<GrantEvent, { GRANTS_BYTES as usize }> = RingBuf::new();

/// What a well-formed response from the CGN is to the mapping table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing to learn: relayed as it is.
    Other,
    /// A success answer to a mapping request (NAT-PMP opcode 1 or 2 answered with result 0,
    /// PCP MAP with result 0): reported, and held with `FLAG_HOLD_GRANTS`.
    Grant,
    /// NAT-PMP's public address, result 0: reported, never held.
    Address,
}

#[inline(always)]
pub fn kind<P: Packet>(p: &P, cfg: &Config, pkt: &Udp4) -> Kind {
    if cfg.flags & FLAG_REPORT_GRANTS == 0 {
        return Kind::Other;
    }
    let Ok([version, opcode, result_hi, result_lo]) = p.load::<[u8; 4]>(pkt.payload()) else {
        return Kind::Other;
    };
    let success = result_hi == 0 && result_lo == 0;
    match (version, opcode) {
        (0, RESPONSE_BIT) if success && pkt.payload_len >= NATPMP_ADDRESS_RESPONSE_LEN => {
            Kind::Address
        }
        (0, op)
            if (op == RESPONSE_BIT | 1 || op == RESPONSE_BIT | 2)
                && success
                && pkt.payload_len >= NATPMP_MAP_RESPONSE_LEN =>
        {
            Kind::Grant
        }
        (v, op)
            if v != 0
                && op == RESPONSE_BIT | PCP_OPCODE_MAP
                && result_lo == 0
                && pkt.payload_len >= PCP_MAP_RESPONSE_LEN =>
        {
            Kind::Grant
        }
        _ => Kind::Other,
    }
}

/// Copies the response in `pkt` (of `kind` `Grant` or `Address`, for the client of
/// `entry`) into `GRANTS`. `Ok(true)`: the program must not relay it (a grant, held for
/// userspace); `Ok(false)`: relay it as any reply (an address answer, or no room in the
/// ring: then counted as lost). Every grant is held, also one that answers no request in
/// flight (the CGN's second answer to a retransmitted request): userspace delivers the
/// events in order, so that one cannot overtake the first answer while its hole opens.
#[inline(always)]
pub fn report(
    ctx: &TcContext,
    cfg: &Config,
    pkt: &Udp4,
    kind: Kind,
    entry: *mut ClientValue,
) -> Result<bool, i64> {
    let matched = kind == Kind::Address || port_control::answers(ctx, pkt, entry);
    let held = kind == Kind::Grant && cfg.flags & FLAG_HOLD_GRANTS != 0;
    let len = pkt.payload_len;
    // Checked again for the verifier: the copy's length must be known to fit.
    if len == 0 || len > GRANT_MSG_LEN {
        return Ok(false);
    }
    let Some(mut entry) = GRANTS.reserve(0) else {
        count(STAT_GRANT_LOST);
        return Ok(false);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring buffer record of `GrantEvent`'s size, ours
    // until submitted or discarded; `ctx.skb.skb` is the program's own context, and the copy
    // of `len` (1..=GRANT_MSG_LEN) bytes fits `msg`.
    let copied = unsafe {
        (*event).client_addr_be = pkt.dst_be;
        (*event).client_port_be = pkt.dport_be;
        (*event).len = len as u16;
        (*event).held = u8::from(held);
        (*event).matched = u8::from(matched);
        (*event)._pad = [0; 2];
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            pkt.payload() as u32,
            (*event).msg.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if copied != 0 {
        entry.discard(0);
        return Err(copied);
    }
    entry.submit(0);
    count(STAT_GRANT_REPORTED);
    Ok(held)
}
