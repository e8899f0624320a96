//! The `api` module of a build without the `http-server` cargo feature (the minimal build):
//! no JSON API and no page. `--api` (on by default) is turned off at start with one line
//! saying why (`lib.rs`), so `Shared` and `ApiServer` are types without values.

use std::sync::Arc;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::Options;
use crate::config::Side;
use crate::mapping::Mappings;
use crate::relay::Tasks;
use crate::serve::Mapper;
use crate::stats::Stats;
use crate::status::Status;

/// What `--api` reports at start in this build.
pub const NO_API: Option<&str> =
    Some("this build has no API or web page: it was built without the `http-server` feature");

pub enum Shared {}

impl Shared {
    pub fn new(
        _opts: &Options,
        _status: watch::Receiver<Option<Status>>,
        _stats: Arc<Stats>,
        _netlink: rtnetlink::Handle,
        _mappings: Arc<Mappings>,
        _forwards: Arc<crate::forwards::Forwards>,
    ) -> Result<Shared> {
        anyhow::bail!(NO_API.unwrap_or_default())
    }

    pub fn attach(&self, _mapper: Option<Arc<Mapper>>) {
        match *self {}
    }
}

pub enum ApiServer {}

impl ApiServer {
    pub fn new(shared: Arc<Shared>, _lan: Side) -> Arc<ApiServer> {
        match *shared {}
    }

    pub fn bind(&self) -> Result<TcpListener> {
        match *self {}
    }

    pub async fn run(self: Arc<Self>, _listener: TcpListener, _tasks: Tasks) -> Result<()> {
        match *self {}
    }
}
