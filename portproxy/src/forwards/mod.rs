//! Manual forwards: a LAN host's port that people want reachable from the internet for as
//! long as the forward exists (`portproxy forward add|list|del`, the JSON API).
//!
//! A forward is what people asked for (`Forward`: host, internal port, protocol, the external
//! port wanted or any, a description), kept in `--forwards-file` (`file`). What the CGN
//! grants for it is an ordinary mapping of the table, with `Origin::Manual`, so it gets its
//! firewall hole, is saved with the table, and is made again by `upstream::Keeper` when the
//! CGN reboots or changes its external address, like every mapping.
//!
//! While a data path runs, `Forwards::keep` brings the CGN in line with the forwards, as
//! the host of each (through `serve::Mapper`, in what the CGN speaks, whether the clients'
//! protocols are relayed or answered here): a forward the table does not hold is asked for,
//! one it holds is renewed at half its lifetime (`LIFETIME` at a time), a failed one is
//! tried again with backoff (`RETRY_FIRST` doubling up to `RETRY_MAX`), and a manual mapping
//! no forward wants any more (deleted, or changed to another port) is deleted at the CGN,
//! its hole closed. So a new data path (a restart, a new address, the softwire back) makes
//! them all again.
//!
//! The interface the control socket and the HTTP API call: `list`, `add`, `change`,
//! `delete`; each change is saved before it returns, and the CGN follows within a moment.

mod file;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::boot_time;
use crate::config::Side;
use crate::mapping::{self, Entry, Key, Mappings, Origin};
use crate::proto::Transport;
use crate::serve::Mapper;
use crate::upstream::Failure;

/// How many forwards there may be.
pub const MAX_FORWARDS: usize = 64;
/// The longest description kept, in bytes.
pub const MAX_DESCRIPTION: usize = 256;
/// The lifetime asked of the CGN at a time; renewed at half of it.
const LIFETIME: u32 = 3600;
/// Backoff of a failed forward: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the CGN side is looked at when nothing woke the keeper: a manual mapping
/// deleted by its host (UPnP, NAT-PMP) is made again within this.
const LOOK: Duration = Duration::from_secs(5);

/// A manual forward, as people asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The LAN host, its port and the protocol: what names a forward.
    pub key: Key,
    /// The external port wanted (that one or none), or `None`: any the CGN gives.
    pub external_port: Option<u16>,
    pub description: String,
}

/// A forward as it is written: in the forwards file, in a request to add or change one,
/// and (with its status) in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub host: Ipv4Addr,
    pub internal_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `None` (or absent): any.
    #[serde(default)]
    pub external_port: Option<u16>,
    #[serde(default)]
    pub description: String,
}

/// Where a forward stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// The CGN holds it: reachable at `external` (its hole is open).
    Active {
        external: SocketAddrV4,
        /// Until the CGN's grant runs out; renewed well before.
        expires_in_secs: Option<u64>,
    },
    /// Not (yet) asked for at the CGN, and why.
    Pending { reason: String },
    /// The CGN refused it or did not answer; asked again in `retry_in_secs`.
    Failed { reason: String, retry_in_secs: u64 },
}

/// One forward as `portproxy forward list` and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    #[serde(flatten)]
    pub forward: Spec,
    pub status: Status,
}

