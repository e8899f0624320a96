//! TCP reachability checks: a server in one namespace that answers every connection with its
//! host's role, and a client that connects from another namespace and reads it.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result};

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
