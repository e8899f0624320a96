//! NAT-PMP and PCP (UDP 5351): requests from LAN clients to the CGN with the client's source
//! address kept (so the CGN maps to the client itself), replies from the CGN back to the
//! client from the LAN address (libnatpmp rejects replies not from the gateway it asked).
//! This module decides; `tc` and `xdp` carry the verdict out, both through `admit` (rate
//! limit, quota, `CLIENTS` entry) and `touch` for the `CLIENTS` entry.
//!
//! Framing checks follow `portproxy/src/proto/port_control.rs` (the socket relay), PCP
//! options included (`options_framed`, a loop bounded by the most options a message can
//! hold).

use aya_ebpf::bindings::BPF_NOEXIST;
use portproxy_common::{
    CLIENT_QUOTA, ClientKey, ClientValue, Config, FLAG_SERVE_NATPMP, FLAG_SERVE_PCP,
    KIND_PORT_CONTROL, REQ_NATPMP, REQ_NONE, REQ_PCP, STAT_DROP_CLIENT_QUOTA, STAT_DROP_MALFORMED,
    STAT_DROP_NOT_FROM_CGN, STAT_DROP_RATE_LIMIT, STAT_NATPMP_TO_CGN, STAT_NATPMP_TO_CLIENT,
    STAT_PASSED_TO_DAEMON, STAT_PCP_TO_CGN, STAT_PCP_TO_CLIENT,
};

use crate::{
    dispatch::Verdict,
    limit,
    maps::CLIENTS,
    packet::{self, Packet, Udp4},
};

const EEXIST: i32 = 17;

const RESPONSE_BIT: u8 = 0x80;
const PCP_HEADER_LEN: usize = 24;
const PCP_MAX_LEN: usize = 1100;
const PCP_MAP_LEN: usize = 36;
const PCP_PEER_LEN: usize = 56;
/// Options walked at most: as many as the longest message (1100 bytes) can frame after the
/// shortest header (24 bytes), so that no well-formed message is refused by the bound.
pub const PCP_MAX_OPTIONS: usize = (PCP_MAX_LEN - PCP_HEADER_LEN) / 4;
/// Code, reserved, length (RFC 6887 §7.3).
const PCP_OPTION_HEADER_LEN: usize = 4;

/// The first bytes of a NAT-PMP/PCP message (absent bytes read as 0) and its length.
#[derive(Clone, Copy)]
pub struct Header {
    pub version: u8,
    pub opcode: u8,
    /// PCP result code (byte 3).
    pub result: u8,
    pub len: usize,
}

impl Header {
    #[inline(always)]
    fn load<P: Packet>(p: &P, pkt: &Udp4) -> Result<Header, i64> {
        let mut header = Header {
            version: 0,
            opcode: 0,
            result: 0,
            len: pkt.payload_len,
        };
        if pkt.payload_len >= 2 {
            let b: [u8; 2] = p.load(pkt.payload())?;
            header.version = b[0];
            header.opcode = b[1];
        }
        if pkt.payload_len >= 4 {
            header.result = p.load(pkt.payload() + 3)?;
        }
        Ok(header)
    }

    fn is_natpmp(&self) -> bool {
        self.version == 0
    }
}

/// Is this a well-formed request (`response == false`) or response? Mirrors the socket
/// relay's `check_request` / `check_response`.
#[inline(always)]
pub fn well_formed(h: &Header, response: bool) -> bool {
    if h.len < 2 || (h.opcode & RESPONSE_BIT != 0) != response {
        return false;
    }
    let op = h.opcode & !RESPONSE_BIT;
    if h.is_natpmp() {
        return if response {
            // Errors for unknown opcodes are 8 bytes (RFC 6886 §3.5).
            let needed = match op {
                0 => 12,
                1 | 2 => 16,
                _ => 8,
            };
            h.len >= needed
        } else {
            matches!((op, h.len), (0, 2) | (1 | 2, 12))
        };
    }
    if h.len < PCP_HEADER_LEN || h.len > PCP_MAX_LEN || h.len % 4 != 0 {
        return false;
    }
    let payload = match op {
        1 => PCP_MAP_LEN,
        2 => PCP_PEER_LEN,
        _ => 0,
    };
    // Error responses may omit the opcode's payload.
    h.len >= PCP_HEADER_LEN + payload || (response && h.result != 0)
}

/// Offset of a well-formed PCP message's options from the start of the message, or `None`
/// when it has none to walk (NAT-PMP; an error response without the opcode's payload).
#[inline(always)]
fn options_start(h: &Header) -> Option<usize> {
    if h.is_natpmp() {
        return None;
    }
    let start = PCP_HEADER_LEN
        + match h.opcode & !RESPONSE_BIT {
            1 => PCP_MAP_LEN,
            2 => PCP_PEER_LEN,
            _ => 0,
        };
    (h.len >= start).then_some(start)
}

