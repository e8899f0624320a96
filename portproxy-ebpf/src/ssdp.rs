//! SSDP (UDP 1900). M-SEARCH from a LAN client leaves on the WAN with the client's own source
//! (multicast to 239.255.255.250; a unicast search to LAN_ADDR:1900 is re-addressed to the
//! group, as the socket relay sends it); the CGN's unicast answers then reach the client by
//! normal routing. NOTIFY from the CGN is multicast on the LAN from LAN_ADDR. Searches from
//! the WAN are never relayed. LOCATION headers are not rewritten here (the socket relay does
//! that when its HTTP relay runs).
//!
//! A search from the LAN is relayed only when it is well formed as the socket relay's
//! `proto::ssdp::Message::parse` sees a search (`search_ok`); anything starting with
//! "M-SEARCH" that is not is dropped (`STAT_DROP_MALFORMED_SEARCH`). Known gap: a search
//! that arrives in IP fragments (over 1472 bytes on an Ethernet LAN) cannot be checked or
//! relayed here (no reassembly before TC ingress); it goes to the stack and is not relayed.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use portproxy_common::{
    Config, STAT_DROP_MALFORMED_SEARCH, STAT_DROP_RATE_LIMIT, STAT_SEARCH_FROM_WAN,
};

use crate::{
    dispatch::Verdict,
    limit,
    maps::SCAN,
    packet::{Packet, Udp4},
};

const M_SEARCH: [u8; 8] = *b"M-SEARCH";
const NOTIFY: [u8; 8] = *b"NOTIFY *";
/// The start line of a search, compared case-insensitively.
const SEARCH_LINE: [u8; 19] = *b"M-SEARCH * HTTP/1.1";
/// The longest SSDP datagram relayed (`proto::ssdp::MAX_LEN`).
pub const MAX_LEN: usize = 2048;
/// Bytes read at once by the scan.
const CHUNK: usize = 16;
const NONE: u32 = u32::MAX;

#[inline(always)]
fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

#[inline(always)]
fn eq_ignore_case<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let mut i = 0;
    while i < N {
        if lower(a[i]) != lower(b[i]) {
            return false;
        }
        i += 1;
    }
    true
}

/// What the byte-by-byte scan of a search has seen so far, in `maps::SCAN` (this CPU's
/// entry): the verifier does not track a map value's contents, so the `bpf_loop` callback
/// is verified against an unknown state and converges at once; on the stack, every
/// combination of the flags' constant values was a new state to walk (over 1M insns). Mirrors `Message::parse`: the
/// whole datagram is UTF-8; the header ends at the first "\r\n\r\n", else at the first
/// "\n\n"; the start line (its first 19 bytes are checked before the scan) may only be
/// followed by ASCII whitespace (`trim`); every later line before the header end has a ':'.
#[repr(C)]
pub struct Scan {
    /// Offset of the payload and its length (<= `MAX_LEN`).
    base: u32,
    len: u32,
    /// The last four bytes, the latest in the low byte.
    last4: u32,
    /// Offset of the first "\r\n\r\n" / "\n\n", or `NONE`.
    crlf_end: u32,
    lf_end: u32,
    /// Offset where the current line starts, and whether it has a ':' yet.
    line_start: u32,
    line_colon: u32,
    /// Offset of the first line after the start line without a ':', or `NONE`.
    bad_line: u32,
    /// Still on the start line.
    in_start: u32,
    /// Not UTF-8, bytes after the start line's text, or a read failed.
    bad: u32,
    /// UTF-8: continuation bytes still due, and the range the next one must be in.
    need: u32,
    lo: u32,
    hi: u32,
    /// The current `CHUNK` of the payload.
    buf: [u8; CHUNK],
}

/// `bpf_loop`'s context: the packet (`&P`, erased) and this CPU's `Scan`.
struct LoopCtx {
    packet: *const c_void,
    scan: *mut Scan,
}

impl Scan {
    #[inline(always)]
    fn step(&mut self, b: u8, at: u32) {
        self.last4 = (self.last4 << 8) | u32::from(b);
        if self.crlf_end == NONE && self.last4 == 0x0d0a_0d0a {
            self.crlf_end = at - 3;
        }
        if self.lf_end == NONE && self.last4 & 0xffff == 0x0a0a {
            self.lf_end = at - 1;
        }
        if b == b'\n' {
            if self.in_start != 0 {
                self.in_start = 0;
            } else if self.line_colon == 0 && self.bad_line == NONE {
                self.bad_line = self.line_start;
            }
            self.line_start = at + 1;
            self.line_colon = 0;
        } else if self.in_start != 0 {
            if at >= SEARCH_LINE.len() as u32 && !matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c) {
                self.bad = 1;
            }
        } else if b == b':' {
            self.line_colon = 1;
        }
        self.utf8(u32::from(b));
    }

    /// One byte of UTF-8 as `core::str::from_utf8` validates it (no overlong forms, no
    /// surrogates, nothing above U+10FFFF).
    #[inline(always)]
    fn utf8(&mut self, b: u32) {
        if self.need != 0 {
            if b < self.lo || b > self.hi {
                self.bad = 1;
            }
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xbf;
            return;
        }
        let (need, lo, hi) = match b {
            0x00..=0x7f => return,
            0xc2..=0xdf => (1, 0x80, 0xbf),
            0xe0 => (2, 0xa0, 0xbf),
            0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
            0xed => (2, 0x80, 0x9f),
            0xf0 => (3, 0x90, 0xbf),
            0xf1..=0xf3 => (3, 0x80, 0xbf),
            0xf4 => (3, 0x80, 0x8f),
            _ => {
                self.bad = 1;
                return;
            }
        };
        self.need = need;
        self.lo = lo;
        self.hi = hi;
    }

    /// After the whole payload: a well-formed search?
    #[inline(always)]
    fn ok(&self) -> bool {
        let end = if self.crlf_end != NONE {
            self.crlf_end
        } else {
            self.lf_end
        };
        self.bad == 0
            && self.need == 0
            && end != NONE
            && (self.bad_line == NONE || self.bad_line >= end)
    }
}

