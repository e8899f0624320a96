//! The UPnP HTTP relay (`--upnp-tcp 1`): the CGN's IGD made reachable at the
//! CPE's LAN address. Connections to LAN-address:PORT are spliced to CGN:PORT.
//! The configured ports listen from the start; a port first seen in a
//! LOCATION header is opened on demand.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use log::{debug, info, warn};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::relay::Tasks;
use crate::sockets;
use crate::stats::{Counter, Stats};

/// Ports relayed at most (the configured two plus ones learned from LOCATION).
const MAX_PORTS: usize = 8;
/// Connections relayed at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// SOAP exchanges take milliseconds; a connection held longer is cut so that
/// idle clients cannot hold every slot.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

pub struct HttpRelay {
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    ports: Mutex<HashSet<u16>>,
    connections: Arc<Semaphore>,
    tasks: Tasks,
}

impl HttpRelay {
    /// Opens the configured ports; failing to bind them is a start-up error.
    pub fn bind(
        cfg: Arc<Config>,
        stats: Arc<Stats>,
        tasks: &Tasks,
    ) -> Result<(Arc<Self>, Vec<TcpListener>)> {
        let mut listeners = Vec::new();
        let mut ports = HashSet::new();
        for port in cfg.http_ports {
            if ports.insert(port) {
                let addr = SocketAddrV4::new(cfg.lan.addr, port);
                listeners.push(sockets::tcp_listener(&cfg.lan, port).map_err(|e| {
                    sockets::explain_bind(e, "UPnP HTTP relay", addr, "--upnp-tcp")
                })?);
            }
        }
        let relay = HttpRelay {
            cfg,
            stats,
            ports: Mutex::new(ports),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            tasks: tasks.clone(),
        };
        Ok((Arc::new(relay), listeners))
    }

    /// Makes sure `port` is relayed; false if it cannot be (then LOCATION is left alone).
    pub fn ensure_port(self: &Arc<Self>, port: u16) -> bool {
        let mut ports = self.ports.lock().unwrap();
        if ports.contains(&port) {
            return true;
        }
        if ports.len() >= MAX_PORTS {
            return false;
        }
        match sockets::tcp_listener(&self.cfg.lan, port) {
            Ok(listener) => {
                ports.insert(port);
                info!(
                    "relaying UPnP HTTP on {}:{port} (seen in a LOCATION header)",
                    self.cfg.lan.addr
                );
                let (relay, addr) = (self.clone(), self.cfg.lan.addr);
                self.tasks.spawn(async move {
                    if let Err(e) = relay.serve(listener).await {
                        warn!("UPnP HTTP relay on {addr}:{port} stopped: {e:#}");
                    }
                });
                true
            }
            Err(e) => {
                warn!(
                    "cannot relay UPnP HTTP on {}:{port}: {e}; LOCATION left pointing at the CGN",
                    self.cfg.lan.addr
                );
                false
            }
        }
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        let port = listener.local_addr()?.port();
        loop {
            let permit = self.connections.clone().acquire_owned().await?;
            let (client, peer) = listener.accept().await?;
            let relay = self.clone();
            self.tasks.spawn(async move {
                if let Err(e) = relay.splice(client, port).await {
                    debug!("http {peer} -> {}:{port}: {e:#}", relay.cfg.cgn);
                }
                drop(permit);
            });
        }
    }

    async fn splice(&self, mut client: TcpStream, port: u16) -> Result<()> {
        let cgn = SocketAddrV4::new(self.cfg.cgn, port);
        let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(cgn)).await??;
        self.stats.add(Counter::HttpConnections);
        debug!("http {} -> {cgn}", client.peer_addr()?);
        tokio::time::timeout(
            SESSION_TIMEOUT,
            tokio::io::copy_bidirectional(&mut client, &mut upstream),
        )
        .await??;
        Ok(())
    }
}
