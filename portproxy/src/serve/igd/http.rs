//! The IGD's HTTP side (hyper): descriptions (GET), SOAP control (POST) and event
//! subscriptions (SUBSCRIBE, UNSUBSCRIBE; `events`), on the LAN address, to LAN hosts only;
//! bounded in connections (in all and per host), head size, header count, body size, time
//! to send a head and time per connection, so a slow or hostile client cannot hold it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::debug;
use tokio::net::TcpListener;

use super::IgdServer;
use super::control::{INVALID_ACTION, INVALID_ARGS};
use super::description::{
    COMMON_IF, COMMON_IF_CONTROL, COMMON_IF_SCPD, DESCRIPTION_V1, DESCRIPTION_V2, IP_CONNECTION,
    IP_CONNECTION_CONTROL, IP_CONNECTION_SCPD_V1, IP_CONNECTION_SCPD_V2,
};
use super::events::{Answer, Service};
use crate::proto::{gena, upnp};
use crate::relay::Tasks;
use crate::stats::Counter;

/// Connections at once; more are closed at once and counted.
const MAX_CONNECTIONS: usize = 32;
/// Connections of one LAN host at once, so that one host cannot take them all (a control
/// point makes one at a time); more are closed at once and counted.
const MAX_PER_HOST: usize = 8;
/// How long one connection may last, requests and all (a slow client is cut off).
const CONNECTION_TIME: Duration = Duration::from_secs(10);
/// How long a request head may take to arrive, from the connection or from the previous
/// answer: a LAN client sends it in one go. Without it a client sending a byte a second
/// held a connection for all of `CONNECTION_TIME`, and 32 of them kept everyone out.
const HEAD_TIME: Duration = Duration::from_secs(3);
/// How long a request body may take to arrive once its head is in: a control point sends a
/// SOAP call in one go. Without it a body trickled a byte a second held its connection for
/// all of `CONNECTION_TIME`.
const BODY_TIME: Duration = Duration::from_secs(3);
/// hyper's smallest read buffer, which bounds a request head.
const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;

/// Accepts connections until the listener fails.
pub async fn serve(igd: Arc<IgdServer>, listener: TcpListener, tasks: Tasks) -> Result<()> {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_host = Arc::new(PerHost::default());
    loop {
        let (stream, peer) = listener.accept().await?;
        let SocketAddr::V4(peer) = peer else {
            continue;
        };
        if !igd.is_lan_host(*peer.ip()) {
            igd.stats.add(Counter::DropNotOnLan);
            continue;
        }
        let Some(host_slot) = per_host.take(*peer.ip()) else {
            igd.stats.add(Counter::DropHttp);
            debug!("igd: closed a connection from {peer}: {MAX_PER_HOST} open from that host");
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            igd.stats.add(Counter::DropHttp);
            debug!("igd: closed a connection from {peer}: {MAX_CONNECTIONS} open");
            continue;
        };
        let igd = igd.clone();
        tasks.spawn(async move {
            let stats = igd.stats.clone();
            let service = service_fn(move |req| {
                let igd = igd.clone();
                async move { Ok::<_, Infallible>(respond(&igd, peer, req).await) }
            });
            // Title-Case header names (`Sid`, `Timeout`): what control points that compare
            // names exactly expect more often than lower case.
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
                    debug!("igd: connection from {peer}: {e}");
                }
                Err(_) => {
                    stats.add(Counter::DropHttp);
                    debug!("igd: connection from {peer} cut after {CONNECTION_TIME:?}");
                }
            }
            drop((permit, host_slot));
        });
    }
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

/// Answers `req`.
async fn respond(
    igd: &IgdServer,
    peer: SocketAddrV4,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match req.method().as_str() {
        "SUBSCRIBE" => return subscription(igd, peer, &path, false, &req),
        "UNSUBSCRIBE" => return subscription(igd, peer, &path, true, &req),
        _ => {}
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, DESCRIPTION_V1) => xml(StatusCode::OK, igd.description(1)),
        (&Method::GET, DESCRIPTION_V2) => xml(StatusCode::OK, igd.description(2)),
        (&Method::GET, IP_CONNECTION_SCPD_V1) => xml(StatusCode::OK, super::ip_connection_scpd(1)),
        (&Method::GET, IP_CONNECTION_SCPD_V2) => xml(StatusCode::OK, super::ip_connection_scpd(2)),
        (&Method::GET, COMMON_IF_SCPD) => xml(StatusCode::OK, super::common_if_scpd()),
        (&Method::POST, IP_CONNECTION_CONTROL | COMMON_IF_CONTROL) => {
            let family = if path == IP_CONNECTION_CONTROL {
                IP_CONNECTION
            } else {
                COMMON_IF
            };
            control(igd, peer, family, req).await
        }
        (&Method::GET | &Method::POST, _) => empty(StatusCode::NOT_FOUND),
        _ => empty(StatusCode::NOT_IMPLEMENTED),
    }
}

