#![no_std]
#![no_main]

mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use portproxy_common::STAT_PASSED;

/// LAN-side XDP hook. For now it only counts what it sees and hands it to the stack.
#[xdp]
pub fn xdp_lan(_ctx: XdpContext) -> u32 {
    stats::count(STAT_PASSED);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible so the kernel allows GPL-only helpers (e.g. bpf_fib_lookup for the fast path).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
