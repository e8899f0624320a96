//! The JSON API and the web page, over HTTP on the LAN address (`--api-port`, never on
//! the WAN side), with the connection bounds of every LAN HTTP server (`lan_http`).
//!
//! It serves while the LAN has its address, whether a data path runs or not (the
//! supervisor binds it): while the daemon waits for the softwire, the status says so and
//! the tables show what the daemon holds. What needs the CGN goes through the running
//! data path's `Mapper` (`Shared::attach`); without one a mapping's delete leaves the
//! table and its hole closes, the CGN not asked, and a forward waits, pending.
//!
//! Reading is open to every LAN host: `GET /api/status`, `/api/counters`,
//! `/api/mappings`, `/api/forwards`, `/api/session` and the page (`page`). Changing needs
//! the password of `--api-password-file` (`auth`): `DELETE /api/mappings/HOST/PROTOCOL/PORT`
//! removes a mapping at the CGN and closes its hole; `POST /api/forwards`,
//! `PUT /api/forwards/HOST/PROTOCOL/PORT` and `DELETE /api/forwards/HOST/PROTOCOL/PORT`
//! add, change and delete manual forwards (`crate::forwards`). Every request must name this router in `Host`
//! (the LAN address, or a name of `--api-hosts`), so a page of another site cannot reach
//! the API through a name rebound to the LAN address; every change must come from the
//! page's own origin (`Origin`), or with the password in `Authorization` from a script.
//! Errors are JSON: `{"error": "what is wrong and what to do"}`.

mod auth;
mod hosts;
mod page;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use log::{debug, info};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::auth::{Auth, LoginRefused};
use crate::cli::Options;
use crate::config::Side;
use crate::forwards::{ForwardError, Forwards, Spec};
use crate::lan_http;
use crate::mapping::{Key, Mappings, View};
use crate::proto::Transport;
use crate::relay::Tasks;
use crate::serve::Mapper;
use crate::sockets;
use crate::stats::Stats;
use crate::status::{State, Status};

/// This build has the API (see `no_api.rs` for one without).
pub const NO_API: Option<&str> = None;

/// The longest request body taken (a login).
const MAX_BODY: usize = 1024;

/// What the API keeps across rebuilds of the data path and of its own server: its
/// settings, the sessions, the daemon's status as the supervisor last published it, and
/// the running data path's `Mapper`.
pub struct Shared {
    auth: Auth,
    port: u16,
    /// Names `Host` may give besides the LAN address.
    host_names: Vec<String>,
    leases_file: PathBuf,
    mode: String,
    status: watch::Receiver<Option<Status>>,
    stats: Arc<Stats>,
    netlink: rtnetlink::Handle,
    /// The softwire's name (`--wan-iface`), shown whether it is there or not.
    wan_iface: String,
    mappings: Arc<Mappings>,
    forwards: Arc<Forwards>,
    /// What maps and deletes at the CGN while a data path runs; `None` while none does.
    data_path: Mutex<Option<Arc<Mapper>>>,
}

impl Shared {
    /// From the options; `Err` when the password file cannot be read.
    pub fn new(
        opts: &Options,
        status: watch::Receiver<Option<Status>>,
        stats: Arc<Stats>,
        netlink: rtnetlink::Handle,
        mappings: Arc<Mappings>,
        forwards: Arc<Forwards>,
    ) -> Result<Shared> {
        use clap::ValueEnum as _;
        let auth = Auth::from_file(opts.api_password_file.as_deref())?;
        if !auth.has_password() {
            info!("api: read-only (no --api-password-file)");
        }
        Ok(Shared {
            auth,
            port: opts.api_port,
            host_names: opts
                .api_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            leases_file: opts.leases_file.clone(),
            mode: opts
                .mode
                .to_possible_value()
                .map_or(String::new(), |v| v.get_name().to_string()),
            status,
            stats,
            netlink,
            wan_iface: opts.wan_iface.clone(),
            mappings,
            forwards,
            data_path: Mutex::new(None),
        })
    }

