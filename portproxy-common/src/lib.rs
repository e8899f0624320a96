//! Types shared by the eBPF programs and the userspace controller.
//!
//! Every type here is `#[repr(C)]`, fixed width and free of implicit padding (explicit `_pad`
//! fields, a size assertion next to each): the kernel compares map keys byte for byte, so a
//! key with uninitialised padding would never match. `bytemuck`'s `Pod` derive refuses to
//! compile a type with implicit padding, so that mistake cannot come back unnoticed. Byte order is in the field name (`_be`).
#![no_std]

use core::mem::size_of;

use bytemuck::{Pod, Zeroable};

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
/// Passed up to the daemon: a NAT-PMP/PCP request of a protocol it answers itself
/// (`FLAG_SERVE_NATPMP`, `FLAG_SERVE_PCP`), or a reply from the CGN to a tuple not in
/// `CLIENTS`: an answer to what the daemon asked the CGN as a LAN host (its proxy, the
/// re-creation of mappings), or nobody's. The reply-capture rule (`capture.rs`) routes every
/// datagram from the CGN's port 5351 to the CPE itself, so such a reply reaches the daemon's
/// socket if it asked and is refused by the stack otherwise; it never reaches the LAN (the
/// socket relay treats it the same).
pub const STAT_PASSED_TO_DAEMON: u32 = 9;
/// SSDP M-SEARCH arriving on the WAN: never relayed, passed to the stack (which ignores it).
pub const STAT_SEARCH_FROM_WAN: u32 = 10;
/// A helper failed (map update, checksum, store, change_head, redirect): packet passed.
pub const STAT_ERRORS: u32 = 11;
/// Sourced from the CPE's own LAN/WAN address: never re-relayed, passed.
pub const STAT_PASSED_OWN: u32 = 12;
/// Relayed by an XDP program (`xdp_lan`, `xdp_wan`) rather than by TC. Counted in addition to
/// the protocol's counter (`STAT_NATPMP_TO_CGN`, ...): it tells how much XDP carries.
pub const STAT_XDP_RELAYED: u32 = 13;
/// A packet to relay that an XDP program left to the TC program behind it: next hop not
/// resolved (`bpf_fib_lookup`), route not via the WAN device, or a redirect XDP cannot do in
/// its mode (native `xdp_wan` into a bridge). TC then relays it and counts its fate.
pub const STAT_XDP_DEFERRED: u32 = 14;
/// A NAT-PMP/PCP request or an M-SEARCH from a LAN address whose token bucket in `RATE` is
/// empty (more than twice `Config::rate_per_sec` at once, that rate sustained): dropped.
pub const STAT_DROP_RATE_LIMIT: u32 = 15;
/// A request for a new client tuple from a LAN address that already holds `CLIENT_QUOTA`
/// entries in `CLIENTS`: dropped (its retries on existing tuples still pass).
pub const STAT_DROP_CLIENT_QUOTA: u32 = 16;
/// `CLIENTS` entries the kernel's LRU evicted (the table was full across many clients).
/// Not counted by the programs (an LRU insert does not say whether it evicted): the daemon's
/// aging sweep finds entries that vanished without it removing them and adds them here.
pub const STAT_EVICTED: u32 = 17;
/// A NAT-PMP/PCP request or an M-SEARCH from the LAN whose source address is outside the
/// LAN prefix (`Config::lan_mask_be`): relayed, it would make the CGN map for and answer a
/// third party. Dropped.
pub const STAT_DROP_NOT_ON_LAN: u32 = 18;
/// A datagram from the LAN to the SSDP port starting with "M-SEARCH" that is not a
/// well-formed search (the socket relay's `Message::parse`: at most 2,048 bytes of UTF-8,
/// the start line, a ':' in every header line, a blank line): dropped. Apart from
/// `STAT_DROP_MALFORMED` so that counter stays NAT-PMP/PCP only.
pub const STAT_DROP_MALFORMED_SEARCH: u32 = 19;
/// A packet to relay that arrived with TTL 1 or 0: as a router, the fast path forwards only
/// what has a hop left (and relays the rest with TTL - 1), so two relays facing each other
/// cannot pass a search back and forth. Dropped.
pub const STAT_DROP_TTL: u32 = 20;
/// A success response to a mapping request (or a public address answer) handed to
/// userspace through `GRANTS` (`FLAG_REPORT_GRANTS`); relayed as well unless held
/// (`FLAG_HOLD_GRANTS`, grants only).
pub const STAT_GRANT_REPORTED: u32 = 21;
/// A grant `GRANTS` had no room for: relayed by the program, unknown to the mapping table.
pub const STAT_GRANT_LOST: u32 = 22;
/// Number of `STATS` entries (its `max_entries`).
pub const STAT_COUNT: u32 = 23;

