//! GENA eventing for the IGD's services (UPnP Device Architecture 1.1 §4): a LAN control
//! point SUBSCRIBEs at an eventSubURL with a CALLBACK URL and is sent a NOTIFY there with
//! every evented variable of the service at once (SEQ 0), then one whenever one of them
//! changes: the CGN's external address or the number of mappings (WANIPConnection;
//! WANCommonInterfaceConfig's PhysicalLinkStatus is always "Up"). Changes come from the
//! table's watch (`Mappings::watch`), not from polling.
//!
//! Decisions (CallStranger, CVE-2020-12695, and bounds):
//! - A (UN)SUBSCRIBE's headers are read and checked by `proto::gena` (callbacks only to the
//!   subscriber itself, bounded TIMEOUT; 412 or 400 otherwise, counted as `gena_refused`).
//! - A SID is renewed or cancelled only by the host that took it (412 otherwise), and is
//!   random (`getrandom`), so another host can neither guess nor end it.
//! - At most `PER_HOST` subscriptions per host and `TOTAL` in all: a new one ends the
//!   oldest of the host, else the oldest of the host holding the most (so a flood from
//!   many addresses ends the flooder's own, not a host's single subscription).
//! - Each subscription has a task of its own that sends its events in order, at most one
//!   per `MODERATION` (changes in between are sent together), each NOTIFY bounded by
//!   `DELIVERY_TIME`: a callback that never answers holds only its own task, never the
//!   server. A failed delivery is counted (`gena_failed`) and the subscription kept until
//!   it expires; its SEQ still advances (§4.2.1: the subscriber sees it missed one).
//! - The initial event leaves `INITIAL_DELAY` after the subscription is taken, so it
//!   follows the 200 that tells the control point its SID (§4.2.1).
//! - Subscriptions outlive a rebuild of the data path (a softwire flap): `Events` is the
//!   daemon's, each IGD server built on a data path `serve`s through it, and the senders
//!   are tasks of their own, not the data path's. They end when the LAN address changes or
//!   the IGD is no longer served (`end_all`).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use log::debug;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::description::{COMMON_IF_EVENTS, IP_CONNECTION_EVENTS};
use crate::mapping::{Mappings, Observed};
use crate::proto::gena::{Callback, Subscription};
use crate::serve::Mapper;
use crate::stats::{Counter, Stats};

/// Subscriptions of one host, and of all hosts.
pub const PER_HOST: usize = 16;
pub const TOTAL: usize = 64;
/// How long one NOTIFY may take, connection included.
pub const DELIVERY_TIME: Duration = Duration::from_secs(2);
/// The shortest time between two events of one subscription.
pub const MODERATION: Duration = Duration::from_secs(1);
const INITIAL_DELAY: Duration = Duration::from_millis(200);
/// How long the initial event waits for the CGN's address when it is not known yet.
const ADDRESS_LOOKUP: Duration = Duration::from_secs(2);

/// The IGD's evented services, by their eventSubURL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    IpConnection,
    CommonIf,
}

/// A state variable's name and value, as a propertyset carries it.
pub type Variable = (&'static str, String);

impl Service {
    pub fn at(path: &str) -> Option<Service> {
        match path {
            IP_CONNECTION_EVENTS => Some(Service::IpConnection),
            COMMON_IF_EVENTS => Some(Service::CommonIf),
            _ => None,
        }
    }

    /// Every evented variable of the service (those its SCPD marks `sendEvents="yes"`).
    pub fn variables(self, observed: &Observed) -> Vec<Variable> {
        match self {
            Service::IpConnection => vec![
                (
                    "ExternalIPAddress",
                    observed
                        .public_addr
                        .map_or_else(String::new, |a| a.to_string()),
                ),
                (
                    "PortMappingNumberOfEntries",
                    observed.len.min(usize::from(u16::MAX)).to_string(),
                ),
                ("ConnectionStatus", "Connected".into()),
            ],
            Service::CommonIf => vec![("PhysicalLinkStatus", "Up".into())],
        }
    }
}

/// The body of an event message (§4.3.2).
pub fn propertyset(variables: &[Variable]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\"?>\r\n<e:propertyset xmlns:e=\"urn:schemas-upnp-org:event-1-0\">",
    );
    for (name, value) in variables {
        let _ = write!(
            xml,
            "<e:property><{name}>{}</{name}></e:property>",
            quick_xml::escape::escape(value.as_str())
        );
    }
    xml += "</e:propertyset>\r\n";
    xml
}

