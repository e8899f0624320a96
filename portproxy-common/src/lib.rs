//! Types shared by the eBPF programs and the userspace controller.
//!
//! Every type here is `#[repr(C)]`, fixed width and free of implicit padding (explicit `_pad`
//! fields, a size assertion next to each): the kernel compares map keys byte for byte, so a
//! key with uninitialised padding would never match. Byte order is in the field name (`_be`).
#![no_std]

use core::mem::size_of;

// ---------------------------------------------------------------------------------------------
// STATS: per-CPU array of u64, one counter per packet fate.

/// Not ours (or not enabled): handed to the stack untouched.
pub const STAT_PASSED: u32 = 0;
/// NAT-PMP request relayed from a LAN client to the CGN.
pub const STAT_NATPMP_TO_CGN: u32 = 1;
/// PCP request relayed from a LAN client to the CGN.
pub const STAT_PCP_TO_CGN: u32 = 2;
/// NAT-PMP reply relayed from the CGN to the client.
pub const STAT_NATPMP_TO_CLIENT: u32 = 3;
/// PCP reply relayed from the CGN to the client.
pub const STAT_PCP_TO_CLIENT: u32 = 4;
/// SSDP M-SEARCH relayed from a LAN client to the WAN.
pub const STAT_SEARCH_OUT: u32 = 5;
/// SSDP NOTIFY from the CGN multicast on the LAN.
pub const STAT_NOTIFY_IN: u32 = 6;
/// Malformed NAT-PMP/PCP datagram (either direction), or a truncated IP/UDP packet: dropped.
pub const STAT_DROP_MALFORMED: u32 = 7;
/// UDP to a client's port-control tuple from port 5351 of a host other than the CGN: dropped.
pub const STAT_DROP_NOT_FROM_CGN: u32 = 8;
/// Reply from the CGN for a client tuple not in `CLIENTS`: dropped.
pub const STAT_DROP_NO_ENTRY: u32 = 9;
/// SSDP M-SEARCH arriving on the WAN: never relayed, passed to the stack (which ignores it).
pub const STAT_SEARCH_FROM_WAN: u32 = 10;
/// A helper failed (map update, checksum, store, change_head, redirect): packet passed.
pub const STAT_ERRORS: u32 = 11;
/// Sourced from the CPE's own LAN/WAN address: never re-relayed, passed.
pub const STAT_PASSED_OWN: u32 = 12;
/// Number of `STATS` entries (its `max_entries`).
pub const STAT_COUNT: u32 = 13;

/// Counter names for reports, indexed by `STAT_*`.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "passed",
    "nat-pmp to cgn",
    "pcp to cgn",
    "nat-pmp to client",
    "pcp to client",
    "ssdp search out",
    "ssdp notify in",
    "dropped malformed",
    "dropped not from cgn",
    "dropped no entry",
    "ssdp search from wan",
    "errors",
    "passed own address",
];

// ---------------------------------------------------------------------------------------------
// CLIENTS: LRU hash, client tuple -> where to deliver the CGN's replies.

/// `ClientKey::kind` of a NAT-PMP or PCP exchange (both share port 5351; a NAT-PMP-only CGN
/// answers a PCP request with a version-0 message, so the protocol cannot be part of the key).
pub const KIND_PORT_CONTROL: u8 = 1;

/// A LAN client that sent a port-control request: the reply's destination tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Client IPv4 address, network byte order.
    pub addr_be: u32,
    /// Client UDP port, network byte order.
    pub port_be: u16,
    /// `KIND_*`.
    pub kind: u8,
    /// Always 0.
    pub _pad: u8,
}
const _: () = assert!(size_of::<ClientKey>() == 8 && size_of::<ClientKey>() == 4 + 2 + 1 + 1);

/// Where and since when: the client's MAC and the boot-time clock (`bpf_ktime_get_boot_ns`,
/// userspace `CLOCK_BOOTTIME`) of its last request or reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientValue {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<ClientValue>() == 16 && size_of::<ClientValue>() == 6 + 2 + 8);

/// Default `CLIENTS` capacity: about 96 bytes per entry (kernel.md), 64 KiB in all.
pub const CLIENTS_MAX_ENTRIES: u32 = 1024;

// ---------------------------------------------------------------------------------------------
// CONFIG: array with one entry, written by userspace, re-writable at run time.

/// `Config::flags`: relay NAT-PMP and PCP.
pub const FLAG_PORT_CONTROL: u8 = 1;
/// `Config::flags`: relay SSDP M-SEARCH out and NOTIFY in.
pub const FLAG_SSDP: u8 = 2;

/// Everything the programs need to know about the CPE. All zero (the map's initial state)
/// means "not configured": the programs pass every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The CPE's LAN address (what clients use as gateway), network byte order.
    pub lan_addr_be: u32,
    /// The CPE's WAN (softwire) address, network byte order.
    pub wan_addr_be: u32,
    /// The CGN (AFTR) address, network byte order.
    pub cgn_addr_be: u32,
    pub lan_ifindex: u32,
    pub wan_ifindex: u32,
    /// NAT-PMP/PCP port (5351), network byte order; the same on the LAN and at the CGN.
    pub port_control_port_be: u16,
    /// SSDP port (1900), network byte order.
    pub ssdp_port_be: u16,
    pub lan_mac: [u8; 6],
    /// Unused when `wan_is_l3` (no MAC header on the WAN).
    pub wan_mac: [u8; 6],
    /// 1 when the WAN device has no Ethernet header (ipip6 softwire, TUN).
    pub wan_is_l3: u8,
    /// `FLAG_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
}
const _: () =
    assert!(size_of::<Config>() == 40 && size_of::<Config>() == 5 * 4 + 2 * 2 + 2 * 6 + 4);

/// SSDP multicast group 239.255.255.250, network byte order.
pub const SSDP_GROUP_BE: u32 = u32::from_ne_bytes([239, 255, 255, 250]);
/// Ethernet address of the SSDP group (01:00:5e + low 23 bits of the group).
pub const SSDP_GROUP_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x7f, 0xff, 0xfa];

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding (asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::ClientKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
}
