//! The `igd` module of a build without the `http-server` cargo feature (the minimal build for
//! routers with little flash: no hyper, no HTTP server of portproxy's own).
//!
//! UPnP is then always relayed to the CGN (`upstream::Plan::choose` never serves it), so
//! `IgdServer` is a type without values: the code that handles a running IGD compiles
//! unchanged but can never be reached. `Events` keeps no subscriptions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;

use super::Mapper;
use crate::mapping::Mappings;
use crate::relay::Tasks;
use crate::stats::Stats;

/// What `--upnp-udp` reports at start in this build when UPnP would be answered here.
pub const NO_IGD_SERVER: Option<&str> =
    Some("this build has no UPnP IGD server: it was built without the `http-server` feature");

pub enum IgdServer {}

impl IgdServer {
    pub fn new(
        _mapper: Arc<Mapper>,
        _events: Arc<Events>,
        _netlink: rtnetlink::Handle,
        _stats: Arc<Stats>,
    ) -> IgdServer {
        unreachable!("Plan::choose serves UPnP only in a build with the IGD server")
    }

    pub fn bind(&self) -> Result<TcpListener> {
        match *self {}
    }

    pub async fn run(self: Arc<Self>, _listener: TcpListener, _tasks: Tasks) -> Result<()> {
        match *self {}
    }

    pub fn answers(&self, _st: &str) -> Vec<String> {
        match *self {}
    }

    pub fn notifies(&self, _alive: bool) -> Vec<String> {
        match *self {}
    }

    /// Never asked: the SSDP relay sends NOTIFYs only for an `IgdServer`, and none exists.
    pub fn notify_interval() -> Duration {
        Duration::MAX
    }
}

/// GENA subscriptions: there is no IGD to subscribe to.
pub struct Events;

impl Events {
    pub fn new(_mappings: &Mappings, _stats: Arc<Stats>) -> Events {
        Events
    }

    pub fn end_all(&self) {}
}