/// Each counter's stable identifier, indexed by `STAT_*`: the key `portproxy stats --json`
/// shows it under, shared with the socket relay's counter for the same fate (the daemon's
/// `stats::Counter` holds the vocabulary and its labels).
pub const STAT_IDS: [&str; STAT_COUNT as usize] = [
    "passed",
    "nat_pmp_to_cgn",
    "pcp_to_cgn",
    "nat_pmp_to_client",
    "pcp_to_client",
    "search_to_cgn",
    "notify_to_lan",
    "dropped_malformed",
    "dropped_not_from_cgn",
    "passed_to_daemon",
    "search_from_wan",
    "errors",
    "passed_own",
    "relayed_by_xdp",
    "xdp_deferred",
    "dropped_rate_limit",
    "dropped_quota",
    "clients_evicted",
    "dropped_not_on_lan",
    "dropped_malformed_search",
    "dropped_ttl",
    "grants_to_daemon",
    "grants_lost",
];

// ---------------------------------------------------------------------------------------------
// CLIENTS: LRU hash, client tuple -> where to deliver the CGN's replies.

/// `ClientKey::kind` of a NAT-PMP or PCP exchange (both share port 5351; a NAT-PMP-only CGN
/// answers a PCP request with a version-0 message, so the protocol cannot be part of the key).
pub const KIND_PORT_CONTROL: u8 = 1;

/// A LAN client that sent a port-control request: the reply's destination tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
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

/// `ClientValue::req_kind`: no mapping request in flight.
pub const REQ_NONE: u8 = 0;
/// `ClientValue::req_kind`: a NAT-PMP map request (`req_proto`: its opcode, 1 UDP, 2 TCP).
pub const REQ_NATPMP: u8 = 1;
/// `ClientValue::req_kind`: a PCP MAP request (`req_proto`: its protocol number, `req_nonce`).
pub const REQ_PCP: u8 = 2;

/// Where and since when: the client's MAC and the boot-time clock (`bpf_ktime_get_boot_ns`,
/// userspace `CLOCK_BOOTTIME`) of its last request or reply; and the client's last mapping
/// request in flight, which only a grant that answers it matches (`REQ_*`, the checks a
/// client makes: RFC 6886 §3.3, RFC 6887 §11.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClientValue {
    pub mac: [u8; 6],
    pub req_kind: u8,
    pub req_proto: u8,
    pub last_seen_ns: u64,
    /// Internal port asked for, network byte order.
    pub req_internal_port_be: u16,
    pub _pad: [u8; 2],
    /// PCP's nonce (zero for NAT-PMP).
    pub req_nonce: [u8; 12],
}
const _: () = assert!(
    size_of::<ClientValue>() == 32 && size_of::<ClientValue>() == 6 + 1 + 1 + 8 + 2 + 2 + 12
);

/// `CLIENTS` capacity as compiled; the daemon sets it from `--max-clients` at load time
/// (about 96 bytes an entry, docs/kernel.md).
pub const CLIENTS_MAX_ENTRIES: u32 = 4096;