    /// The running data path's `Mapper` (`None` when it stops): what needs the CGN goes
    /// through it.
    pub fn attach(&self, mapper: Option<Arc<Mapper>>) {
        *self.data_path.lock().unwrap() = mapper;
    }

    fn data_path(&self) -> Option<Arc<Mapper>> {
        self.data_path.lock().unwrap().clone()
    }
}

/// The API on one LAN address; a new address gets a new server.
pub struct ApiServer {
    shared: Arc<Shared>,
    lan: Side,
}

impl ApiServer {
    pub fn new(shared: Arc<Shared>, lan: Side) -> Arc<ApiServer> {
        Arc::new(ApiServer { shared, lan })
    }

    /// Binds the API's port on the LAN address.
    pub fn bind(&self) -> Result<TcpListener> {
        let lan = &self.lan;
        let addr = SocketAddrV4::new(lan.addr, self.shared.port);
        sockets::tcp_listener(lan, self.shared.port)
            .map_err(|e| sockets::explain_bind(e, "the API", addr, "--api"))
            .with_context(|| format!("the API on {}", lan.iface))
    }

    /// Serves HTTP on `listener` until cancelled.
    pub async fn run(self: Arc<Self>, listener: TcpListener, tasks: Tasks) -> Result<()> {
        let server = lan_http::Server {
            name: "api",
            stats: self.shared.stats.clone(),
            is_lan_host: Box::new({
                let api = self.clone();
                move |ip| api.is_lan_host(ip)
            }),
        };
        server
            .serve(listener, tasks, move |peer, req| {
                let api = self.clone();
                async move { secured(api.respond(peer, req).await) }
            })
            .await
    }

    /// The running data path's `Mapper`, if it is built for this LAN address (one built for
    /// another is about to be replaced).
    fn data_path(&self) -> Option<Arc<Mapper>> {
        self.shared
            .data_path()
            .filter(|mapper| mapper.config().lan == self.lan)
    }

    /// A LAN host, not the router's own LAN address (nor its WAN address, while known).
    fn is_lan_host(&self, ip: Ipv4Addr) -> bool {
        let wan = self.data_path().map(|m| m.config().wan.addr);
        let own: Vec<Ipv4Addr> = [Some(self.lan.addr), wan].into_iter().flatten().collect();
        crate::mapping::is_lan_host(ip, &self.lan, &own)
    }

