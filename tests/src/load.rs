//! Client load for the robustness tests: a NAT-PMP flood from one host, and the one request
//! a well-behaved client makes meanwhile.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::Netns;

/// A flood keeps a core busy: two at once (tests run in parallel) measure the machine, not
/// portproxy, and starve every daemon in the test binary until clients time out and retry.
/// A test that floods holds this for its whole run, so one flood runs at a time.
pub fn one_flood_at_a_time() -> MutexGuard<'static, ()> {
    static FLOOD: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it left nothing to repair.
    FLOOD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends NAT-PMP public-address requests to `gateway` from 256 source ports in `ns`, as fast
/// as it can, until `duration` has passed, `stop` is set or two million are sent. Returns how
/// many were sent.
pub fn flood_nat_pmp(
    ns: &Netns,
    gateway: SocketAddrV4,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<u64> {
    ns.enter(|| -> Result<u64> {
        let sockets: Vec<UdpSocket> = (0..256)
            .map(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .collect::<Result<_, _>>()?;
        let mut sent = 0u64;
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline && sent < 2_000_000 && !stop.load(Ordering::Relaxed) {
            for socket in &sockets {
                if socket.send_to(&[0, 0], gateway).is_ok() {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    })?
}

/// One NAT-PMP public-address request with libnatpmp's retries (250 ms doubling, 4 tries,
/// so at most 3.75 s); true if the gateway answered it.
pub fn public_address(socket: &UdpSocket, gateway: SocketAddrV4) -> Result<bool> {
    let mut wait = Duration::from_millis(250);
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        socket.send_to(&[0, 0], gateway)?;
        socket.set_read_timeout(Some(wait))?;
        wait *= 2;
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            if from == SocketAddr::V4(gateway) && len >= 12 && buf[..2] == [0, 0x80] {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
