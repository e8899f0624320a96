//! The L3 softwire: a TUN device in each of two namespaces, joined by a thread that copies
//! packets between them, standing in for an ipip6 tunnel (which this kernel lacks).

use std::{
    fs::OpenOptions,
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::fs::OpenOptionsExt as _,
    },
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::Netns;

/// Poll timeout: how long stopping the forwarder may take.
const POLL_MS: i32 = 50;
/// Packets moved per direction per wakeup, so one busy side cannot starve the other.
const BURST: usize = 64;

/// Creates TUN device `name` (IFF_TUN | IFF_NO_PI: bare IP packets) in `ns`. The device
/// lives as long as the returned fd.
pub(crate) fn open_tun(ns: &Netns, name: &str) -> Result<OwnedFd> {
    ns.enter(|| -> Result<OwnedFd> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        // SAFETY: ifreq is plain old data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
        }
        Ok(file.into())
    })?
    .with_context(|| format!("creating TUN device {name} in {}", ns.role()))
}

/// The forwarder thread between two TUN fds. Dropping it stops the thread and closes the
/// fds, which removes both devices.
pub(crate) struct TunPipe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<[OwnedFd; 2]>>,
}

impl TunPipe {
    pub(crate) fn start(a: OwnedFd, b: OwnedFd) -> Result<TunPipe> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("tunpipe".into())
            .spawn(move || {
                forward(&flag, a.as_raw_fd(), b.as_raw_fd());
                [a, b]
            })
            .context("starting the TUN forwarder thread")?;
        Ok(TunPipe {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and hands back its two fds (the devices still exist).
    pub(crate) fn stop(mut self) -> [OwnedFd; 2] {
        self.halt()
            .expect("the forwarder thread runs until stopped")
    }

    fn halt(&mut self) -> Option<[OwnedFd; 2]> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take()?.join().ok()
    }
}

impl Drop for TunPipe {
    fn drop(&mut self) {
        self.halt();
    }
}

fn forward(stop: &AtomicBool, a: RawFd, b: RawFd) {
    let mut buf = vec![0u8; 65536];
    let mut fds = [a, b].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_MS) };
        if n <= 0 {
            continue; // timeout or EINTR
        }
        for (from, to) in [(0, 1), (1, 0)] {
            let revents = fds[from].revents;
            if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                thread::sleep(Duration::from_millis(POLL_MS as u64)); // do not spin
            }
            if revents & libc::POLLIN == 0 {
                continue;
            }
            for _ in 0..BURST {
                // SAFETY: buf is valid for buf.len() bytes.
                let len = unsafe { libc::read(fds[from].fd, buf.as_mut_ptr().cast(), buf.len()) };
                if len <= 0 {
                    break; // EAGAIN: drained
                }
                // A write to a device that is down fails (EIO): the packet is lost, as on a
                // real link that is down.
                // SAFETY: buf holds len bytes.
                unsafe { libc::write(fds[to].fd, buf.as_ptr().cast(), len as usize) };
            }
        }
    }
}