/// Why a forward was not added, changed or deleted. Nothing was changed then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// A field makes no sense (protocol, port 0, description): what is wrong.
    Invalid(String),
    /// Not a host of the LAN (or the router itself).
    NotLanHost {
        host: Ipv4Addr,
        lan: String,
    },
    /// There is a forward of that host, port and protocol already.
    Duplicate(Key),
    /// Another forward wants that external port.
    ExternalPortWanted {
        port: u16,
        by: Key,
    },
    /// A client's own mapping (NAT-PMP, PCP, UPnP) holds that host, port and protocol.
    HeldByClient {
        key: Key,
        origin: &'static str,
    },
    /// No forward of that host, port and protocol.
    Unknown(Key),
    TooMany,
    /// The forwards file could not be written: nothing changed.
    Save(String),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::Invalid(why) => f.write_str(why),
            ForwardError::NotLanHost { host, lan } => write!(
                f,
                "{host} is not a host of the LAN ({lan}); a forward goes to a LAN host, never \
                 to the router itself"
            ),
            ForwardError::Duplicate(key) => write!(f, "there is a forward of {key} already"),
            ForwardError::ExternalPortWanted { port, by } => write!(
                f,
                "the forward of {by} wants external port {port}/{} already",
                by.proto.name()
            ),
            ForwardError::HeldByClient { key, origin } => write!(
                f,
                "{key} is mapped by the host itself ({origin}); a forward would take over its \
                 mapping: delete that first or pick another port"
            ),
            ForwardError::Unknown(key) => {
                write!(
                    f,
                    "there is no forward of {key} (see `portproxy forward list`)"
                )
            }
            ForwardError::TooMany => write!(f, "there are {MAX_FORWARDS} forwards already"),
            ForwardError::Save(why) => write!(f, "not changed: {why}"),
        }
    }
}

impl std::error::Error for ForwardError {}

impl Spec {
    /// The forward this describes, if it makes sense on its own.
    pub fn forward(&self) -> Result<Forward, ForwardError> {
        let invalid = |why: String| Err(ForwardError::Invalid(why));
        let Some(proto) = Transport::from_name(&self.protocol) else {
            return invalid(format!("protocol {:?}: expected tcp or udp", self.protocol));
        };
        if self.internal_port == 0 {
            return invalid("internal port 0: expected a port number 1-65535".into());
        }
        if self.external_port == Some(0) {
            return invalid("external port 0: expected a port number 1-65535, or any".into());
        }
        if self.description.len() > MAX_DESCRIPTION {
            return invalid(format!(
                "the description has {} bytes; at most {MAX_DESCRIPTION}",
                self.description.len()
            ));
        }
        if self.description.chars().any(char::is_control) {
            return invalid("the description has control characters".into());
        }
        Ok(Forward {
            key: Key {
                host: self.host,
                proto,
                internal_port: self.internal_port,
            },
            external_port: self.external_port,
            description: self.description.clone(),
        })
    }
}

impl From<&Forward> for Spec {
    fn from(f: &Forward) -> Spec {
        Spec {
            host: f.key.host,
            internal_port: f.key.internal_port,
            protocol: f.key.proto.name().to_string(),
            external_port: f.external_port,
            description: f.description.clone(),
        }
    }
}

/// One forward and how asking the CGN for it went.
#[derive(Debug)]
struct Slot {
    forward: Forward,
    /// The external port the CGN last gave it (saved): asked for again after a restart, so
    /// a forward on any port keeps its port even when its grant ran out meanwhile.
    port: Option<u16>,
    /// The last failure and when to try again.
    failed: Option<(String, Instant)>,
    backoff: Duration,
    /// Ask the CGN now even if the table holds it (the description changed).
    refresh: bool,
}

impl Slot {
    fn new(forward: Forward, port: Option<u16>) -> Slot {
        Slot {
            forward,
            port,
            failed: None,
            backoff: RETRY_FIRST,
            refresh: false,
        }
    }
}

/// The LAN as the running data path sees it: who may have a forward.
#[derive(Debug, Clone)]
struct Lan {
    side: Side,
    own: [Ipv4Addr; 2],
}

impl Lan {
    fn check(&self, host: Ipv4Addr) -> Result<(), ForwardError> {
        match mapping::is_lan_host(host, &self.side, &self.own) {
            true => Ok(()),
            false => Err(ForwardError::NotLanHost {
                host,
                lan: format!(
                    "{} {}/{}",
                    self.side.iface, self.side.addr, self.side.prefix_len
                ),
            }),
        }
    }
}