/// `bpf_loop` callback: byte `index` of the payload, read `CHUNK` bytes at a time into
/// `Scan::buf` (one `step` per call keeps what the verifier walks small). 1 stops the loop.
extern "C" fn scan_byte<P: Packet>(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `LoopCtx` on `search_ok`'s stack, `packet` its `&P`, `scan` this
    // CPU's `SCAN` value, all alive for the whole `bpf_loop` call.
    let lc = unsafe { &*ctx.cast::<LoopCtx>() };
    let scan = unsafe { &mut *lc.scan };
    let at = index as u32;
    if at >= scan.len || scan.len > MAX_LEN as u32 {
        return 1;
    }
    let slot = (at as usize) % CHUNK;
    if slot == 0 {
        // SAFETY: as above.
        let p = unsafe { &*lc.packet.cast::<P>() };
        let from = (scan.base + at) as usize;
        let loaded = if scan.len - at >= CHUNK as u32 {
            p.load::<[u8; CHUNK]>(from)
        } else {
            // The tail: one byte at a time (at most CHUNK - 1).
            let mut buf = [0u8; CHUNK];
            let n = (scan.len - at) as usize;
            let mut ok = true;
            for (j, byte) in buf.iter_mut().enumerate() {
                if j >= n {
                    break;
                }
                match p.load::<u8>(from + j) {
                    Ok(b) => *byte = b,
                    Err(_) => ok = false,
                }
            }
            if ok { Ok(buf) } else { Err(-1) }
        };
        match loaded {
            Ok(buf) => scan.buf = buf,
            Err(_) => {
                scan.bad = 1;
                return 1;
            }
        }
    }
    let b = scan.buf[slot];
    scan.step(b, at);
    i64::from(scan.bad != 0)
}

/// Is the payload (which starts with "M-SEARCH", any case) a well-formed search?
#[inline(always)]
fn search_ok<P: Packet>(p: &P, pkt: &Udp4) -> bool {
    let len = pkt.payload_len;
    if len > MAX_LEN || len < SEARCH_LINE.len() {
        return false;
    }
    match p.load::<[u8; 19]>(pkt.payload()) {
        Ok(start) if eq_ignore_case(&start, &SEARCH_LINE) => {}
        _ => return false,
    }
    let Some(state) = SCAN.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's entry; programs do not nest on a CPU and are not migrated.
    let scan = unsafe { &mut *state };
    *scan = Scan {
        base: pkt.payload() as u32,
        len: len as u32,
        last4: 0,
        crlf_end: NONE,
        lf_end: NONE,
        line_start: 0,
        line_colon: 0,
        bad_line: NONE,
        in_start: 1,
        bad: 0,
        need: 0,
        lo: 0x80,
        hi: 0xbf,
        buf: [0; CHUNK],
    };
    let mut lc = LoopCtx {
        packet: (p as *const P).cast(),
        scan: state,
    };
    // SAFETY: a static callback and a context on this stack frame, alive for the call.
    let ret = unsafe {
        bpf_loop(
            len as u32,
            scan_byte::<P> as *mut c_void,
            (&mut lc as *mut LoopCtx).cast(),
            0,
        )
    };
    ret >= 0 && scan.ok()
}

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
    let search = pkt.complete
        && pkt.payload_len >= M_SEARCH.len()
        && matches!(p.load::<[u8; 8]>(pkt.payload()), Ok(start) if eq_ignore_case(&start, &M_SEARCH));
    if !search {
        // NOTIFY from LAN devices and anything else stays on the LAN.
        return Verdict::Pass;
    }
    if search_ok(p, &pkt) {
        Verdict::Search(pkt)
    } else {
        Verdict::Drop(STAT_DROP_MALFORMED_SEARCH)
    }
}

/// Admits an M-SEARCH about to be relayed: one token of its source address's bucket, shared
/// with its NAT-PMP/PCP requests (`limit`). `Some(stat)`: drop the search and count `stat`.
#[inline(always)]
pub fn admit(cfg: &Config, pkt: &Udp4) -> Result<Option<u32>, i64> {
    let charged = limit::charge(pkt.src_be, limit::now(), cfg.rate_per_sec)?;
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