/// What a SUBSCRIBE or UNSUBSCRIBE got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Subscribed { sid: String, timeout: u32 },
    Unsubscribed,
}

struct Entry {
    sid: String,
    host: Ipv4Addr,
    service: Service,
    expires: Instant,
    /// Ends the subscription's task.
    stop: CancellationToken,
}

/// The subscriptions, oldest first: the bookkeeping, over a clock given by the caller.
#[derive(Default)]
pub struct Subscriptions(Vec<Entry>);

impl Subscriptions {
    /// Takes a subscription; returns the stop tokens of those it ended to make room.
    fn add(&mut self, entry: Entry) -> Vec<CancellationToken> {
        let mut ended = Vec::new();
        let of_host = self.0.iter().filter(|e| e.host == entry.host).count();
        if of_host >= PER_HOST {
            if let Some(i) = self.0.iter().position(|e| e.host == entry.host) {
                ended.push(self.0.remove(i).stop);
            }
        }
        if self.0.len() >= TOTAL {
            // The oldest of the host that holds the most: a host (or a few) flooding from
            // many addresses ends its own, not those of hosts that subscribed once.
            let mut held = std::collections::HashMap::<Ipv4Addr, usize>::new();
            for e in &self.0 {
                *held.entry(e.host).or_default() += 1;
            }
            let most = held.values().copied().max().unwrap_or(0);
            if let Some(i) = self.0.iter().position(|e| held[&e.host] == most) {
                ended.push(self.0.remove(i).stop);
            }
        }
        self.0.push(entry);
        ended
    }

    /// The subscription `sid` of `host` at `service`, if there is one.
    fn find(&mut self, sid: &str, host: Ipv4Addr, service: Service) -> Option<&mut Entry> {
        self.0
            .iter_mut()
            .find(|e| e.sid == sid && e.host == host && e.service == service)
    }

    fn remove(&mut self, sid: &str) -> Option<Entry> {
        let i = self.0.iter().position(|e| e.sid == sid)?;
        Some(self.0.remove(i))
    }

    fn expires(&self, sid: &str) -> Option<Instant> {
        self.0.iter().find(|e| e.sid == sid).map(|e| e.expires)
    }

    /// Removes `sid` if it expired by `now`; whether it is gone.
    fn expire(&mut self, sid: &str, now: Instant) -> bool {
        match self.expires(sid) {
            Some(end) if end > now => false,
            Some(_) => self.remove(sid).is_some(),
            None => true,
        }
    }
}

/// The IGD's subscriptions and what sends their events: the daemon's, across data paths.
pub struct Events {
    subscriptions: Mutex<Subscriptions>,
    observed: watch::Receiver<Observed>,
    /// The IGD's current data path: its mapper (to learn the CGN's address for an initial
    /// event) and where NOTIFYs leave from (the LAN address).
    serving: Mutex<Option<Serving>>,
    stats: Arc<Stats>,
}

#[derive(Clone)]
struct Serving {
    mapper: Arc<Mapper>,
    lan_addr: Ipv4Addr,
}

impl Events {
    pub fn new(mappings: &Mappings, stats: Arc<Stats>) -> Events {
        Events {
            subscriptions: Mutex::default(),
            observed: mappings.watch(),
            serving: Mutex::default(),
            stats,
        }
    }

