//! Entry points of the portproxy fast path, named by hook and side. What happens to a packet
//! is decided in `dispatch`; the per-protocol work is in `port_control` and `ssdp`, header
//! parsing in `packet`, checksums in `csum`, the way out in `redirect`.
#![no_std]
#![no_main]

mod csum;
mod dispatch;
mod maps;
mod packet;
mod port_control;
mod redirect;
mod ssdp;
mod stats;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use portproxy_common::STAT_ERRORS;

/// Packets a LAN client sends to the CPE (br-lan ingress).
#[classifier]
pub fn tc_lan_ingress(ctx: TcContext) -> i32 {
    finish(dispatch::lan_ingress(&ctx))
}

/// Packets arriving from the softwire / WAN (ingress of the WAN device, L2 or L3).
#[classifier]
pub fn tc_wan_ingress(ctx: TcContext) -> i32 {
    finish(dispatch::wan_ingress(&ctx))
}

/// A helper that failed (map full and not evictable, bad offset, redirect refused) leaves
/// the packet to the normal stack, counted.
#[inline(always)]
fn finish(result: Result<i32, i64>) -> i32 {
    match result {
        Ok(action) => action,
        Err(_) => {
            stats::count(STAT_ERRORS);
            TC_ACT_OK as i32
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
