//! Address rewrites with the checksum helpers (TC only; see docs/kernel.md).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use crate::packet::{IP_CSUM, IP_TTL, UDP_CSUM, Udp4, ttl_word};

/// Replaces the IPv4 address at `field` (`packet::IP_SRC` or `IP_DST`) of `pkt`, fixing the
/// IP header checksum and the UDP checksum (pseudo-header); a zero (absent) UDP checksum
/// stays zero (`BPF_F_MARK_MANGLED_0`).
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    pkt: &Udp4,
    field: usize,
    old_be: u32,
    new_be: u32,
) -> Result<(), i64> {
    let l4_flags = u64::from(BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) | 4;
    ctx.l4_csum_replace(
        pkt.l4 + UDP_CSUM,
        u64::from(old_be),
        u64::from(new_be),
        l4_flags,
    )?;
    ctx.l3_csum_replace(pkt.l3 + IP_CSUM, u64::from(old_be), u64::from(new_be), 4)?;
    ctx.store(pkt.l3 + field, &new_be, 0)?;
    Ok(())
}

/// Sends `pkt` one hop further: TTL - 1, IP header checksum fixed (the caller has checked
/// that the TTL is above 1, see `dispatch`).
#[inline(always)]
pub fn hop(ctx: &TcContext, pkt: &Udp4) -> Result<(), i64> {
    let ttl = pkt.ttl.wrapping_sub(1);
    ctx.l3_csum_replace(
        pkt.l3 + IP_CSUM,
        u64::from(ttl_word(pkt.ttl)),
        u64::from(ttl_word(ttl)),
        2,
    )?;
    ctx.store(pkt.l3 + IP_TTL, &ttl, 0)?;
    Ok(())
}
