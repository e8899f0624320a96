//! The traffic: the CGN's responder (the sink), the LAN generator (sendmmsg over many client
//! tuples), the raw-socket sender for the 65,536-tuple scale test, and the latency prober.
//! Every loop ends at a stop flag or a deadline.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portproxy::proto::{
    Transport,
    natpmp::{Parsed, Request, Response, parse_request, result},
};

use crate::{Netns, PUBLIC_IP};

/// NAT-PMP public-address request (RFC 6886 §3.2).
pub const PUBLIC_ADDRESS_REQUEST: [u8; 2] = [0, 0];
/// NAT-PMP map UDP 5000 -> 5000 for 7200 s: what the proxy mode's generator sends, since a
/// public address request is answered by the proxy itself and never reaches the CGN.
pub const MAP_REQUEST: [u8; 12] = [0, 1, 0, 0, 0x13, 0x88, 0x13, 0x88, 0, 0, 0x1c, 0x20];
const BATCH_MAX: usize = 64;
const BUF_LEN: usize = 128;

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sa.sin_port),
    )
}

fn check(ret: libc::c_int, what: &str) -> Result<libc::c_int> {
    if ret < 0 {
        return Err(io::Error::last_os_error()).with_context(|| what.to_owned());
    }
    Ok(ret)
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: valid fd and a pointer to an int of the given length.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(ret, "setsockopt").map(drop)
}

/// A UDP socket bound to `0.0.0.0:port` in the calling thread's namespace.
fn udp_socket(port: u16, nonblocking: bool) -> Result<OwnedFd> {
    let mut kind = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        kind |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd =
        unsafe { OwnedFd::from_raw_fd(check(libc::socket(libc::AF_INET, kind, 0), "socket")?) };
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let sa = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    // SAFETY: valid fd and sockaddr_in.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(ret, "bind").with_context(|| format!("binding UDP port {port}"))?;
    Ok(fd)
}

/// Per-message buffers and headers for recvmmsg/sendmmsg. The headers point into the
/// boxed buffers, which never move.
struct Batch {
    bufs: Box<[[u8; BUF_LEN]; BATCH_MAX]>,
    addrs: Box<[libc::sockaddr_in; BATCH_MAX]>,
    iovs: Box<[libc::iovec; BATCH_MAX]>,
    hdrs: Box<[libc::mmsghdr; BATCH_MAX]>,
}

impl Batch {
    fn new() -> Batch {
        // SAFETY: all-zero is valid for these plain C structs.
        let mut batch = Batch {
            bufs: Box::new([[0; BUF_LEN]; BATCH_MAX]),
            addrs: Box::new(unsafe { zeroed() }),
            iovs: Box::new(unsafe { zeroed() }),
            hdrs: Box::new(unsafe { zeroed() }),
        };
        for i in 0..BATCH_MAX {
            batch.iovs[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            };
            batch.hdrs[i].msg_hdr.msg_iov = &mut batch.iovs[i];
            batch.hdrs[i].msg_hdr.msg_iovlen = 1;
            batch.hdrs[i].msg_hdr.msg_name = (&mut batch.addrs[i] as *mut libc::sockaddr_in).cast();
            batch.hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        batch
    }

    /// Prepares every slot for receiving.
    fn reset_for_recv(&mut self, n: usize) {
        for i in 0..n {
            self.iovs[i].iov_len = BUF_LEN;
            self.hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            self.hdrs[i].msg_len = 0;
        }
    }

    fn recv(&mut self, fd: RawFd, n: usize, flags: libc::c_int) -> io::Result<usize> {
        self.reset_for_recv(n);
        // SAFETY: the headers point into buffers owned by self, sized as declared.
        let ret = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }

    fn send(&mut self, fd: RawFd, n: usize, flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: as for recv.
        let ret = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as u32, flags) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }
}

/// What the CGN's responder has seen, updated as it goes.
#[derive(Default)]
pub struct SinkStats {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub reply_failures: AtomicU64,
    pub unanswerable: AtomicU64,
    /// Nanoseconds after `epoch_base` of the last request received.
    pub last_request_ns: AtomicU64,
    pub tid: AtomicU32,
}