    async fn respond(&self, peer: SocketAddrV4, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let host = match self.named_host(req.headers()) {
            Ok(host) => host,
            Err(why) => return error(StatusCode::FORBIDDEN, why),
        };
        let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
        let origin = header_str(req.headers(), header::ORIGIN);
        if changes
            && let Some(origin) = origin
            && origin != format!("http://{host}")
        {
            debug!(
                "api: {} from {peer} with Origin {origin} refused",
                req.method()
            );
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "changes are only taken from this router's own page (http://{host}), \
                     not from {origin}"
                ),
            );
        }
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/api/status") => json(StatusCode::OK, &self.status().await),
            (Method::GET, "/api/counters") => self.counters(),
            (Method::GET, "/api/mappings") => json(StatusCode::OK, &self.mappings().await),
            (Method::GET, "/api/session") => json(
                StatusCode::OK,
                &serde_json::json!({
                    "password_set": self.shared.auth.has_password(),
                    "logged_in": self.authorize(&req).is_ok(),
                }),
            ),
            (Method::POST, "/api/login") => self.login(peer, req).await,
            (Method::POST, "/api/logout") => self.logout(&req),
            (Method::DELETE, p) if p.starts_with("/api/mappings/") => {
                if let Err(refused) = self.authorize(&req) {
                    return refused.answer();
                }
                self.delete(peer, &p["/api/mappings/".len()..]).await
            }
            (Method::GET, "/api/forwards") => {
                json(StatusCode::OK, &self.shared.forwards.list().await)
            }
            (Method::POST, "/api/forwards") => {
                if let Err(refused) = self.authorize(&req) {
                    return refused.answer();
                }
                self.add_forward(peer, req).await
            }
            (Method::PUT | Method::DELETE, p) if p.starts_with("/api/forwards/") => {
                if let Err(refused) = self.authorize(&req) {
                    return refused.answer();
                }
                let which = p["/api/forwards/".len()..].to_string();
                self.change_forward(peer, &which, req).await
            }
            (_, "/api/status" | "/api/counters" | "/api/mappings" | "/api/session") => {
                method_not_allowed("GET")
            }
            (_, "/api/login" | "/api/logout") => method_not_allowed("POST"),
            (_, "/api/forwards") => method_not_allowed("GET, POST"),
            (_, p) if p.starts_with("/api/mappings/") => method_not_allowed("DELETE"),
            (_, p) if p.starts_with("/api/forwards/") => method_not_allowed("PUT, DELETE"),
            (_, p) if p.starts_with("/api/") => {
                error(StatusCode::NOT_FOUND, format!("no such endpoint: {p}"))
            }
            (Method::GET | Method::HEAD, p) => match page::asset(p) {
                Some((content_type, body)) => asset(content_type, body),
                None => error(StatusCode::NOT_FOUND, format!("no such page: {p}")),
            },
            _ => method_not_allowed("GET"),
        }
    }

    /// The `Host` the request names, if it is this router (the LAN address or a name of
    /// `--api-hosts`, with the API's port); else the refusal.
    fn named_host(&self, headers: &HeaderMap) -> Result<String, String> {
        let host = header_str(headers, header::HOST)
            .unwrap_or("")
            .to_ascii_lowercase();
        let port = self.shared.port;
        let (name, given_port) = match host.rsplit_once(':') {
            Some((name, p)) => (name, p.parse::<u16>().ok()),
            None => (host.as_str(), Some(80)),
        };
        let ours = name.parse::<Ipv4Addr>().ok() == Some(self.lan.addr)
            || self.shared.host_names.iter().any(|n| n == name);
        if ours && given_port == Some(port) {
            return Ok(host);
        }
        Err(format!(
            "Host {host:?} is not this router's API ({}:{port}); to reach it by a name, add \
             the name to --api-hosts",
            self.lan.addr
        ))
    }

    /// Whether the request may change things: the password in `Authorization: Bearer`, or
    /// a session cookie sent from the page's origin (a cookie alone could come from a form
    /// of another site).
    fn authorize(&self, req: &Request<Incoming>) -> Result<(), Refused> {
        let auth = &self.shared.auth;
        if !auth.has_password() {
            return Err(Refused::ReadOnly);
        }
        let headers = req.headers();
        let bearer =
            header_str(headers, header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|given| auth.is_password(given.as_bytes())) {
            return Ok(());
        }
        let from_page = header_str(headers, header::ORIGIN).is_some()
            || matches!(*req.method(), Method::GET | Method::HEAD);
        if from_page && session(headers).is_some_and(|token| auth.is_session(token)) {
            return Ok(());
        }
        Err(Refused::NotLoggedIn)
    }

    /// What the data path was built for (WAN address, CGN) comes from it: none while it
    /// does not run.
    async fn status(&self) -> StatusView {
        let data_path = self.data_path();
        let cfg = data_path.as_ref().map(|m| m.config());
        let mut status = self.shared.status.borrow().clone();
        if let Some(status) = &mut status {
            status.counters.clear();
            // Published once a second; the table's own count is current.
            status.mappings = self.shared.mappings.len();
        }
        let softwire = crate::netif::softwire(&self.shared.netlink, &self.shared.wan_iface)
            .await
            .unwrap_or_else(|e| {
                debug!("api: {e:#}");
                None
            });
        StatusView {
            version: env!("CARGO_PKG_VERSION"),
            mode: self.shared.mode.clone(),
            status,
            lan: SideView::of(&self.lan),
            wan: SideView {
                iface: self.shared.wan_iface.clone(),
                address: cfg.map(|c| SideView::address(&c.wan)),
            },
            softwire,
            cgn_address: cfg.map(|c| c.cgn),
            external_address: self.shared.mappings.known_public_address().await,
        }
    }

    fn counters(&self) -> Response<Full<Bytes>> {
        let status = self.shared.status.borrow().clone();
        let Some(status) = status else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is starting".into(),
            );
        };
        match crate::show_stats::counters(&status, &self.shared.stats.snapshot()) {
            Ok(counters) => json(StatusCode::OK, &counters),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }

    async fn mappings(&self) -> Vec<MappingView> {
        let views = self.shared.mappings.list().await;
        let hosts: Vec<Ipv4Addr> = views.iter().map(|v| v.host).collect();
        let neighbours = crate::netif::neighbours(&self.shared.netlink, self.lan.index)
            .await
            .unwrap_or_else(|e| {
                debug!("api: {e:#}");
                Vec::new()
            });
        let mut known = hosts::known(&hosts, &self.shared.leases_file, &neighbours);
        views
            .into_iter()
            .map(|view| MappingView {
                known: known.remove(&view.host).unwrap_or_default(),
                view,
            })
            .collect()
    }

    /// `POST /api/login`. A session made without the page's `Origin` (by a script) makes no
    /// changes: `authorize` wants the `Origin` with the cookie.
    async fn login(&self, peer: SocketAddrV4, req: Request<Incoming>) -> Response<Full<Bytes>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Login {
            password: String,
        }
        let login: Login = match json_body(req).await {
            Ok(login) => login,
            Err(refused) => return refused,
        };
        match self
            .shared
            .auth
            .login(*peer.ip(), login.password.as_bytes())
        {
            Ok(token) => {
                info!("api: {} logged in", peer.ip());
                let mut response = json(StatusCode::OK, &serde_json::json!({"logged_in": true}));
                let cookie = format!(
                    "{}={token}; Path=/api; HttpOnly; SameSite=Strict; Max-Age={}",
                    auth::COOKIE,
                    auth::SESSION_LIFETIME.as_secs()
                );
                if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                }
                response
            }
            Err(LoginRefused::NoPassword) => Refused::ReadOnly.answer(),
            Err(LoginRefused::Wrong) => {
                info!("api: wrong password from {}", peer.ip());
                error(StatusCode::UNAUTHORIZED, "wrong password".into())
            }
            Err(LoginRefused::TooMany(wait)) => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many login attempts ({} a minute per host); try again in {} s",
                        auth::LOGINS_PER_HOST,
                        wait.as_secs()
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs()));
                response
            }
        }
    }

    fn logout(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(token) = session(req.headers()) {
            self.shared.auth.logout(token);
        }
        let mut response = json(StatusCode::OK, &serde_json::json!({"logged_in": false}));
        let expired = format!(
            "{}=; Path=/api; HttpOnly; SameSite=Strict; Max-Age=0",
            auth::COOKIE
        );
        if let Ok(cookie) = HeaderValue::from_str(&expired) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response
    }

    /// `DELETE /api/mappings/HOST/PROTOCOL/PORT`.
    async fn delete(&self, peer: SocketAddrV4, which: &str) -> Response<Full<Bytes>> {
        let key = match key_of(which, "mappings") {
            Ok(key) => key,
            Err(refused) => return refused,
        };
        let Some(entry) = self.shared.mappings.get(&key).await else {
            return error(StatusCode::NOT_FOUND, format!("no mapping {key}"));
        };
        let at_cgn = match self.data_path() {
            Some(mapper) => match mapper.remove(&entry).await {
                Ok(()) => "deleted".to_string(),
                Err(failure) => format!("not confirmed: {failure}"),
            },
            // It stays at the CGN until it expires there, as a forward deleted meanwhile.
            None => {
                self.shared.mappings.deleted(key).await;
                format!("not asked: {}", self.not_relaying())
            }
        };
        info!("api: {} deleted mapping {key}", peer.ip());
        json(
            StatusCode::OK,
            &serde_json::json!({
                "deleted": format!("{}:{} {}", key.host, key.internal_port, key.proto.name()),
                "at_cgn": at_cgn,
            }),
        )
    }

    /// Why no data path runs, as the status says (a rebuild's moment has none of its own).
    fn not_relaying(&self) -> String {
        match self.shared.status.borrow().as_ref().map(|s| &s.state) {
            Some(state @ (State::WaitingFor(_) | State::Retrying(_))) => state.to_string(),
            _ => "the data path is being built".into(),
        }
    }

    /// `POST /api/forwards` with a `Spec`: answers the new forward's view.
    async fn add_forward(
        &self,
        peer: SocketAddrV4,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let spec = match spec_body(req).await {
            Ok(spec) => spec,
            Err(refused) => return refused,
        };
        match self.shared.forwards.add(&spec).await {
            Ok(view) => {
                info!(
                    "api: {} added forward {}:{}/{}",
                    peer.ip(),
                    spec.host,
                    spec.internal_port,
                    spec.protocol
                );
                json(StatusCode::CREATED, &view)
            }
            Err(e) => forward_refused(e),
        }
    }

    /// `PUT /api/forwards/HOST/PROTOCOL/PORT` with a `Spec` (answers the view) or
    /// `DELETE` of that path.
    async fn change_forward(
        &self,
        peer: SocketAddrV4,
        which: &str,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let key = match key_of(which, "forwards") {
            Ok(key) => key,
            Err(refused) => return refused,
        };
        let forwards = &self.shared.forwards;
        if req.method() == Method::DELETE {
            return match forwards.delete(&key).await {
                Ok(()) => {
                    info!("api: {} deleted forward {key}", peer.ip());
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "deleted": key.to_string() }),
                    )
                }
                Err(e) => forward_refused(e),
            };
        }
        let spec = match spec_body(req).await {
            Ok(spec) => spec,
            Err(refused) => return refused,
        };
        match forwards.change(&key, &spec).await {
            Ok(view) => {
                info!("api: {} changed forward {key}", peer.ip());
                json(StatusCode::OK, &view)
            }
            Err(e) => forward_refused(e),
        }
    }
}