    /// The IGD is served on a (new) data path, through `mapper`: subscriptions go on, unless
    /// the LAN address is another (their callbacks were on the old LAN).
    pub fn serve(&self, mapper: Arc<Mapper>) {
        let lan_addr = mapper.config().lan.addr;
        let before = self
            .serving
            .lock()
            .unwrap()
            .replace(Serving { mapper, lan_addr });
        if before.is_some_and(|b| b.lan_addr != lan_addr) {
            self.end_all();
        }
    }

    /// Ends every subscription (the IGD is not served any more, or on another LAN).
    pub fn end_all(&self) {
        let ended = std::mem::take(&mut *self.subscriptions.lock().unwrap());
        if !ended.0.is_empty() {
            debug!("igd: {} event subscriptions ended", ended.0.len());
        }
        for entry in ended.0 {
            entry.stop.cancel();
        }
    }

    fn serving(&self) -> Option<Serving> {
        self.serving.lock().unwrap().clone()
    }

    /// Carries out a (UN)SUBSCRIBE of `peer` at `service`; a new subscription's events are
    /// sent from a task of its own.
    pub fn answer(
        self: &Arc<Self>,
        peer: Ipv4Addr,
        service: Service,
        request: Subscription,
    ) -> Result<Answer, StatusCode> {
        let mut subscriptions = self.subscriptions.lock().unwrap();
        let answer = match request {
            Subscription::New { callbacks, timeout } => {
                let sid = format!("uuid:{}", random_uuid());
                let stop = CancellationToken::new();
                let ended = subscriptions.add(Entry {
                    sid: sid.clone(),
                    host: peer,
                    service,
                    expires: Instant::now() + secs(timeout),
                    stop: stop.clone(),
                });
                for token in ended {
                    self.stats.add(Counter::GenaEvicted);
                    token.cancel();
                }
                self.stats.add(Counter::GenaSubscribed);
                debug!("igd: {peer} subscribed to {service:?} as {sid} for {timeout}s");
                let events = self.clone();
                let task_sid = sid.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = events.publish(&task_sid, service, &callbacks) => {}
                    }
                });
                Answer::Subscribed { sid, timeout }
            }
            Subscription::Renew { sid, timeout } => {
                let entry = subscriptions
                    .find(&sid, peer, service)
                    .ok_or(StatusCode::PRECONDITION_FAILED)?;
                entry.expires = Instant::now() + secs(timeout);
                Answer::Subscribed { sid, timeout }
            }
            Subscription::Cancel { sid } => {
                subscriptions
                    .find(&sid, peer, service)
                    .ok_or(StatusCode::PRECONDITION_FAILED)?;
                if let Some(entry) = subscriptions.remove(&sid) {
                    entry.stop.cancel();
                }
                debug!("igd: {peer} unsubscribed {sid}");
                Answer::Unsubscribed
            }
        };
        Ok(answer)
    }

    /// Sends the events of subscription `sid` until it expires (or is ended by a cancel).
    async fn publish(&self, sid: &str, service: Service, callbacks: &[Callback]) {
        tokio::time::sleep(INITIAL_DELAY).await;
        let mut observed = self.observed.clone();
        let mut seq: u32 = 0;
        let mut sent: Option<Vec<Variable>> = None;
        loop {
            let mut now = *observed.borrow_and_update();
            if sent.is_none() && service == Service::IpConnection && now.public_addr.is_none() {
                // Not known yet (no grant, no probe said it): the initial event asks.
                if let Some(serving) = self.serving() {
                    let asked = serving.mapper.public_address();
                    let asked = tokio::time::timeout(ADDRESS_LOOKUP, asked);
                    now.public_addr = asked.await.ok().and_then(Result::ok);
                }
            }
            let variables = service.variables(&now);
            if sent.as_ref() != Some(&variables) {
                let body = Bytes::from(propertyset(&variables));
                self.notify(callbacks, sid, seq, body).await;
                // After the largest SEQ comes 1: 0 is the initial event's alone.
                seq = seq.checked_add(1).unwrap_or(1);
                sent = Some(variables);
                tokio::time::sleep(MODERATION).await;
                continue;
            }
            let Some(expires) = self.subscriptions.lock().unwrap().expires(sid) else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(expires) => {
                    // Renewed meanwhile, or over.
                    if self.subscriptions.lock().unwrap().expire(sid, Instant::now()) {
                        debug!("igd: subscription {sid} expired");
                        return;
                    }
                }
                changed = observed.changed() => {
                    if changed.is_err() {
                        // The table is gone: the daemon is stopping.
                        return;
                    }
                }
            }
        }
    }

    /// One event message, to the first callback that takes it.
    async fn notify(&self, callbacks: &[Callback], sid: &str, seq: u32, body: Bytes) {
        let Some(serving) = self.serving() else {
            return;
        };
        for callback in callbacks {
            let sent = tokio::time::timeout(
                DELIVERY_TIME,
                send(serving.lan_addr, callback, sid, seq, body.clone()),
            )
            .await;
            match sent {
                Ok(Ok(status)) if status.is_success() => {
                    self.stats.add(Counter::GenaEvents);
                    return;
                }
                Ok(Ok(status)) => debug!("igd: event {seq} of {sid} to {callback:?}: {status}"),
                Ok(Err(e)) => debug!("igd: event {seq} of {sid} to {callback:?}: {e:#}"),
                Err(_) => debug!(
                    "igd: event {seq} of {sid} to {callback:?}: no answer within {DELIVERY_TIME:?}"
                ),
            }
        }
        self.stats.add(Counter::GenaFailed);
    }
}

