//! The UPnP HTTP relay (`--upnp-tcp 1`): the CGN's IGD made reachable at the
//! CPE's LAN address. Connections to LAN-address:PORT are relayed to CGN:PORT.
//! The configured ports listen from the start; a port first seen in a
//! LOCATION header is opened on demand.
//!
//! A port-mapping action (AddPortMapping, AddAnyPortMapping, DeletePortMapping)
//! is followed message by message: the request is parsed, sent on, the IGD's
//! response read and parsed, the grant or delete taken into the mapping table
//! (opening or closing the firewall hole), and only then the response passed
//! to the client. Everything else, and anything not understood, is spliced
//! byte for byte, as before.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use log::{debug, info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::mapping::{self, Backing, Grant, Key, Mappings, Origin};
use crate::proto::upnp::{self, Action, Head, Unparsed};
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
/// A UPnP description is kept up to this many characters (it is only shown).
const MAX_DESCRIPTION: usize = 128;

pub struct HttpRelay {
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    mappings: Arc<Mappings>,
    ports: Mutex<HashSet<u16>>,
    connections: Arc<Semaphore>,
    tasks: Tasks,
}

impl HttpRelay {
    /// Opens the configured ports; failing to bind them is a start-up error.
    pub fn bind(
        cfg: Arc<Config>,
        stats: Arc<Stats>,
        mappings: Arc<Mappings>,
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
            mappings,
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
                if let Err(e) = relay.relay(client, peer, port).await {
                    debug!("http {peer} -> {}:{port}: {e:#}", relay.cfg.cgn);
                }
                drop(permit);
            });
        }
    }

    async fn relay(&self, mut client: TcpStream, peer: SocketAddr, port: u16) -> Result<()> {
        let cgn = SocketAddrV4::new(self.cfg.cgn, port);
        let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(cgn)).await??;
        self.stats.add(Counter::HttpConnections);
        debug!("http {peer} -> {cgn}");
        tokio::time::timeout(
            SESSION_TIMEOUT,
            self.exchanges(&mut client, peer, &mut upstream),
        )
        .await??;
        Ok(())
    }

    /// Follows the mapping actions on one connection; splices from the first
    /// message it does not follow to the end.
    async fn exchanges(
        &self,
        client: &mut TcpStream,
        peer: SocketAddr,
        upstream: &mut TcpStream,
    ) -> Result<()> {
        let mut next = Vec::new();
        loop {
            let mut request = std::mem::take(&mut next);
            let Some(head) = read_head(client, &mut request, upnp::request_head).await? else {
                return splice(client, upstream, &request, &[]).await;
            };
            let Some(soap_action) = head
                .soap_action
                .clone()
                .filter(|a| upnp::is_mapping_action(a))
            else {
                return splice(client, upstream, &request, &[]).await;
            };
            let Some(end) = read_body(client, &mut request, &head).await? else {
                self.stats.add(Counter::UpnpNotUnderstood);
                return splice(client, upstream, &request, &[]).await;
            };
            next = request.split_off(end);
            let action = match upnp::request(&soap_action, &request[head.len..]) {
                Ok(Some(action)) => action,
                Ok(None) | Err(_) => {
                    self.stats.add(Counter::UpnpNotUnderstood);
                    debug!("http {peer}: {soap_action} not understood; spliced");
                    return splice(client, upstream, &request, &next).await;
                }
            };
            upstream.write_all(&request).await?;
            let mut response = Vec::new();
            let Some(answer) = read_head(upstream, &mut response, upnp::response_head).await?
            else {
                return splice(client, upstream, &next, &response).await;
            };
            let Some(end) = read_body(upstream, &mut response, &answer).await? else {
                self.stats.add(Counter::UpnpNotUnderstood);
                return splice(client, upstream, &next, &response).await;
            };
            let body = &response[answer.len..end];
            let granted = upnp::response(&action, answer.status.unwrap_or(0), body);
            self.learn(&action, granted, peer).await;
            client.write_all(&response).await?;
            if head.close || answer.close {
                return splice(client, upstream, &next, &[]).await;
            }
        }
    }

    /// Takes the IGD's answer to `action` into the mapping table.
    async fn learn(
        &self,
        action: &Action,
        answer: Result<Option<u16>, Unparsed>,
        peer: SocketAddr,
    ) {
        let external_port = match answer {
            Ok(Some(port)) => port,
            // Refused by the IGD: nothing changed.
            Ok(None) => return,
            Err(why) => {
                self.stats.add(Counter::UpnpNotUnderstood);
                debug!("http {peer}: the IGD's answer to {action:?} not understood: {why:?}");
                return;
            }
        };
        match action {
            Action::Delete { transport, .. } => {
                self.mappings
                    .deleted_external(*transport, external_port)
                    .await;
            }
            Action::Add {
                any,
                transport,
                internal_port,
                internal_client,
                description,
                lease,
                ..
            } => {
                let SocketAddr::V4(client) = peer else {
                    return;
                };
                let own = [self.cfg.lan.addr, self.cfg.wan.addr];
                if !mapping::is_lan_host(*internal_client, &self.cfg.lan, &own) {
                    self.stats.add(Counter::MappingRefusedNotLan);
                    warn!("http {peer}: a grant for {internal_client}, not a LAN host; no hole");
                    return;
                }
                let grant = Grant {
                    key: Key {
                        host: *internal_client,
                        proto: *transport,
                        internal_port: *internal_port,
                    },
                    external: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, external_port),
                    lifetime: *lease,
                    origin: Origin::Upnp {
                        any: *any,
                        description: description.chars().take(MAX_DESCRIPTION).collect(),
                        // The CGN's IGD keeps the lease: its grant is all there is.
                        lease: None,
                    },
                    backing: Backing::Relayed,
                    client,
                };
                // Refused grants are counted and logged by the table; the answer passes.
                let _ = self.mappings.granted(grant).await;
            }
        }
    }
}

/// Reads from `stream` into `buf` until `parse` finds a complete head. `None`
/// when the stream ends first or the head is not understood (what was read
/// stays in `buf`).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    parse: fn(&[u8]) -> Result<Option<Head>, Unparsed>,
) -> Result<Option<Head>> {
    loop {
        match parse(buf) {
            Ok(Some(head)) => return Ok(Some(head)),
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads the body `head` announces; returns where the message ends in `buf`,
/// or `None` if it has no Content-Length, a too long one, or the stream ends.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &Head,
) -> Result<Option<usize>> {
    let Some(end) = head
        .body_len()
        .ok()
        .and_then(|len| head.len.checked_add(len))
    else {
        return Ok(None);
    };
    while buf.len() < end {
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
    Ok(Some(end))
}

/// Sends what was read and not yet passed on (`to_upstream`, `to_client`), then
/// copies both ways until both sides are done.
async fn splice(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    to_upstream: &[u8],
    to_client: &[u8],
) -> Result<()> {
    upstream.write_all(to_upstream).await?;
    client.write_all(to_client).await?;
    tokio::io::copy_bidirectional(client, upstream).await?;
    Ok(())
}