struct Inner {
    slots: Vec<Slot>,
    /// Set while a data path keeps the forwards (`keep`).
    lan: Option<Lan>,
    /// Why nothing keeps them, when nothing does.
    idle: String,
}

/// The daemon's manual forwards; outlives every data path, like the mapping table.
pub struct Forwards {
    path: PathBuf,
    mappings: Arc<Mappings>,
    inner: Mutex<Inner>,
    /// Wakes `keep` after a change.
    changed: Notify,
}

impl Forwards {
    /// The forwards saved in `path` (none if there is no file yet). A file that cannot be
    /// read is an error: starting without the forwards would lose them at the next change.
    pub fn load(path: PathBuf, mappings: Arc<Mappings>) -> Result<Arc<Forwards>> {
        let slots = file::load(&path)?
            .into_iter()
            .map(|(forward, port)| Slot::new(forward, port))
            .collect();
        Ok(Arc::new(Forwards {
            path,
            mappings,
            inner: Mutex::new(Inner {
                slots,
                lan: None,
                idle: "portproxy is not relaying yet (see `portproxy stats`)".into(),
            }),
            changed: Notify::new(),
        }))
    }

    /// Every forward with its status, in the order they were added.
    pub async fn list(&self) -> Vec<View> {
        let entries = self.mappings.entries().await;
        let now = boot_time();
        let inner = self.inner.lock().unwrap();
        inner
            .slots
            .iter()
            .map(|slot| View {
                forward: Spec::from(&slot.forward),
                status: status(slot, manual(&entries, &slot.forward.key), &inner, now),
            })
            .collect()
    }

    /// Adds a forward; it is asked for at the CGN at once (see `list` for how that went).
    pub async fn add(&self, spec: &Spec) -> Result<View, ForwardError> {
        let forward = spec.forward()?;
        let held = self.mappings.get(&forward.key).await;
        {
            let mut inner = self.inner.lock().unwrap();
            check(&inner, &forward, None, held.as_ref())?;
            if inner.slots.len() >= MAX_FORWARDS {
                return Err(ForwardError::TooMany);
            }
            inner.slots.push(Slot::new(forward.clone(), None));
            if let Err(e) = self.save(&inner) {
                inner.slots.pop();
                return Err(e);
            }
        }
        info!("forward {} added", forward.key);
        self.changed.notify_one();
        self.view(&forward.key).await
    }

    /// Changes the forward of `key` to `spec` (another host or port too); the CGN follows:
    /// a mapping on a port no longer wanted is deleted there and the new one asked for.
    pub async fn change(&self, key: &Key, spec: &Spec) -> Result<View, ForwardError> {
        let forward = spec.forward()?;
        let held = self.mappings.get(&forward.key).await;
        {
            let mut inner = self.inner.lock().unwrap();
            let at = position(&inner, key)?;
            check(&inner, &forward, Some(at), held.as_ref())?;
            let port = inner.slots[at]
                .port
                .filter(|_| inner.slots[at].forward.key == forward.key);
            let before = std::mem::replace(&mut inner.slots[at], Slot::new(forward.clone(), port));
            inner.slots[at].refresh = true;
            if let Err(e) = self.save(&inner) {
                inner.slots[at] = before;
                return Err(e);
            }
        }
        info!("forward {key} changed to {}", forward.key);
        self.changed.notify_one();
        self.view(&forward.key).await
    }

    /// Deletes the forward of `key`; its mapping is deleted at the CGN and its hole closed
    /// (right away when no data path runs: the CGN lets it expire then).
    pub async fn delete(&self, key: &Key) -> Result<(), ForwardError> {
        let keeping = {
            let mut inner = self.inner.lock().unwrap();
            let at = position(&inner, key)?;
            let slot = inner.slots.remove(at);
            if let Err(e) = self.save(&inner) {
                inner.slots.insert(at, slot);
                return Err(e);
            }
            inner.lan.is_some()
        };
        info!("forward {key} deleted");
        if keeping {
            self.changed.notify_one();
        } else if self
            .mappings
            .get(key)
            .await
            .is_some_and(|e| matches!(e.origin, Origin::Manual { .. }))
        {
            self.mappings.deleted(*key).await;
        }
        Ok(())
    }