/// Do the PCP options of a message `well_formed` accepted fill it exactly: each option is
/// code(1) reserved(1) length(2) and its data padded to 4 bytes (RFC 6887 §7.3), none
/// overruns the message. Mirrors the socket relay's
/// `check_options`. A bounded loop with one 2-byte load per option.
#[inline(always)]
fn options_framed<P: Packet>(p: &P, pkt: &Udp4, h: &Header) -> bool {
    let Some(start) = options_start(h) else {
        return true;
    };
    // h.len <= PCP_MAX_LEN (well_formed): nothing below overflows.
    let mut rest = h.len - start;
    let mut at = pkt.payload() + start;
    for _ in 0..PCP_MAX_OPTIONS {
        if rest == 0 {
            return true;
        }
        if rest < PCP_OPTION_HEADER_LEN {
            return false;
        }
        let Ok(len_be) = p.load::<u16>(at + 2) else {
            return false;
        };
        let padded = PCP_OPTION_HEADER_LEN + usize::from(u16::from_be(len_be)).div_ceil(4) * 4;
        if padded > rest {
            return false;
        }
        rest -= padded;
        at += padded;
    }
    rest == 0
}

/// A (fragmented) request declaring more bytes than any NAT-PMP/PCP message has.
#[inline(always)]
pub fn oversized(pkt: &Udp4) -> bool {
    pkt.payload_len > PCP_MAX_LEN
}

/// LAN -> CGN: `pkt` is UDP to LAN_ADDR:5351 from a LAN client. A protocol the daemon
/// answers itself goes up to it whatever its shape: a server answers malformed requests.
#[inline(always)]
pub fn request<P: Packet>(p: &P, cfg: &Config, pkt: Udp4) -> Result<Verdict, i64> {
    if cfg.flags & (FLAG_SERVE_NATPMP | FLAG_SERVE_PCP) != 0 && pkt.payload_len > 0 {
        // The version byte tells the protocols apart (0: NAT-PMP, anything else: PCP's).
        let version: u8 = p.load(pkt.payload())?;
        let served = if version == 0 {
            FLAG_SERVE_NATPMP
        } else {
            FLAG_SERVE_PCP
        };
        if cfg.flags & served != 0 {
            return Ok(Verdict::PassAs(STAT_PASSED_TO_DAEMON));
        }
    }
    if !pkt.complete {
        return Ok(Verdict::Drop(STAT_DROP_MALFORMED));
    }
    let header = Header::load(p, &pkt)?;
    if !well_formed(&header, false) || !options_framed(p, &pkt, &header) {
        return Ok(Verdict::Drop(STAT_DROP_MALFORMED));
    }
    let stat = if header.is_natpmp() {
        STAT_NATPMP_TO_CGN
    } else {
        STAT_PCP_TO_CGN
    };
    Ok(Verdict::Request(pkt, stat))
}

/// CGN -> LAN: `pkt` is UDP from port 5351 arriving on the WAN, to a unicast address that is
/// not the CPE's own. Relayed only from the CGN and to a client in `CLIENTS`.
#[inline(always)]
pub fn reply<P: Packet>(p: &P, cfg: &Config, pkt: Udp4) -> Result<Verdict, i64> {
    let key = ClientKey {
        addr_be: pkt.dst_be,
        port_be: pkt.dport_be,
        kind: KIND_PORT_CONTROL,
        _pad: 0,
    };
    let from_cgn = pkt.src_be == cfg.cgn_addr_be;
    let Some(entry) = CLIENTS.get_ptr_mut(&key) else {
        if from_cgn {
            // Perhaps what the daemon asked as the host; the stack takes it to the CPE itself
            // (the reply-capture rule), never on to the LAN: see `STAT_PASSED_TO_DAEMON`.
            return Ok(Verdict::PassAs(STAT_PASSED_TO_DAEMON));
        }
        // Someone else's port 5351 talking to a host that never asked us: not ours.
        return Ok(Verdict::Pass);
    };
    if !from_cgn {
        // A "reply" to a client waiting for the CGN from another host: spoofed or stray.
        return Ok(Verdict::Drop(STAT_DROP_NOT_FROM_CGN));
    }
    if !pkt.complete {
        return Ok(Verdict::Drop(STAT_DROP_MALFORMED));
    }
    let header = Header::load(p, &pkt)?;
    if !well_formed(&header, true) || !options_framed(p, &pkt, &header) {
        return Ok(Verdict::Drop(STAT_DROP_MALFORMED));
    }
    let stat = if header.is_natpmp() {
        STAT_NATPMP_TO_CLIENT
    } else {
        STAT_PCP_TO_CLIENT
    };
    Ok(Verdict::Reply(pkt, stat, entry))
}