/// The answer to a forward not added, changed or deleted.
fn forward_refused(e: ForwardError) -> Response<Full<Bytes>> {
    let status = match e {
        ForwardError::Invalid(_) | ForwardError::NotLanHost { .. } | ForwardError::TooMany => {
            StatusCode::BAD_REQUEST
        }
        ForwardError::Duplicate(_)
        | ForwardError::ExternalPortWanted { .. }
        | ForwardError::HeldByClient { .. } => StatusCode::CONFLICT,
        ForwardError::Unknown(_) => StatusCode::NOT_FOUND,
        ForwardError::Save(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// A forward's `Spec` from the body, refusing fields it does not have (`Spec` cannot deny
/// them itself: it is flattened into `forwards::View`). Its fields are those it writes.
async fn spec_body(req: Request<Incoming>) -> Result<Spec, Response<Full<Bytes>>> {
    let body: serde_json::Map<String, serde_json::Value> = json_body(req).await?;
    let not_json = |e: serde_json::Error| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not the JSON expected: {e}"),
        )
    };
    let spec: Spec = serde_json::from_value(body.clone().into()).map_err(not_json)?;
    let known = serde_json::to_value(&spec).map_err(not_json)?;
    if let Some(unknown) = body.keys().find(|k| known.get(k.as_str()).is_none()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("the body is not the JSON expected: unknown field `{unknown}`"),
        ));
    }
    Ok(spec)
}

