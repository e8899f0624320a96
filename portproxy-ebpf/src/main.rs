//! Entry points of the portproxy fast path, named by hook and side. What happens to a packet
//! is decided once in `dispatch` (per protocol in `port_control` and `ssdp`, headers parsed
//! through `packet::Packet` for both hooks); `tc` and `xdp` carry the decision out (TC with
//! the kernel's checksum and redirect helpers in `csum` and `redirect`, XDP by hand), charging
//! each relayed request and search once against its client's rate limit and quota (`limit`);
//! with `-vv`, `trace` logs each relayed packet.
#![no_std]
#![no_main]

mod csum;
mod dispatch;
mod grants;
mod limit;
mod maps;
mod packet;
mod port_control;
mod redirect;
mod ssdp;
mod stats;
mod tc;
mod trace;
mod xdp;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action::XDP_PASS},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use portproxy_common::STAT_ERRORS;

/// Packets a LAN client sends to the CPE (br-lan ingress).
#[classifier]
pub fn tc_lan_ingress(ctx: TcContext) -> i32 {
    finish(tc::lan_ingress(&ctx), TC_ACT_OK as i32)
}

/// Packets arriving from the softwire / WAN (ingress of the WAN device, L2 or L3).
#[classifier]
pub fn tc_wan_ingress(ctx: TcContext) -> i32 {
    finish(tc::wan_ingress(&ctx), TC_ACT_OK as i32)
}

/// The LAN device's XDP hook (skb mode on a bridge), in front of `tc_lan_ingress`.
#[xdp]
pub fn xdp_lan(ctx: XdpContext) -> u32 {
    finish(xdp::lan(&ctx), XDP_PASS)
}

/// An Ethernet WAN device's XDP hook (native where the driver has it), in front of
/// `tc_wan_ingress`.
#[xdp]
pub fn xdp_wan(ctx: XdpContext) -> u32 {
    finish(xdp::wan(&ctx), XDP_PASS)
}

/// A helper that failed (map full and not evictable, bad offset, redirect refused) leaves
/// the packet to the normal stack (after XDP: to the TC program), counted.
#[inline(always)]
fn finish<T>(result: Result<T, i64>, pass: T) -> T {
    match result {
        Ok(action) => action,
        Err(_) => {
            stats::count(STAT_ERRORS);
            pass
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible so the kernel allows GPL-only helpers (bpf_redirect_neigh, bpf_ktime_get_boot_ns).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