/// Admits a request about to be relayed (`limit`): charges the client's address one token,
/// then records (or refreshes) the client's tuple in `CLIENTS` with its MAC for the way back
/// and the time, for aging. A tuple not yet in `CLIENTS` needs the address to be under its
/// `CLIENT_QUOTA`: a host flooding new source ports stops at its quota instead of making the
/// LRU evict other clients' entries (unless `--rate-limit 0` turned the per-host limits off).
/// `Some(stat)`: drop the request and count `stat`.
#[inline(always)]
pub fn admit<P: Packet>(p: &P, cfg: &Config, pkt: &Udp4) -> Result<Option<u32>, i64> {
    let now = limit::now();
    let Some(bucket) = limit::charge(pkt.src_be, now, cfg.rate_per_sec)? else {
        return Ok(Some(STAT_DROP_RATE_LIMIT));
    };
    let key = ClientKey {
        addr_be: pkt.src_be,
        port_be: pkt.sport_be,
        kind: KIND_PORT_CONTROL,
        _pad: 0,
    };
    let mac = packet::eth_src(p).ok_or(-1i64)?;
    let request = mapping_request(p, pkt);
    if let Some(entry) = CLIENTS.get_ptr_mut(&key) {
        // A retry, or the next request on the same tuple: in place (an LRU update would take
        // a fresh node from the free list, which may make the LRU evict).
        // SAFETY: points into the map value for the rest of this program run (RCU).
        unsafe {
            (*entry).mac = mac;
            (*entry).last_seen_ns = now;
            if let Some(request) = request {
                remember(&mut *entry, &request);
            }
        }
        return Ok(None);
    }
    // `--rate-limit 0` lifts the per-host limits altogether, as on sockets.
    if cfg.rate_per_sec != 0 && bucket.in_flight() >= u64::from(CLIENT_QUOTA) {
        return Ok(Some(STAT_DROP_CLIENT_QUOTA));
    }
    let mut value = ClientValue {
        mac,
        last_seen_ns: now,
        ..ClientValue::default()
    };
    if let Some(request) = request {
        remember(&mut value, &request);
    }
    match CLIENTS.insert(&key, &value, u64::from(BPF_NOEXIST)) {
        Ok(()) => bucket.add_entry(),
        // Created by another CPU meanwhile (and counted there): refresh it.
        Err(e) if e == -EEXIST => CLIENTS.insert(&key, &value, 0).map_err(i64::from)?,
        Err(e) => return Err(i64::from(e)),
    }
    Ok(None)
}

/// A mapping request, as far as matching its answer needs.
struct MapRequest {
    kind: u8,
    proto: u8,
    internal_port_be: u16,
    nonce: [u8; 12],
}

/// The mapping request in a well-formed request, if it is one: NAT-PMP opcode 1 or 2 (its
/// internal port at 4), PCP MAP (nonce at 24, protocol at 36, internal port at 40).
#[inline(always)]
fn mapping_request<P: Packet>(p: &P, pkt: &Udp4) -> Option<MapRequest> {
    let [version, opcode]: [u8; 2] = p.load(pkt.payload()).ok()?;
    if version == 0 {
        if opcode != 1 && opcode != 2 {
            return None;
        }
        return Some(MapRequest {
            kind: REQ_NATPMP,
            proto: opcode,
            internal_port_be: p.load(pkt.payload() + 4).ok()?,
            nonce: [0; 12],
        });
    }
    if opcode != 1 || pkt.payload_len < PCP_HEADER_LEN + PCP_MAP_LEN {
        return None;
    }
    let body = pkt.payload() + PCP_HEADER_LEN;
    Some(MapRequest {
        kind: REQ_PCP,
        proto: p.load(body + 12).ok()?,
        internal_port_be: p.load(body + 16).ok()?,
        nonce: p.load(body).ok()?,
    })
}

#[inline(always)]
fn remember(value: &mut ClientValue, request: &MapRequest) {
    value.req_kind = request.kind;
    value.req_proto = request.proto;
    value.req_internal_port_be = request.internal_port_be;
    value.req_nonce = request.nonce;
}

/// Does the grant in `pkt` answer the mapping request in flight in `entry`? If so, the
/// request is answered: a second answer (to a retry) no longer matches.
#[inline(always)]
pub fn answers<P: Packet>(p: &P, pkt: &Udp4, entry: *mut ClientValue) -> bool {
    // SAFETY: `entry` points into the map value (from `reply`, in the same program run).
    let value = unsafe { &mut *entry };
    let Ok([version, opcode]) = p.load::<[u8; 2]>(pkt.payload()) else {
        return false;
    };
    let matched = if version == 0 {
        value.req_kind == REQ_NATPMP
            && value.req_proto == opcode & !RESPONSE_BIT
            && p.load::<u16>(pkt.payload() + 8).ok() == Some(value.req_internal_port_be)
    } else {
        let body = pkt.payload() + PCP_HEADER_LEN;
        value.req_kind == REQ_PCP
            && p.load::<[u8; 12]>(body).ok() == Some(value.req_nonce)
            && p.load::<u8>(body + 12).ok() == Some(value.req_proto)
            && p.load::<u16>(body + 16).ok() == Some(value.req_internal_port_be)
    };
    if matched {
        value.req_kind = REQ_NONE;
    }
    matched
}

/// Refreshes the entry a reply is relayed for and returns the client's MAC.
#[inline(always)]
pub fn touch(entry: *mut ClientValue) -> [u8; 6] {
    // SAFETY: `entry` points into the map value (from `reply`, in the same program run,
    // which holds the RCU read lock).
    unsafe {
        (*entry).last_seen_ns = limit::now();
        (*entry).mac
    }
}