// ---------------------------------------------------------------------------------------------
// RATE: LRU hash, LAN client address -> token bucket and number of CLIENTS entries.
//
// One LAN host flooding must not starve the others. Every NAT-PMP/PCP request and M-SEARCH a
// program is about to relay costs its source address one token; an empty bucket drops the
// packet (`STAT_DROP_RATE_LIMIT`). Real clients stay far below: libnatpmp sends a request and
// at most 9 retries (250 ms, doubling), miniupnpc a few M-SEARCHes per discovery. A new
// `CLIENTS` tuple also needs the address to hold fewer than `CLIENT_QUOTA` entries
// (`STAT_DROP_CLIENT_QUOTA`), so one host cannot make the LRU evict everybody else's.

/// The default rate (`--rate-limit`): tokens an address gains per second (sustained
/// requests + searches per second). The programs use `Config::rate_per_sec`.
pub const RATE_PER_SEC: u64 = 10;
/// The default bucket size (twice the default rate): requests + searches an idle address
/// may send at once.
pub const RATE_BURST: u32 = 20;
/// Time that refills one token at the default rate (100 ms).
pub const RATE_TOKEN_NS: u64 = 1_000_000_000 / RATE_PER_SEC;
const _: () = assert!(RATE_PER_SEC > 0 && RATE_TOKEN_NS > 0 && RATE_BURST > 0);
const _: () = assert!(rate_burst(RATE_PER_SEC as u32) == RATE_BURST as u64);
const _: () = assert!(rate_token_ns(RATE_PER_SEC as u32) == RATE_TOKEN_NS);
/// Rates above this (per second) count as this: one token per nanosecond.
pub const RATE_MAX_PER_SEC: u32 = 1_000_000_000;
/// `RateValue::tokens` of a bucket created full: clamped to the burst of the rate in force
/// at its next refill (so the daemon can create one without knowing the rate).
pub const RATE_FULL: u64 = u64::MAX;
/// Time after which an unused bucket is full again, whatever the rate: burst × token time
/// = 2 × rate × (1 s / rate) <= 2 s.
pub const RATE_REFILL_NS: u64 = 2_000_000_000;

/// Bucket size at `rate_per_sec` (> 0): twice the rate.
#[inline(always)]
pub const fn rate_burst(rate_per_sec: u32) -> u64 {
    let rate = if rate_per_sec > RATE_MAX_PER_SEC {
        RATE_MAX_PER_SEC
    } else {
        rate_per_sec
    };
    2 * rate as u64
}

/// Time that earns one token at `rate_per_sec`: at least 1 ns, never a division by zero
/// (a rate of 0, no limit, never gets here in `take`).
#[inline(always)]
pub const fn rate_token_ns(rate_per_sec: u32) -> u64 {
    let rate = if rate_per_sec > RATE_MAX_PER_SEC {
        RATE_MAX_PER_SEC
    } else if rate_per_sec == 0 {
        1
    } else {
        rate_per_sec
    };
    1_000_000_000 / rate as u64
}
const _: () = assert!(rate_burst(u32::MAX) * rate_token_ns(u32::MAX) <= RATE_REFILL_NS);
const _: () = assert!(rate_burst(1) * rate_token_ns(1) <= RATE_REFILL_NS);
const _: () = assert!(rate_burst(7) * rate_token_ns(7) <= RATE_REFILL_NS);

/// `CLIENTS` entries (tuples with an exchange in flight) one LAN address may hold. With the
/// default `--max-clients` 4096, 64 addresses at their quota fill the table.
pub const CLIENT_QUOTA: u32 = 64;
/// `RATE` capacity: LAN addresses tracked at once (about 100 bytes each). An LRU: when more
/// addresses than this are active (spoofed sources), the oldest buckets are forgotten, which
/// only ever lets packets through (a fresh bucket is full), never blocks a client.
pub const RATE_MAX_ENTRIES: u32 = 1024;