    async fn view(&self, key: &Key) -> Result<View, ForwardError> {
        self.list()
            .await
            .into_iter()
            .find(|v| v.forward.forward().is_ok_and(|f| f.key == *key))
            .ok_or(ForwardError::Unknown(*key))
    }

    fn save(&self, inner: &Inner) -> Result<(), ForwardError> {
        let forwards = inner.slots.iter().map(|s| (&s.forward, s.port));
        file::save(&self.path, forwards).map_err(|e| {
            warn!("{e:#}");
            ForwardError::Save(format!("{e:#}"))
        })
    }

    /// Says why the forwards are not kept at the CGN while no data path keeps them.
    pub fn idle(&self, why: &str) {
        self.inner.lock().unwrap().idle = why.to_string();
    }

    /// Keeps the forwards at the CGN through `mapper` until cancelled with its data path.
    pub async fn keep(self: Arc<Self>, mapper: Arc<Mapper>) {
        let cfg = mapper.config();
        let lan = Lan {
            side: cfg.lan.clone(),
            own: [cfg.lan.addr, cfg.wan.addr],
        };
        self.inner.lock().unwrap().lan = Some(lan.clone());
        // Whatever ends this (the data path stopping), nothing keeps them after it.
        let _detach = Detach(&self);
        loop {
            let next = self.pass(&mapper, &lan).await;
            let wait = next
                .map_or(LOOK, |t| t.saturating_duration_since(Instant::now()))
                .min(LOOK);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.changed.notified() => {}
            }
        }
    }

    /// One look: deletes at the CGN what no forward wants, asks for what is due. Returns
    /// when the next thing is due.
    async fn pass(&self, mapper: &Mapper, lan: &Lan) -> Option<Instant> {
        let wanted: Vec<Forward> = {
            let inner = self.inner.lock().unwrap();
            inner.slots.iter().map(|s| s.forward.clone()).collect()
        };
        for entry in self.mappings.entries().await {
            let Origin::Manual { .. } = entry.origin else {
                continue;
            };
            let keep = wanted.iter().any(|f| {
                f.key == entry.key && f.external_port.is_none_or(|p| p == entry.external.port())
            });
            if !keep {
                match mapper.delete(entry.key, None).await {
                    Ok(()) => info!("forward {}: deleted at the CGN", entry.key),
                    Err(e) => warn!("forward {}: deleting at the CGN: {e}", entry.key),
                }
            }
        }
        let mut next: Option<Instant> = None;
        let mut due = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        for forward in wanted {
            let held = self.mappings.get(&forward.key).await;
            let now = Instant::now();
            let (refresh, retry_at, port) = {
                let inner = self.inner.lock().unwrap();
                match inner.slots.iter().find(|s| s.forward == forward) {
                    Some(slot) => (slot.refresh, slot.failed.as_ref().map(|f| f.1), slot.port),
                    // Deleted or changed meanwhile: the next pass sees it.
                    None => continue,
                }
            };
            let manual = held
                .as_ref()
                .filter(|e| matches!(e.origin, Origin::Manual { .. }));
            if let Some(entry) = manual {
                if !refresh {
                    match renewal(entry) {
                        None => continue,
                        Some(wait) if !wait.is_zero() => {
                            due(now + wait);
                            continue;
                        }
                        Some(_) => {}
                    }
                }
            } else if let Some(at) = retry_at.filter(|at| *at > now) {
                due(at);
                continue;
            } else if let Some(entry) = &held {
                let why = format!(
                    "the host maps {} itself ({}); the forward is made when that mapping ends",
                    forward.key,
                    entry.origin.name()
                );
                if let Some(at) = self.failed(&forward, why) {
                    due(at);
                }
                continue;
            }
            if let Err(e) = lan.check(forward.key.host) {
                if let Some(at) = self.failed(&forward, e.to_string()) {
                    due(at);
                }
                continue;
            }
            // The port it has (the table's, else the one saved), so it keeps its address.
            let suggested = forward
                .external_port
                .or(held.as_ref().map(|e| e.external.port()))
                .or(port)
                .unwrap_or(0);
            let ask = (suggested, LIFETIME, forward.external_port.is_some());
            let origin = Origin::Manual {
                description: forward.description.clone(),
            };
            let client = SocketAddrV4::new(forward.key.host, 0);
            match mapper.map(forward.key, ask, origin, client).await {
                Ok(granted) => {
                    let mut inner = self.inner.lock().unwrap();
                    if let Some(slot) = inner.slots.iter_mut().find(|s| s.forward == forward) {
                        if slot.failed.take().is_some() || slot.refresh || held.is_none() {
                            info!("forward {}: active at {}", forward.key, granted.external);
                        }
                        slot.backoff = RETRY_FIRST;
                        slot.refresh = false;
                        let port = Some(granted.external.port());
                        if slot.port != port {
                            slot.port = port;
                            // Logged by `save`; the port is only remembered in memory then.
                            let _ = self.save(&inner);
                        }
                    }
                    due(Instant::now() + Duration::from_secs(u64::from(granted.lifetime / 2)));
                }
                Err(failure) => {
                    let why = reason(failure, &forward, mapper);
                    if let Some(at) = self.failed(&forward, why) {
                        due(at);
                    }
                }
            }
        }
        next
    }

    /// Records a failure of `forward`; when it is tried again.
    fn failed(&self, forward: &Forward, why: String) -> Option<Instant> {
        let mut inner = self.inner.lock().unwrap();
        let slot = inner.slots.iter_mut().find(|s| s.forward == *forward)?;
        let at = Instant::now() + slot.backoff;
        if slot
            .failed
            .as_ref()
            .is_none_or(|(before, _)| *before != why)
        {
            warn!(
                "forward {}: {why}; trying again in {:?}",
                forward.key, slot.backoff
            );
        }
        slot.failed = Some((why, at));
        slot.backoff = (slot.backoff * 2).min(RETRY_MAX);
        slot.refresh = false;
        Some(at)
    }
}