/// A NOTIFY (§4.3.1) from `from` to `callback`, over hyper's HTTP/1.1 client on a
/// connection of its own; the callback's status.
async fn send(
    from: Ipv4Addr,
    callback: &Callback,
    sid: &str,
    seq: u32,
    body: Bytes,
) -> anyhow::Result<StatusCode> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddrV4::new(from, 0).into())?;
    let stream = socket
        .connect(callback.addr.into())
        .await
        .context("connecting")?;
    // Title-Case names (`Sid`, `Seq`), as UPnP stacks that compare names exactly expect
    // more often than lower case.
    let (mut sender, connection) = http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await?;
    let request = Request::builder()
        .method(Method::from_bytes(b"NOTIFY")?)
        .uri(callback.target.as_str())
        .header(header::HOST, callback.addr.to_string())
        .header(header::CONTENT_TYPE, "text/xml; charset=\"utf-8\"")
        .header("nt", "upnp:event")
        .header("nts", "upnp:propchange")
        .header("sid", sid)
        .header("seq", seq)
        .header(header::CONNECTION, "close")
        .body(Full::new(body))?;
    let exchange = async move {
        // The status only: the response's body is not waited for.
        let status = sender.send_request(request).await.map(|r| r.status());
        drop(sender);
        status
    };
    let (status, _) = tokio::join!(exchange, connection);
    Ok(status?)
}