/// `RATE` key: a LAN client's IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct RateKey {
    /// Network byte order.
    pub addr_be: u32,
}
const _: () = assert!(size_of::<RateKey>() == 4);

/// `RATE` value: a token bucket and the address's `CLIENTS` entry count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RateValue {
    /// Tokens left, 0..=`rate_burst` (`RATE_FULL` until the first refill).
    pub tokens: u64,
    /// `CLIENTS` entries this address holds: incremented by the program that creates one,
    /// brought back to the table's contents by the daemon's aging sweep (entries it removed,
    /// entries the LRU evicted, increments lost to a race between CPUs).
    pub in_flight: u64,
    /// Boot-time clock (`bpf_ktime_get_boot_ns`) up to which tokens have been credited.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<RateValue>() == 24 && size_of::<RateValue>() == 3 * 8);

impl RateValue {
    /// A bucket seen for the first time at `now_ns`: full (`RATE_FULL`).
    #[inline(always)]
    pub fn new(now_ns: u64) -> RateValue {
        RateValue {
            tokens: RATE_FULL,
            in_flight: 0,
            last_ns: now_ns,
        }
    }

    /// Credits the tokens earned since `last_ns` at `rate_per_sec` (> 0; one per
    /// `rate_token_ns`, at most up to `rate_burst`). No loop, a non-zero divisor, no overflow:
    /// burst × token time <= 2 s, `add * token_ns <= elapsed`, and a clock read behind
    /// `last_ns` (another CPU) earns nothing. Crediting twice at the same `now_ns` changes
    /// nothing, so a peek is harmless.
    #[inline(always)]
    pub fn refill(&mut self, now_ns: u64, rate_per_sec: u32) {
        let burst = rate_burst(rate_per_sec);
        let token_ns = rate_token_ns(rate_per_sec);
        // A count beyond the bucket (`RATE_FULL`, a lower rate than before, a value written
        // from userspace) is clamped.
        self.tokens = self.tokens.min(burst);
        let elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed >= burst * token_ns {
            self.tokens = burst;
            self.last_ns = now_ns;
            return;
        }
        // < burst here.
        let add = elapsed / token_ns;
        if add == 0 {
            return;
        }
        self.tokens = (self.tokens + add).min(burst);
        // Keep the fraction of a token already earned, unless the bucket is full (a full
        // bucket banks nothing).
        self.last_ns = if self.tokens == burst {
            now_ns
        } else {
            self.last_ns + add * token_ns
        };
    }