/// Marks the forwards as kept by nothing when `keep` ends.
struct Detach<'a>(&'a Forwards);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.inner.lock().unwrap();
        inner.lan = None;
        inner.idle = "portproxy is not relaying (see `portproxy stats`)".into();
        for slot in &mut inner.slots {
            slot.failed = None;
            slot.backoff = RETRY_FIRST;
        }
    }
}

/// The manual mapping of `key` in `entries`, if the table holds one.
fn manual<'a>(entries: &'a [Entry], key: &Key) -> Option<&'a Entry> {
    entries
        .iter()
        .find(|e| e.key == *key && matches!(e.origin, Origin::Manual { .. }))
}

fn status(slot: &Slot, held: Option<&Entry>, inner: &Inner, now: Duration) -> Status {
    // A forward just changed is not what the table holds yet.
    let held = held.filter(|_| !(slot.refresh && inner.lan.is_some()));
    match (held, &slot.failed, &inner.lan) {
        (Some(e), _, _) => Status::Active {
            external: e.external,
            expires_in_secs: e.expires.map(|t| t.saturating_sub(now).as_secs()),
        },
        (None, Some((reason, at)), Some(_)) => Status::Failed {
            reason: reason.clone(),
            retry_in_secs: at.saturating_duration_since(Instant::now()).as_secs(),
        },
        (None, None, Some(_)) => Status::Pending {
            reason: "being asked for at the CGN".into(),
        },
        (None, _, None) => Status::Pending {
            reason: inner.idle.clone(),
        },
    }
}

