//! The daemon's HTTP servers on the LAN address (hyper): the IGD's (`serve::igd`) and the
//! API's (`api`). What they share is how connections are taken: from LAN hosts only,
//! bounded in connections (in all and per host), head size, header count, time to send a
//! head and time per connection, so a slow or hostile client cannot hold them; request
//! bodies are read up to a limit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::debug;
use tokio::net::TcpListener;

use crate::relay::Tasks;
use crate::stats::{Counter, Stats};

/// Connections at once; more are closed at once and counted.
const MAX_CONNECTIONS: usize = 32;
/// Connections of one LAN host at once, so that one host cannot take them all (a control
/// point makes one at a time, a browser six); more are closed at once and counted.
const MAX_PER_HOST: usize = 8;
/// How long one connection may last, requests and all (a slow client is cut off).
const CONNECTION_TIME: Duration = Duration::from_secs(10);
/// How long a request head may take to arrive, from the connection or from the previous
/// answer: a LAN client sends it in one go. Without it a client sending a byte a second
/// held a connection for all of `CONNECTION_TIME`, and 32 of them kept everyone out.
const HEAD_TIME: Duration = Duration::from_secs(3);
/// How long a request body may take to arrive once its head is in: a client sends a SOAP
/// call or a login in one go. Without it a body trickled a byte a second held its
/// connection for all of `CONNECTION_TIME`.
const BODY_TIME: Duration = Duration::from_secs(3);
/// hyper's smallest read buffer, which bounds a request head.
const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;

/// One server: what it is called in the log, who may connect, and its counters.
pub struct Server {
    pub name: &'static str,
    pub stats: Arc<Stats>,
    /// Whether a peer address is a host of the LAN (others are dropped and counted).
    pub is_lan_host: Box<dyn Fn(Ipv4Addr) -> bool + Send + Sync>,
}

impl Server {
    /// Accepts connections until the listener fails, each served on a task of `tasks` by
    /// `respond` (given the peer and the request).
    pub async fn serve<F, Fut>(self, listener: TcpListener, tasks: Tasks, respond: F) -> Result<()>
    where
        F: Fn(SocketAddrV4, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_host = Arc::new(PerHost::default());
        let name = self.name;
        loop {
            let (stream, peer) = listener.accept().await?;
            let SocketAddr::V4(peer) = peer else {
                continue;
            };
            if !(self.is_lan_host)(*peer.ip()) {
                self.stats.add(Counter::DropNotOnLan);
                continue;
            }
            let Some(host_slot) = per_host.take(*peer.ip()) else {
                self.stats.add(Counter::DropHttp);
                debug!(
                    "{name}: closed a connection from {peer}: {MAX_PER_HOST} open from that host"
                );
                continue;
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                self.stats.add(Counter::DropHttp);
                debug!("{name}: closed a connection from {peer}: {MAX_CONNECTIONS} open");
                continue;
            };
            let stats = self.stats.clone();
            let respond = respond.clone();
            tasks.spawn(async move {
                let service = service_fn(move |req| {
                    let answer = respond(peer, req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                // Title-Case header names (`Sid`, `Timeout`): what UPnP control points that
                // compare names exactly expect more often than lower case.
                let connection = http1::Builder::new()
                    .title_case_headers(true)
                    .max_buf_size(MAX_HEAD)
                    .max_headers(MAX_HEADERS)
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIME)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIME, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        stats.add(Counter::DropHttp);
                        debug!("{name}: connection from {peer}: {e}");
                    }
                    Err(_) => {
                        stats.add(Counter::DropHttp);
                        debug!("{name}: connection from {peer} cut after {CONNECTION_TIME:?}");
                    }
                }
                drop((permit, host_slot));
            });
        }
    }
}

/// A request's body, unless it is longer than `max` bytes (413), does not arrive within
/// `BODY_TIME` (408) or the connection fails (413); answer a refusal with `closing`, since
/// the rest of the body is not waited for.
pub async fn body(body: Incoming, max: usize) -> Result<Bytes, StatusCode> {
    match tokio::time::timeout(BODY_TIME, Limited::new(body, max).collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) => {
            debug!("request body: {e}");
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// `response`, and the connection closed after it.
pub fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

/// An answer without a body.
pub fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// How many connections each LAN host has open.
#[derive(Default)]
struct PerHost(Mutex<HashMap<Ipv4Addr, usize>>);

/// One of a host's connections; given back on drop.
struct HostSlot {
    hosts: Arc<PerHost>,
    host: Ipv4Addr,
}

impl PerHost {
    /// A slot for another connection of `host`, unless it has `MAX_PER_HOST` open.
    fn take(self: &Arc<Self>, host: Ipv4Addr) -> Option<HostSlot> {
        let mut open = self.0.lock().unwrap();
        let n = open.entry(host).or_default();
        if *n >= MAX_PER_HOST {
            return None;
        }
        *n += 1;
        Some(HostSlot {
            hosts: self.clone(),
            host,
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut open = self.hosts.0.lock().unwrap();
        if let Some(n) = open.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_gets_its_share_of_connections_and_them_back() {
        let hosts = Arc::new(PerHost::default());
        let (one, two) = (Ipv4Addr::new(192, 168, 1, 2), Ipv4Addr::new(192, 168, 1, 3));
        let mut held: Vec<HostSlot> = (0..MAX_PER_HOST)
            .map(|_| hosts.take(one).expect("within the share"))
            .collect();
        assert!(hosts.take(one).is_none());
        // Another host is not held back by it.
        assert!(hosts.take(two).is_some());
        held.pop();
        assert!(hosts.take(one).is_some());
        held.clear();
        assert!(hosts.0.lock().unwrap().is_empty());
    }
}