    /// Refills, then takes one token if there is one. `false`: over the limit. A rate of 0
    /// is no limit: always `true`, the bucket untouched.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, rate_per_sec: u32) -> bool {
        if rate_per_sec == 0 {
            return true;
        }
        self.refill(now_ns, rate_per_sec);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

// ---------------------------------------------------------------------------------------------
// CONFIG: array with one entry, written by userspace, re-writable at run time.

/// `Config::flags`: relay NAT-PMP and PCP.
pub const FLAG_PORT_CONTROL: u8 = 1;
/// `Config::flags`: relay SSDP M-SEARCH out and NOTIFY in.
pub const FLAG_SSDP: u8 = 2;
/// `Config::flags`: `xdp_wan` may redirect into the LAN device itself. Set by the loader when
/// `xdp_wan` runs in skb (generic) mode, where a redirect into a bridge goes through the
/// bridge's transmit path; a native-mode redirect needs `ndo_xdp_xmit`, which a bridge does
/// not have, so native `xdp_wan` leaves relays to `tc_wan_ingress`.
pub const FLAG_XDP_WAN_REDIRECT: u8 = 4;
/// `Config::flags`: copy each success response to a mapping request (NAT-PMP map, PCP MAP)
/// and NAT-PMP's public address answers into `GRANTS`, so that the mapping table learns them.
pub const FLAG_REPORT_GRANTS: u8 = 8;
/// `Config::flags` (with `FLAG_REPORT_GRANTS`): do not relay those responses; userspace
/// opens the firewall hole first and then delivers them itself (`GrantEvent::held`).
pub const FLAG_HOLD_GRANTS: u8 = 16;

/// `Config::flags` (with `FLAG_PORT_CONTROL`): NAT-PMP requests (version 0) go up to the
/// daemon, which answers them itself (the CGN does not speak NAT-PMP).
pub const FLAG_SERVE_NATPMP: u8 = 32;
/// `Config::flags` (with `FLAG_PORT_CONTROL`): PCP requests (any other version) go up to the
/// daemon, which answers them itself.
pub const FLAG_SERVE_PCP: u8 = 64;

/// Everything the programs need to know about the CPE. All zero (the map's initial state)
/// means "not configured": the programs pass every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
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
    /// The LAN prefix's netmask (`/24`: 255.255.255.0), network byte order: requests and
    /// searches are relayed only from `lan_addr_be & lan_mask_be`. 0 (a /0) allows any source.
    pub lan_mask_be: u32,
    /// Requests + searches per second and LAN address (`--rate-limit`), bursts of twice
    /// that (`RateValue::take`); 0: no limit (the per-address quota still applies).
    pub rate_per_sec: u32,
}
const _: () =
    assert!(size_of::<Config>() == 48 && size_of::<Config>() == 7 * 4 + 2 * 2 + 2 * 6 + 4);

/// The netmask of a prefix length (clamped to 32), network byte order, as in `Config`.
#[inline(always)]
pub const fn mask_be(prefix_len: u8) -> u32 {
    let len = if prefix_len > 32 {
        32
    } else {
        prefix_len as u32
    };
    if len == 0 {
        0
    } else {
        (u32::MAX << (32 - len)).to_be()
    }
}

/// SSDP multicast group 239.255.255.250, network byte order.
pub const SSDP_GROUP_BE: u32 = u32::from_ne_bytes([239, 255, 255, 250]);
/// Ethernet address of the SSDP group (01:00:5e + low 23 bits of the group).
pub const SSDP_GROUP_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x7f, 0xff, 0xfa];

// ---------------------------------------------------------------------------------------------
// Checksums.

/// Incremental Internet checksum update (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`) for
/// rewriting a 32-bit field, e.g. an IPv4 address, without the kernel's checksum helpers (XDP
/// has none). `check` is the checksum field as stored (big-endian value); `old_be` / `new_be`
/// are the field's old and new contents in network byte order (`u32::from_ne_bytes` of the
/// wire bytes). Covers both the IPv4 header checksum and a UDP/TCP checksum whose
/// pseudo-header holds the address (see `udp_csum_replace_u32` for UDP's zero rule).
#[inline(always)]
pub fn csum_replace_u32(check: u16, old_be: u32, new_be: u32) -> u16 {
    let old = old_be.to_ne_bytes();
    let new = new_be.to_ne_bytes();
    let mut sum = u32::from(!check);
    sum += u32::from(!u16::from_be_bytes([old[0], old[1]]));
    sum += u32::from(!u16::from_be_bytes([old[2], old[3]]));
    sum += u32::from(u16::from_be_bytes([new[0], new[1]]));
    sum += u32::from(u16::from_be_bytes([new[2], new[3]]));
    // At most 5 * 0xffff: two folds bring it to 16 bits (no loop for the verifier).
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// RFC 1624 incremental update of an Internet checksum `check` (host order) when the 16-bit
/// word `old_be` (as it lies in the packet) becomes `new_be`: the IPv4 header checksum when
/// the TTL (which shares its word with the protocol) changes.
#[inline(always)]
pub fn csum_replace_u16(check: u16, old_be: u16, new_be: u16) -> u16 {
    let mut sum = u32::from(!check);
    sum += u32::from(!u16::from_be(old_be));
    sum += u32::from(u16::from_be(new_be));
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// `csum_replace_u32` for a UDP checksum: 0 means "no checksum" and stays 0; a computed 0
/// is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn udp_csum_replace_u32(check: u16, old_be: u32, new_be: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match csum_replace_u32(check, old_be, new_be) {
        0 => 0xffff,
        c => c,
    }
}