/// `GET /api/status`.
#[derive(Serialize)]
struct StatusView {
    version: &'static str,
    /// NAT-PMP and PCP: auto, relay or proxy (`--mode`).
    mode: String,
    /// As the supervisor last published it, without counters (`/api/counters` has them).
    #[serde(flatten)]
    status: Option<Status>,
    lan: SideView,
    /// Its address as the data path uses it (none while none runs).
    wan: SideView,
    /// The WAN interface's kind, tunnel endpoints and IPv6 addresses (none while it is
    /// not there).
    softwire: Option<crate::netif::Softwire>,
    /// The CGN the data path relays to (none while none runs).
    cgn_address: Option<Ipv4Addr>,
    /// The CGN's external address, once known.
    external_address: Option<Ipv4Addr>,
}

#[derive(Serialize)]
struct SideView {
    iface: String,
    address: Option<String>,
}

impl SideView {
    fn of(side: &Side) -> SideView {
        SideView {
            iface: side.iface.clone(),
            address: Some(SideView::address(side)),
        }
    }

    fn address(side: &Side) -> String {
        format!("{}/{}", side.addr, side.prefix_len)
    }
}

/// One mapping of `GET /api/mappings`: as `portproxy mappings --json` shows it, with
/// what is known of its host (`host_name`, `mac`).
#[derive(Serialize)]
struct MappingView {
    #[serde(flatten)]
    view: View,
    #[serde(flatten)]
    known: hosts::Known,
}