/// A SUBSCRIBE or UNSUBSCRIBE (`unsubscribe`) at the eventSubURL `path`. Its body, which
/// it should not have, is never read.
fn subscription(
    igd: &IgdServer,
    peer: SocketAddrV4,
    path: &str,
    unsubscribe: bool,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(service) = Service::at(path) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let answer = gena::parse(unsubscribe, req.headers(), *peer.ip())
        .and_then(|request| igd.events.answer(*peer.ip(), service, request));
    match answer {
        Ok(Answer::Subscribed { sid, timeout }) => {
            let mut response = empty(StatusCode::OK);
            let headers = response.headers_mut();
            headers.insert(
                header::SERVER,
                header::HeaderValue::from_static(super::ssdp::SERVER),
            );
            // A SID and a TIMEOUT are made here of visible ASCII only.
            for (name, value) in [("sid", sid), ("timeout", format!("Second-{timeout}"))] {
                if let Ok(value) = header::HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            response
        }
        Ok(Answer::Unsubscribed) => empty(StatusCode::OK),
        Err(status) => {
            igd.stats.add(Counter::GenaRefused);
            debug!(
                "igd: {} from {peer} at {path} refused: {status}",
                req.method()
            );
            empty(status)
        }
    }
}

/// One SOAP call to the service `family` (its type without the version).
async fn control(
    igd: &IgdServer,
    peer: SocketAddrV4,
    family: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // SOAPACTION: "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"
    let soap_action = req
        .headers()
        .get("soapaction")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_string());
    let Some((service, action)) = soap_action.as_deref().and_then(|a| a.split_once('#')) else {
        return fault(igd, INVALID_ACTION);
    };
    let version_ok = match service
        .strip_prefix(family)
        .and_then(|v| v.strip_prefix(':'))
    {
        Some("1") => true,
        Some("2") => family == IP_CONNECTION,
        _ => false,
    };
    if !version_ok {
        return fault(igd, INVALID_ACTION);
    }
    let body = Limited::new(req.into_body(), upnp::MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIME, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) => {
            igd.stats.add(Counter::DropHttp);
            debug!("igd: body from {peer}: {e}");
            return empty(StatusCode::PAYLOAD_TOO_LARGE);
        }
        Err(_) => {
            igd.stats.add(Counter::DropHttp);
            debug!("igd: body from {peer} not in after {BODY_TIME:?}");
            return close(StatusCode::REQUEST_TIMEOUT);
        }
    };
    let Ok(args) = upnp::action_arguments(&body, action) else {
        return fault(igd, INVALID_ARGS);
    };
    match igd.control.call(peer, service, action, &args).await {
        Ok(out) => {
            igd.stats.add(Counter::UpnpAnswered);
            xml(StatusCode::OK, upnp::soap_response(service, action, &out))
        }
        Err(e) => {
            debug!("upnp {peer}: {action} refused: {} {}", e.0, e.1);
            fault(igd, e)
        }
    }
}

fn fault(igd: &IgdServer, e: super::control::UpnpError) -> Response<Full<Bytes>> {
    igd.stats.add(Counter::UpnpRefused);
    xml(
        StatusCode::INTERNAL_SERVER_ERROR,
        upnp::soap_fault(e.0, e.1),
    )
}

fn xml(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/xml; charset=\"utf-8\""),
    );
    headers.insert(
        header::SERVER,
        header::HeaderValue::from_static(super::ssdp::SERVER),
    );
    headers.insert("ext", header::HeaderValue::from_static(""));
    response
}

/// `empty`, and the connection closed after it (the rest of the request is not waited for).
fn close(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = empty(status);
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
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