// ---------------------------------------------------------------------------------------------
// GRANTS: ring buffer of the CGN's grants, for the mapping table.

/// The longest NAT-PMP/PCP message (PCP, RFC 6887 §7): a grant is copied whole.
pub const GRANT_MSG_LEN: usize = 1100;
/// `GRANTS` size in bytes: a power of two and a multiple of the page size; room for 58
/// events (userspace drains it as they come).
pub const GRANTS_BYTES: u32 = 64 * 1024;

/// One grant: the CGN's response and the client tuple it was for.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GrantEvent {
    pub client_addr_be: u32,
    pub client_port_be: u16,
    /// Bytes of `msg` in use (the UDP payload).
    pub len: u16,
    /// 1: the program did not relay the response (`FLAG_HOLD_GRANTS`); userspace delivers it.
    pub held: u8,
    /// 1: it answers the client's mapping request in flight (`ClientValue::req_*`), or it is
    /// a public address answer; 0: a grant nobody asked for, relayed but not to be learned.
    pub matched: u8,
    pub _pad: [u8; 2],
    pub msg: [u8; GRANT_MSG_LEN],
}
const _: () = assert!(size_of::<GrantEvent>() == 4 + 2 + 2 + 1 + 3 + GRANT_MSG_LEN);

/// aya reads and writes map keys and values as bytes, which its `Pod` asks to be sound:
/// `bytemuck::Pod`, derived above, proves exactly that (no padding, every bit pattern valid),
/// and the bound below makes each impl depend on it.
#[cfg(feature = "user")]
macro_rules! aya_pod {
    ($($t:ty),*) => {$(
        const _: () = {
            const fn is_bytemuck_pod<T: Pod>() {}
            is_bytemuck_pod::<$t>()
        };
        // SAFETY: `$t` is `bytemuck::Pod` (checked just above).
        unsafe impl aya::Pod for $t {}
    )*};
}

