//! TCP reachability checks: a server in one namespace that answers every connection with its
//! host's role, and a client that connects from another namespace and reads it; and forged
//! UDP datagrams for the hostile tests.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::Netns;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP server answering each connection with its host's role; stopped on drop.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Netns {
    /// Listens on 0.0.0.0:`port` in this namespace and answers every connection with
    /// [`Netns::role`] and a newline.
    pub fn serve_tcp(&self, port: u16) -> Result<TcpServer> {
        let listener = self
            .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("listening on TCP port {port} in {}", self.role()))?;
        listener.set_nonblocking(true)?;
        let token = format!("{}\n", self.role());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(token.as_bytes());
                    }
                    // WouldBlock: nobody is connecting.
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(TcpServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Connects from this namespace to `addr` (bounded by a timeout) and returns the token
    /// the server sent, e.g. `"lan1"`.
    pub fn connect_tcp(&self, addr: SocketAddr) -> Result<String> {
        self.enter(|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            let mut token = String::new();
            stream.read_to_string(&mut token)?;
            Ok(token.trim().to_owned())
        })?
        .with_context(|| format!("TCP connection from {} to {addr}", self.role()))
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends one UDP datagram with any source address and port (IP_HDRINCL raw socket), from
/// the calling thread's namespace. The UDP checksum is computed.
pub fn send_raw_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Result<()> {
    let udp_len = 8 + payload.len();
    let mut packet = vec![0u8; 20 + udp_len];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    packet[8] = if dst.ip().is_multicast() { 2 } else { 64 };
    packet[9] = libc::IPPROTO_UDP as u8;
    packet[12..16].copy_from_slice(&src.ip().octets());
    packet[16..20].copy_from_slice(&dst.ip().octets());
    let udp = &mut packet[20..];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[8..].copy_from_slice(payload);
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.ip().octets());
    add(&dst.ip().octets());
    add(&[0, libc::IPPROTO_UDP as u8]);
    add(&(udp_len as u16).to_be_bytes());
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    // SAFETY: plain socket syscalls on a fd we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*dst.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        ensure!(
            sent == packet.len() as isize,
            "raw sendto {src} -> {dst}: {error}"
        );
    }
    Ok(())
}