/// In how long the mapping `entry` is renewed: at half its lifetime (zero when due);
/// `None` for one that does not expire.
fn renewal(entry: &Entry) -> Option<Duration> {
    let expires = entry.expires?;
    let half = Duration::from_secs(u64::from(entry.lifetime) / 2);
    Some(expires.saturating_sub(boot_time()).saturating_sub(half))
}

/// Whether `forward` may join `inner`'s forwards (in place of the one at `replacing`).
fn check(
    inner: &Inner,
    forward: &Forward,
    replacing: Option<usize>,
    held: Option<&Entry>,
) -> Result<(), ForwardError> {
    if let Some(lan) = &inner.lan {
        lan.check(forward.key.host)?;
    }
    let others = inner
        .slots
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != replacing)
        .map(|(_, s)| &s.forward);
    for other in others {
        if other.key == forward.key {
            return Err(ForwardError::Duplicate(forward.key));
        }
        if let Some(port) = forward.external_port
            && other.external_port == Some(port)
            && other.key.proto == forward.key.proto
        {
            return Err(ForwardError::ExternalPortWanted {
                port,
                by: other.key,
            });
        }
    }
    match held {
        Some(e) if !matches!(e.origin, Origin::Manual { .. }) => Err(ForwardError::HeldByClient {
            key: forward.key,
            origin: e.origin.name(),
        }),
        _ => Ok(()),
    }
}

fn position(inner: &Inner, key: &Key) -> Result<usize, ForwardError> {
    inner
        .slots
        .iter()
        .position(|s| s.forward.key == *key)
        .ok_or(ForwardError::Unknown(*key))
}