/// The key of `/api/WHAT/HOST/PROTOCOL/PORT`, or the answer to a path that names none.
#[allow(clippy::result_large_err)] // a response, built once per request
fn key_of(which: &str, what: &str) -> Result<Key, Response<Full<Bytes>>> {
    parse_key(which).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "{which:?} names nothing: expected HOST/PROTOCOL/PORT, as in \
                 /api/{what}/192.168.1.2/tcp/8080"
            ),
        )
    })
}

/// `HOST/PROTOCOL/PORT`.
fn parse_key(which: &str) -> Option<Key> {
    let mut parts = which.split('/');
    let (host, proto, port) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let proto = match proto {
        "tcp" => Transport::Tcp,
        "udp" => Transport::Udp,
        _ => return None,
    };
    Some(Key {
        host: host.parse().ok()?,
        proto,
        internal_port: port.parse().ok().filter(|&p| p > 0)?,
    })
}

/// The session token of the request's cookie.
fn session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| auth::cookie(v, auth::COOKIE))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A JSON body of type `T`, at most `MAX_BODY` bytes, sent as `application/json`.
async fn json_body<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let is_json = header_str(req.headers(), header::CONTENT_TYPE).is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim() == "application/json")
    });
    if !is_json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json".into(),
        ));
    }
    let body = lan_http::body(req.into_body(), MAX_BODY)
        .await
        .map_err(|status| {
            let why = match status {
                StatusCode::REQUEST_TIMEOUT => "the body did not arrive in time".to_string(),
                _ => format!("the body is longer than {MAX_BODY} bytes"),
            };
            lan_http::closing(error(status, why))
        })?;
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not the JSON expected: {e}"),
        )
    })
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Why a change is refused.
enum Refused {
    /// No password is configured.
    ReadOnly,
    /// Neither the password nor a session from the page came with it.
    NotLoggedIn,
}

impl Refused {
    fn answer(self) -> Response<Full<Bytes>> {
        match self {
            Refused::ReadOnly => error(
                StatusCode::FORBIDDEN,
                "the API is read-only: no password is configured; to allow changes, put one \
                 in a file and give it with --api-password-file (UCI: option api_password_file)"
                    .into(),
            ),
            Refused::NotLoggedIn => error(
                StatusCode::UNAUTHORIZED,
                "log in first (POST /api/login with {\"password\": ...}) or send \
                 Authorization: Bearer PASSWORD"
                    .into(),
            ),
        }
    }
}

fn method_not_allowed(allowed: &'static str) -> Response<Full<Bytes>> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this endpoint takes {allowed} only"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// What every answer carries: the page loads only its own script and style, talks only to
/// this origin, and is never framed or sniffed as another type.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn secured(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_named_host_protocol_port() {
        assert_eq!(
            parse_key("192.168.1.2/tcp/8080"),
            Some(Key {
                host: Ipv4Addr::new(192, 168, 1, 2),
                proto: Transport::Tcp,
                internal_port: 8080
            })
        );
        for bad in [
            "",
            "192.168.1.2",
            "192.168.1.2/tcp",
            "192.168.1.2/sctp/80",
            "192.168.1.2/tcp/0",
            "192.168.1.2/tcp/65536",
            "192.168.1.2/tcp/80/x",
            "host/tcp/80",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}
