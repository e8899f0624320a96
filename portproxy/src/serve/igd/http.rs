//! The IGD's HTTP side (hyper): descriptions (GET) and SOAP control (POST), on the LAN
//! address, to LAN hosts only; bounded in connections, head size, header count, body size
//! and time per connection, so a slow or hostile client cannot hold it.

use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use log::debug;
use tokio::net::TcpListener;

use super::IgdServer;
use super::control::{INVALID_ACTION, INVALID_ARGS};
use super::description::{
    COMMON_IF, COMMON_IF_CONTROL, COMMON_IF_SCPD, DESCRIPTION_V1, DESCRIPTION_V2, IP_CONNECTION,
    IP_CONNECTION_CONTROL, IP_CONNECTION_SCPD_V1, IP_CONNECTION_SCPD_V2,
};
use crate::proto::upnp;
use crate::relay::Tasks;
use crate::stats::Counter;

/// Connections at once; more are closed at once and counted.
const MAX_CONNECTIONS: usize = 32;
/// How long one connection may last, requests and all (a slow client is cut off).
const CONNECTION_TIME: Duration = Duration::from_secs(10);
/// hyper's smallest read buffer, which bounds a request head.
const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;

/// Accepts connections until the listener fails.
pub async fn serve(igd: Arc<IgdServer>, listener: TcpListener, tasks: Tasks) -> Result<()> {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = listener.accept().await?;
        let SocketAddr::V4(peer) = peer else {
            continue;
        };
        if !igd.is_lan_host(*peer.ip()) {
            igd.stats.add(Counter::DropNotOnLan);
            continue;
        }
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
            let connection = http1::Builder::new()
                .max_buf_size(MAX_HEAD)
                .max_headers(MAX_HEADERS)
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
            drop(permit);
        });
    }
}

async fn respond(
    igd: &IgdServer,
    peer: SocketAddrV4,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
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
    let body = match Limited::new(req.into_body(), upnp::MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            igd.stats.add(Counter::DropHttp);
            debug!("igd: body from {peer}: {e}");
            return empty(StatusCode::PAYLOAD_TOO_LARGE);
        }
    };
    let Ok(args) = upnp::arguments(&body, action) else {
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

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