/// What a person reads when the CGN did not grant `forward`.
fn reason(failure: Failure, forward: &Forward, mapper: &Mapper) -> String {
    match failure {
        Failure::CannotProvideExternal => format!(
            "the CGN cannot give external port {} (another subscriber has it?)",
            forward.external_port.unwrap_or(0)
        ),
        Failure::NoAnswer => "the CGN does not answer".into(),
        Failure::NetworkFailure if mapper.via().is_none() => {
            "the CGN speaks neither PCP, NAT-PMP nor UPnP IGD (it answered no probe)".into()
        }
        Failure::UserExQuota => "over quota: at the CGN, or here (--max-mappings-per-host)".into(),
        Failure::NoResources => "no resources: the CGN has no port left, or the table is full \
                                  (--max-mappings)"
            .into(),
        other => format!("the CGN refused: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Limits;

    fn spec(host: [u8; 4], port: u16, external: Option<u16>) -> Spec {
        Spec {
            host: Ipv4Addr::from(host),
            internal_port: port,
            protocol: "tcp".into(),
            external_port: external,
            description: "web".into(),
        }
    }

    fn mappings() -> Arc<Mappings> {
        let limits = Limits {
            total: 8,
            per_host: 8,
        };
        Mappings::new(limits, None, None, Arc::default())
    }

    fn forwards(path: PathBuf) -> Arc<Forwards> {
        Forwards::load(path, mappings()).unwrap()
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("portproxy-forwards-{name}-{}", std::process::id()))
    }

    #[test]
    fn bad_fields_are_refused_with_the_reason() {
        let invalid = |s: Spec| match s.forward() {
            Err(ForwardError::Invalid(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(invalid(spec([192, 168, 1, 2], 0, None)).contains("internal port 0"));
        assert!(invalid(spec([192, 168, 1, 2], 80, Some(0))).contains("external port 0"));
        let mut s = spec([192, 168, 1, 2], 80, None);
        s.protocol = "sctp".into();
        assert!(invalid(s).contains("tcp or udp"));
        let mut s = spec([192, 168, 1, 2], 80, None);
        s.description = "x".repeat(MAX_DESCRIPTION + 1);
        assert!(invalid(s).contains("at most"));
        let mut s = spec([192, 168, 1, 2], 80, None);
        s.description = "two\nlines".into();
        assert!(invalid(s).contains("control"));
        let mut s = spec([192, 168, 1, 2], 80, None);
        s.protocol = "UDP".into();
        assert_eq!(s.forward().unwrap().key.proto, Transport::Udp);
    }

    #[tokio::test]
    async fn add_change_delete_are_saved_and_checked() {
        let dir = temp("crud");
        let path = dir.join("forwards.json");
        let f = forwards(path.clone());
        let a = spec([192, 168, 1, 2], 8080, Some(9080));
        let view = f.add(&a).await.unwrap();
        assert_eq!(view.forward, a);
        assert!(matches!(view.status, Status::Pending { .. }), "{view:?}");
        assert!(matches!(f.add(&a).await, Err(ForwardError::Duplicate(_))));
        // Another host wanting the same external port of the same protocol.
        let b = spec([192, 168, 1, 3], 22, Some(9080));
        assert!(matches!(
            f.add(&b).await,
            Err(ForwardError::ExternalPortWanted { port: 9080, .. })
        ));
        let mut b_udp = b.clone();
        b_udp.protocol = "udp".into();
        f.add(&b_udp).await.unwrap();
        // Changing the first to any port; then to the second's key is a duplicate.
        let key_a = a.forward().unwrap().key;
        let a_any = spec([192, 168, 1, 2], 8080, None);
        f.change(&key_a, &a_any).await.unwrap();
        assert!(matches!(
            f.change(&key_a, &b_udp).await,
            Err(ForwardError::Duplicate(_))
        ));
        // The file has both, in order; a fresh load sees them.
        let again = forwards(path.clone());
        let listed: Vec<Spec> = again.list().await.into_iter().map(|v| v.forward).collect();
        assert_eq!(listed, [a_any.clone(), b_udp.clone()]);
        f.delete(&key_a).await.unwrap();
        assert!(matches!(
            f.delete(&key_a).await,
            Err(ForwardError::Unknown(_))
        ));
        let again = forwards(path);
        assert_eq!(again.list().await.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_save_changes_nothing() {
        // A directory where the file should be: it cannot be written.
        let dir = temp("unwritable");
        std::fs::create_dir_all(dir.join("forwards.json")).unwrap();
        let f = Arc::new(Forwards {
            path: dir.join("forwards.json"),
            mappings: mappings(),
            inner: Mutex::new(Inner {
                slots: Vec::new(),
                lan: None,
                idle: String::new(),
            }),
            changed: Notify::new(),
        });
        let err = f.add(&spec([192, 168, 1, 2], 80, None)).await.unwrap_err();
        assert!(matches!(err, ForwardError::Save(_)), "{err}");
        assert!(f.list().await.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_lan_hosts_once_the_lan_is_known() {
        let lan = Lan {
            side: Side {
                iface: "br-lan".into(),
                index: 1,
                addr: Ipv4Addr::new(192, 168, 1, 1),
                prefix_len: 24,
            },
            own: [Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(192, 0, 0, 2)],
        };
        let mut inner = Inner {
            slots: Vec::new(),
            lan: Some(lan),
            idle: String::new(),
        };
        let outside = spec([10, 0, 0, 2], 80, None).forward().unwrap();
        let err = check(&inner, &outside, None, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a host of the LAN (br-lan 192.168.1.1/24)")
        );
        let router = spec([192, 168, 1, 1], 80, None).forward().unwrap();
        assert!(check(&inner, &router, None, None).is_err());
        inner.lan = None;
        assert!(
            check(&inner, &outside, None, None).is_ok(),
            "unknown LAN: checked later"
        );
    }
}