#[cfg(feature = "user")]
aya_pod!(ClientKey, ClientValue, Config, RateKey, RateValue);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// RFC 1071 from scratch.
    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u64 = bytes
            .chunks(2)
            .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn ip_header(src: [u8; 4], dst: [u8; 4], id: u16) -> Vec<u8> {
        let mut h = Vec::from([0x45, 0, 0, 40]);
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&[0, 0, 64, 17, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn udp_csum(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(udp);
        match checksum(&pseudo) {
            0 => 0xffff,
            c => c,
        }
    }

    /// A small deterministic generator (no dependencies in a no_std crate).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn ip_header_update_matches_recomputation() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut addrs = Vec::from([
            [192, 168, 1, 2],
            [192, 168, 1, 1],
            [192, 0, 0, 1],
            [239, 255, 255, 250],
            [0, 0, 0, 0],
            [255, 255, 255, 255],
        ]);
        for _ in 0..200 {
            addrs.push((xorshift(&mut rng) as u32).to_be_bytes());
        }
        for (i, &src) in addrs.iter().enumerate() {
            for &new in addrs.iter().skip(i % 7).step_by(7) {
                let dst = [192, 168, 1, 1];
                let id = xorshift(&mut rng) as u16;
                let before = ip_header(src, dst, id);
                let check = u16::from_be_bytes([before[10], before[11]]);
                let updated =
                    csum_replace_u32(check, u32::from_ne_bytes(dst), u32::from_ne_bytes(new));
                let expected = ip_header(src, new, id);
                let mut got = expected.clone();
                got[10..12].copy_from_slice(&updated.to_be_bytes());
                assert_eq!(checksum(&got), 0, "header {got:02x?} does not verify");
                assert_eq!(got, expected, "src {src:?} dst {dst:?} -> {new:?}");
            }
        }
    }

    #[test]
    fn ttl_update_matches_recomputation() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        for ttl in 1..=255u8 {
            let id = xorshift(&mut rng) as u16;
            let src = (xorshift(&mut rng) as u32).to_be_bytes();
            let mut header = ip_header(src, [192, 168, 1, 1], id);
            header[8] = ttl;
            header[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&header);
            header[10..12].copy_from_slice(&c.to_be_bytes());
            let old = u16::from_ne_bytes([ttl, 17]);
            let new = u16::from_ne_bytes([ttl - 1, 17]);
            let mut got = header.clone();
            got[8] = ttl - 1;
            got[10..12].copy_from_slice(&csum_replace_u16(c, old, new).to_be_bytes());
            assert_eq!(checksum(&got), 0, "ttl {ttl}: {got:02x?} does not verify");
        }
    }

    #[test]
    fn udp_update_matches_recomputation() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for round in 0..2000 {
            let src = (xorshift(&mut rng) as u32).to_be_bytes();
            let old_dst = (xorshift(&mut rng) as u32).to_be_bytes();
            let new_dst = (xorshift(&mut rng) as u32).to_be_bytes();
            let len = 8 + (xorshift(&mut rng) % 40) as usize;
            let mut udp: Vec<u8> = (0..len).map(|_| xorshift(&mut rng) as u8).collect();
            udp[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            udp[6..8].copy_from_slice(&[0, 0]);
            let before = udp_csum(src, old_dst, &udp);
            let after = udp_csum(src, new_dst, &udp);
            let updated = udp_csum_replace_u32(
                before,
                u32::from_ne_bytes(old_dst),
                u32::from_ne_bytes(new_dst),
            );
            assert_eq!(
                updated, after,
                "round {round}: {src:?} {old_dst:?} -> {new_dst:?}"
            );
        }
    }

    #[test]
    fn udp_zero_checksum_stays_absent_and_computed_zero_is_ffff() {
        assert_eq!(udp_csum_replace_u32(0, 1, 2), 0);
        // A field change that makes the one's-complement sum 0xffff: ~0xffff = 0 -> 0xffff.
        // check = ~(sum of other words); replacing 0x0000_0000 by 0x0000_0001 adds 1.
        let check = !0xfffeu16; // other words sum to 0xfffe
        assert_eq!(csum_replace_u32(check, 0, 1u32.to_be()), 0);
        assert_eq!(udp_csum_replace_u32(check, 0, 1u32.to_be()), 0xffff);
    }

    const MS: u64 = 1_000_000;
    /// The default rate.
    const R: u32 = RATE_PER_SEC as u32;

    #[test]
    fn bucket_burst_then_rate() {
        let t0 = 5_000 * MS;
        let mut b = RateValue::new(t0);
        let taken = (0..30).filter(|_| b.take(t0, R)).count();
        assert_eq!(taken, RATE_BURST as usize);
        // 99 ms: nothing earned; 100 ms: one token.
        assert!(!b.take(t0 + 99 * MS, R));
        assert!(b.take(t0 + 100 * MS, R));
        assert!(!b.take(t0 + 100 * MS, R));
        // The fraction is kept: 150 ms later (250 ms in all) one more, at 300 ms the next.
        assert!(b.take(t0 + 250 * MS, R));
        assert!(!b.take(t0 + 250 * MS, R));
        assert!(b.take(t0 + 300 * MS, R));
        // Sustained 10/s: one every 100 ms for a minute, never refused.
        let mut t = t0 + 300 * MS;
        for _ in 0..600 {
            t += RATE_TOKEN_NS;
            assert!(b.take(t, R));
        }
    }

    #[test]
    fn bucket_is_capped_and_overflow_safe() {
        let mut b = RateValue::new(0);
        b.refill(u64::MAX, R);
        assert_eq!((b.tokens, b.last_ns), (u64::from(RATE_BURST), u64::MAX));
        // A clock behind `last_ns` (read on another CPU) earns nothing and does not wrap.
        b.tokens = 0;
        b.refill(3, R);
        assert_eq!((b.tokens, b.last_ns), (0, u64::MAX));
        // A corrupt token count from userspace is clamped.
        let mut b = RateValue {
            tokens: u64::MAX,
            in_flight: 0,
            last_ns: 0,
        };
        b.refill(RATE_TOKEN_NS, R);
        assert_eq!(b.tokens, u64::from(RATE_BURST));
        // Just under a full refill: 19 tokens, the remainder kept.
        let mut b = RateValue {
            tokens: 0,
            in_flight: 0,
            last_ns: 0,
        };
        b.refill(u64::from(RATE_BURST) * RATE_TOKEN_NS - 1, R);
        assert_eq!(b.tokens, u64::from(RATE_BURST - 1));
        assert_eq!(b.last_ns, u64::from(RATE_BURST - 1) * RATE_TOKEN_NS);
    }

    #[test]
    fn bucket_follows_the_rate() {
        // 0: no limit, the bucket untouched.
        let mut b = RateValue::new(0);
        assert!((0..10_000).all(|_| b.take(0, 0)));
        assert_eq!(b.tokens, RATE_FULL);
        // 1/s: a burst of 2, then one a second.
        let mut b = RateValue::new(0);
        assert_eq!((0..5).filter(|_| b.take(0, 1)).count(), 2);
        assert!(!b.take(999 * MS, 1));
        assert!(b.take(1000 * MS, 1));
        // 1000/s: a burst of 2000, then one a millisecond.
        let mut b = RateValue::new(0);
        assert_eq!((0..3000).filter(|_| b.take(0, 1000)).count(), 2000);
        assert!(b.take(MS, 1000));
        assert!(!b.take(MS, 1000));
        // Extreme rates: no overflow, no division by zero, a full refill within 2 s.
        for rate in [1, 3, 7, 999_999_999, RATE_MAX_PER_SEC, u32::MAX] {
            let mut b = RateValue::new(0);
            assert!(b.take(0, rate));
            assert!(rate_burst(rate) * rate_token_ns(rate) <= RATE_REFILL_NS);
            b.tokens = 0;
            b.refill(RATE_REFILL_NS, rate);
            assert_eq!(b.tokens, rate_burst(rate), "rate {rate}");
            b.refill(u64::MAX, rate);
            assert_eq!(b.tokens, rate_burst(rate));
        }
        // A lower rate than the bucket was filled at: clamped to the new burst.
        let mut b = RateValue::new(0);
        assert!(b.take(0, 100));
        assert!(b.take(0, 1));
        assert_eq!(b.tokens, 1);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_be(0), 0);
        assert_eq!(mask_be(24), u32::from_ne_bytes([255, 255, 255, 0]));
        assert_eq!(mask_be(17), u32::from_ne_bytes([255, 255, 128, 0]));
        assert_eq!(mask_be(32), u32::MAX);
        assert_eq!(mask_be(40), u32::MAX);
    }

    #[test]
    fn stat_ids_are_unique() {
        for (i, a) in STAT_IDS.iter().enumerate() {
            assert!(!STAT_IDS[i + 1..].contains(a), "{a} twice");
        }
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
        // As a 32-bit field change (the other half unchanged).
        let old = u32::from_ne_bytes([0x55, 0x55, 0, 0]);
        let new = u32::from_ne_bytes([0x32, 0x85, 0, 0]);
        assert_eq!(csum_replace_u32(0xdd2f, old, new), 0x0000);
    }
}