fn secs(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

/// A random (version 4) UUID, for a SID no other host can guess.
fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom(2) writes at most `bytes.len()` bytes into `bytes`.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(got).ok() != Some(bytes.len()) {
        // No entropy source (very early boot): the clock's nanoseconds, hashed by std.
        use std::hash::{BuildHasher as _, RandomState};
        let state = RandomState::new();
        let now = std::time::SystemTime::now();
        bytes[..8].copy_from_slice(&state.hash_one(now).to_le_bytes());
        bytes[8..].copy_from_slice(&state.hash_one((now, 1u8)).to_le_bytes());
    }
    let a = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
    let b = u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default());
    super::uuid_of(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    #[test]
    fn the_propertyset_carries_every_variable_escaped() {
        let observed = Observed {
            public_addr: Some(Ipv4Addr::new(203, 0, 114, 1)),
            len: 2,
        };
        assert_eq!(
            propertyset(&Service::IpConnection.variables(&observed)),
            "<?xml version=\"1.0\"?>\r\n\
             <e:propertyset xmlns:e=\"urn:schemas-upnp-org:event-1-0\">\
             <e:property><ExternalIPAddress>203.0.114.1</ExternalIPAddress></e:property>\
             <e:property><PortMappingNumberOfEntries>2</PortMappingNumberOfEntries></e:property>\
             <e:property><ConnectionStatus>Connected</ConnectionStatus></e:property>\
             </e:propertyset>\r\n"
        );
        assert!(
            propertyset(&[("X", "a<b&\"c\"".into())]).contains("<X>a&lt;b&amp;&quot;c&quot;</X>")
        );
        let unknown = Service::IpConnection.variables(&Observed::default());
        assert_eq!(unknown[0], ("ExternalIPAddress", String::new()));
        assert_eq!(
            Service::CommonIf.variables(&observed),
            [("PhysicalLinkStatus", "Up".to_string())]
        );
    }

    fn entry(host: u8, start: Instant) -> (Entry, CancellationToken) {
        let stop = CancellationToken::new();
        let entry = Entry {
            sid: format!("uuid:{}", random_uuid()),
            host: Ipv4Addr::new(192, 168, 1, host),
            service: Service::IpConnection,
            expires: start + Duration::from_secs(60),
            stop: stop.clone(),
        };
        (entry, stop)
    }

    #[test]
    fn the_oldest_subscription_makes_room_per_host_then_in_all() {
        let start = Instant::now();
        let mut subs = Subscriptions::default();
        let (first, first_stop) = entry(2, start);
        assert!(subs.add(first).is_empty());
        for _ in 1..PER_HOST {
            assert!(subs.add(entry(2, start).0).is_empty());
        }
        let ended = subs.add(entry(2, start).0);
        assert_eq!(ended.len(), 1);
        ended[0].cancel();
        assert!(first_stop.is_cancelled(), "host 2's oldest made room");
        assert_eq!(subs.0.len(), PER_HOST);
        let (other, other_stop) = entry(3, start);
        subs.add(other);
        for host in 4..=u8::MAX {
            if subs.0.len() == TOTAL {
                break;
            }
            subs.add(entry(host, start).0);
        }
        let ended = subs.add(entry(200, start).0);
        assert_eq!((ended.len(), subs.0.len()), (1, TOTAL));
        // Host 2 holds the most: its oldest went; host 3's is still there.
        assert!(!other_stop.is_cancelled());
        assert_eq!(
            subs.0.iter().filter(|e| e.host == PEER).count(),
            PER_HOST - 1
        );
        // While others hold more than one, a host's single subscription stays.
        for i in 0..4 * TOTAL {
            subs.add(entry(201 + (i % 4) as u8, start).0);
        }
        assert!(!other_stop.is_cancelled());
        assert_eq!(subs.0.len(), TOTAL);
    }

    #[test]
    fn renewal_unsubscribe_and_expiry_are_by_sid_host_and_service() {
        let start = Instant::now();
        let mut subs = Subscriptions::default();
        let (e, _) = entry(2, start);
        let sid = e.sid.clone();
        subs.add(e);
        assert!(subs.find(&sid, PEER, Service::IpConnection).is_some());
        assert!(
            subs.find(&sid, Ipv4Addr::new(192, 168, 1, 3), Service::IpConnection)
                .is_none()
        );
        assert!(subs.find(&sid, PEER, Service::CommonIf).is_none());
        assert!(!subs.expire(&sid, start + Duration::from_secs(59)));
        subs.find(&sid, PEER, Service::IpConnection)
            .unwrap()
            .expires = start + Duration::from_secs(120);
        assert!(!subs.expire(&sid, start + Duration::from_secs(61)));
        assert!(subs.expire(&sid, start + Duration::from_secs(120)));
        assert_eq!(subs.0.len(), 0);
    }

    #[test]
    fn sids_differ() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }
}
