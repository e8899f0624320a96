//! The IGD's HTTP side (hyper): descriptions (GET), SOAP control (POST) and event
//! subscriptions (SUBSCRIBE, UNSUBSCRIBE; `events`), on the LAN address, to LAN hosts only,
//! with the bounds of every LAN HTTP server (`lan_http`) and a SOAP body of `upnp::MAX_BODY`.

use std::net::SocketAddrV4;
use std::sync::Arc;

use anyhow::Result;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use log::debug;
use tokio::net::TcpListener;

use super::IgdServer;
use super::control::{INVALID_ACTION, INVALID_ARGS};
use super::description::{
    COMMON_IF, COMMON_IF_CONTROL, COMMON_IF_SCPD, DESCRIPTION_V1, DESCRIPTION_V2, IP_CONNECTION,
    IP_CONNECTION_CONTROL, IP_CONNECTION_SCPD_V1, IP_CONNECTION_SCPD_V2,
};
use super::events::{Answer, Service};
use crate::lan_http::{self, closing, empty};
use crate::proto::{gena, upnp};
use crate::relay::Tasks;
use crate::stats::Counter;

/// Accepts connections until the listener fails.
pub async fn serve(igd: Arc<IgdServer>, listener: TcpListener, tasks: Tasks) -> Result<()> {
    let server = lan_http::Server {
        name: "igd",
        stats: igd.stats.clone(),
        is_lan_host: Box::new({
            let igd = igd.clone();
            move |ip| igd.is_lan_host(ip)
        }),
    };
    server
        .serve(listener, tasks, move |peer, req| {
            let igd = igd.clone();
            async move { respond(&igd, peer, req).await }
        })
        .await
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
    let body = match lan_http::body(req.into_body(), upnp::MAX_BODY).await {
        Ok(body) => body,
        Err(status) => {
            igd.stats.add(Counter::DropHttp);
            debug!("igd: body from {peer} refused: {status}");
            return closing(empty(status));
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