/// Builds the NAT-PMP response to `req` in `out` with the daemon's codec (nothing
/// allocated): a map grants the suggested port and echoes the lifetime (the prober's
/// sequence number). The length, or `None` for what a NAT-PMP server would not answer here.
pub fn natpmp_response(req: &[u8], epoch: u32, out: &mut [u8]) -> Option<usize> {
    let response = match parse_request(req, epoch) {
        Parsed::Request(Request::PublicAddress) => Response::PublicAddress {
            result: result::SUCCESS,
            epoch,
            addr: PUBLIC_IP,
        },
        Parsed::Request(Request::Map {
            proto,
            internal_port,
            suggested_port,
            lifetime,
        }) => Response::Map {
            proto,
            result: result::SUCCESS,
            epoch,
            internal: internal_port,
            external: suggested_port,
            lifetime,
        },
        Parsed::Ignore | Parsed::Refuse(_) => return None,
    };
    Some(response.encode(out))
}

/// Runs the responder on `0.0.0.0:5351` of the calling thread's namespace until `stop`.
pub fn respond(port: u16, stop: &AtomicBool, stats: &SinkStats, base: Instant) -> Result<()> {
    stats.tid.store(super::net::gettid(), Ordering::Relaxed);
    let fd = udp_socket(port, false)?;
    let raw = fd.as_raw_fd();
    setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20)?;
    setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16 << 20)?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: valid fd and timeval.
    check(
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        },
        "SO_RCVTIMEO",
    )?;
    let mut rx = Batch::new();
    let mut tx = Batch::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(raw, BATCH_MAX, libc::MSG_WAITFORONE) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("recvmmsg on the responder"),
        };
        stats.requests.fetch_add(n as u64, Ordering::Relaxed);
        stats
            .last_request_ns
            .store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let epoch = base.elapsed().as_secs() as u32;
        let mut out = 0;
        for i in 0..n {
            let len = rx.hdrs[i].msg_len as usize;
            let req = &rx.bufs[i][..len.min(BUF_LEN)];
            match natpmp_response(req, epoch, &mut tx.bufs[out]) {
                Some(reply_len) => {
                    tx.iovs[out].iov_len = reply_len;
                    tx.addrs[out] = rx.addrs[i];
                    out += 1;
                }
                None => {
                    stats.unanswerable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut done = 0;
        // A bounded number of retries for a partial send.
        for _ in 0..4 {
            if done == out {
                break;
            }
            // SAFETY: the headers point into tx's own buffers.
            let ret = unsafe {
                libc::sendmmsg(
                    raw,
                    tx.hdrs.as_mut_ptr().add(done),
                    (out - done) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if ret <= 0 {
                break;
            }
            done += ret as usize;
        }
        stats.replies.fetch_add(done as u64, Ordering::Relaxed);
        stats
            .reply_failures
            .fetch_add((out - done) as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Generator counters, updated as it goes.
#[derive(Default)]
pub struct GenStats {
    pub sent: AtomicU64,
    pub send_blocked: AtomicU64,
    pub replies: AtomicU64,
    pub tid: AtomicU32,
}

/// Non-blocking UDP sockets on ports `base..base+count` in `ns` (the generator's client
/// tuples).
pub fn client_sockets(ns: &Netns, base: u16, count: u16) -> Result<Vec<OwnedFd>> {
    ns.enter(|| -> Result<Vec<OwnedFd>> {
        (0..count)
            .map(|i| {
                let fd = udp_socket(base + i, true)?;
                setsockopt_int(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    256 << 10,
                )?;
                Ok(fd)
            })
            .collect()
    })?
    .with_context(|| format!("client sockets in {}", ns.role()))
}

/// Sends `payload` to `dst` from every socket in turn, `batch` datagrams per sendmmsg, and
/// drains replies with recvmmsg after each, until `stop` or `deadline`.
pub fn generate(
    sockets: &[OwnedFd],
    dst: SocketAddrV4,
    payload: &[u8],
    batch: usize,
    stop: &AtomicBool,
    deadline: Instant,
    stats: &GenStats,
) -> Result<()> {
    stats.tid.store(super::net::gettid(), Ordering::Relaxed);
    if sockets.is_empty() {
        bail!("the generator has no sockets");
    }
    let batch = batch.clamp(1, BATCH_MAX);
    let mut tx = Batch::new();
    for i in 0..batch {
        tx.bufs[i][..payload.len()].copy_from_slice(payload);
        tx.iovs[i].iov_len = payload.len();
        tx.addrs[i] = sockaddr(dst);
    }
    let mut rx = Batch::new();
    let (mut sent, mut blocked, mut replies) = (0u64, 0u64, 0u64);
    'outer: loop {
        for fd in sockets {
            match tx.send(fd.as_raw_fd(), batch, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    sent += n as u64;
                    if n < batch {
                        blocked += 1;
                    }
                }
                Err(_) => blocked += 1,
            }
            // Bounded: at most 4 x 64 replies per visit.
            for _ in 0..4 {
                match rx.recv(fd.as_raw_fd(), BATCH_MAX, libc::MSG_DONTWAIT) {
                    Ok(n) if n > 0 => {
                        replies += n as u64;
                        if n < BATCH_MAX {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            stats.sent.store(sent, Ordering::Relaxed);
            stats.send_blocked.store(blocked, Ordering::Relaxed);
            stats.replies.store(replies, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break 'outer;
        }
    }
    Ok(())
}

/// A raw socket (IP_HDRINCL) in `ns`, for sending from tuples that have no socket.
pub fn raw_socket(ns: &Netns) -> Result<OwnedFd> {
    ns.enter(|| -> Result<OwnedFd> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe {
            OwnedFd::from_raw_fd(check(
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                ),
                "raw socket",
            )?)
        };
        setsockopt_int(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            4 << 20,
        )?;
        Ok(fd)
    })?
    .with_context(|| format!("raw socket in {}", ns.role()))
}

/// An IPv4/UDP datagram with `payload` (IP checksum, ID and length are filled in by the
/// kernel for IP_HDRINCL; UDP checksum 0 = none).
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], out: &mut [u8]) -> usize {
    let len = 28 + payload.len();
    out[..len].fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = 64;
    out[9] = libc::IPPROTO_UDP as u8;
    out[12..16].copy_from_slice(&src.ip().octets());
    out[16..20].copy_from_slice(&dst.ip().octets());
    out[20..22].copy_from_slice(&src.port().to_be_bytes());
    out[22..24].copy_from_slice(&dst.port().to_be_bytes());
    out[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    out[28..len].copy_from_slice(payload);
    len
}

/// Sends one `payload` datagram from each of `ports` at `src_ip` to `dst` through the raw
/// socket `fd` (blocking, 64 per sendmmsg). Returns how many the kernel took.
pub fn send_from_tuples(
    fd: &OwnedFd,
    src_ip: Ipv4Addr,
    ports: std::ops::Range<u32>,
    dst: SocketAddrV4,
    payload: &[u8],
    deadline: Instant,
) -> Result<u64> {
    let mut tx = Batch::new();
    let mut sent = 0u64;
    let mut port = ports.start;
    while port < ports.end && Instant::now() < deadline {
        let n = ((ports.end - port) as usize).min(BATCH_MAX);
        for i in 0..n {
            let src = SocketAddrV4::new(src_ip, (port + i as u32) as u16);
            tx.iovs[i].iov_len = udp_packet(src, dst, payload, &mut tx.bufs[i]);
            tx.addrs[i] = sockaddr(dst);
        }
        let mut done = 0;
        for _ in 0..8 {
            if done == n {
                break;
            }
            // SAFETY: the headers point into tx's own buffers.
            let ret = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    tx.hdrs.as_mut_ptr().add(done),
                    (n - done) as u32,
                    0,
                )
            };
            if ret <= 0 {
                break;
            }
            done += ret as usize;
        }
        sent += done as u64;
        port += n as u32;
    }
    Ok(sent)
}

/// What the prober saw.
#[derive(Debug, Default, Clone)]
pub struct ProbeResult {
    pub sent: u64,
    pub answered: u64,
    /// Request -> reply times of the answered requests, in nanoseconds.
    pub rtts_ns: Vec<u64>,
}

/// NAT-PMP "map UDP" request carrying `seq` as the requested lifetime, which the responder
/// echoes (so that a late reply is never taken for the current one).
fn probe_request(seq: u32) -> [u8; 12] {
    let mut req = [0u8; 12];
    Request::Map {
        proto: Transport::Udp,
        internal_port: 9,
        suggested_port: 0,
        lifetime: seq,
    }
    .encode(&mut req);
    req
}

/// One request at a time to `dst` from one socket in the calling thread's namespace: send,
/// wait for its reply (at most `timeout`), wait for the next slot (`interval`), until
/// `duration` is over or `stop`. The first `warmup` requests are not counted.
pub fn probe(
    dst: SocketAddrV4,
    interval: Duration,
    timeout: Duration,
    duration: Duration,
    warmup: u32,
    stop: &AtomicBool,
) -> Result<ProbeResult> {
    let fd = udp_socket(0, true)?;
    let raw = fd.as_raw_fd();
    let sa = sockaddr(dst);
    let mut result = ProbeResult::default();
    let mut buf = [0u8; BUF_LEN];
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut start = Instant::now();
    let max_requests =
        warmup as u64 + duration.as_micros() as u64 / interval.as_micros().max(1) as u64 + 1;
    for seq in 1..=max_requests as u32 {
        if seq == warmup + 1 {
            start = Instant::now();
        }
        if (seq > warmup && start.elapsed() >= duration) || stop.load(Ordering::Relaxed) {
            break;
        }
        let slot = Instant::now();
        let req = probe_request(seq);
        // SAFETY: valid fd, buffer and sockaddr_in.
        let ret = unsafe {
            libc::sendto(
                raw,
                req.as_ptr().cast(),
                req.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let counted = seq > warmup;
        if counted {
            result.sent += 1;
        }
        if ret < 0 {
            continue;
        }
        let t0 = Instant::now();
        // Wait for the reply with this sequence number; stale ones are skipped.
        'wait: while t0.elapsed() < timeout {
            let left = timeout.saturating_sub(t0.elapsed());
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready =
                unsafe { libc::poll(&mut pfd, 1, (left.as_micros().div_ceil(1000)) as i32) };
            if ready <= 0 {
                continue;
            }
            loop {
                let mut fromlen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                // SAFETY: valid fd, buffer and address out-parameters.
                let len = unsafe {
                    libc::recvfrom(
                        raw,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        (&mut from as *mut libc::sockaddr_in).cast(),
                        &mut fromlen,
                    )
                };
                if len < 0 {
                    break;
                }
                let rtt = t0.elapsed();
                let len = len as usize;
                if len == 16 && buf[1] == 0x81 && buf[12..16] == seq.to_be_bytes() {
                    let _ = from_sockaddr(&from);
                    if counted {
                        result.answered += 1;
                        result.rtts_ns.push(rtt.as_nanos() as u64);
                    }
                    break 'wait;
                }
            }
        }
        let next = slot + interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    Ok(result)
}

/// Shared stop flag and counters of a running generator.
pub struct Running<S> {
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<S>,
}

impl<S: Default> Running<S> {
    pub fn new() -> Running<S> {
        Running {
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(S::default()),
        }
    }
}

impl<S: Default> Default for Running<S> {
    fn default() -> Self {
        Running::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let mut out = [0u8; 32];
        assert_eq!(natpmp_response(&[0, 0], 7, &mut out), Some(12));
        assert_eq!(out[..12], [0, 0x80, 0, 0, 0, 0, 0, 7, 203, 0, 114, 1]);
        let req = probe_request(0x01020304);
        assert_eq!(natpmp_response(&req, 1, &mut out), Some(16));
        assert_eq!(out[1], 0x81);
        assert_eq!(out[12..16], [1, 2, 3, 4]);
        assert_eq!(natpmp_response(&[2, 1, 0], 1, &mut out), None);
    }

    #[test]
    fn payloads_are_what_the_codec_encodes() {
        let mut out = [0u8; 12];
        let len = Request::PublicAddress.encode(&mut out);
        assert_eq!(out[..len], PUBLIC_ADDRESS_REQUEST);
        let map = Request::Map {
            proto: Transport::Udp,
            internal_port: 5000,
            suggested_port: 5000,
            lifetime: 7200,
        };
        assert_eq!(map.encode(&mut out), 12);
        assert_eq!(out, MAP_REQUEST);
    }
}
