//! The `fastpath` module of a build without the `fastpath` cargo feature (the socket-only
//! build, e.g. for routers whose kernel has no usable BPF, or built with stable Rust alone).
//!
//! `FastPath` here is a type without values: `FastPath::start` says why there is none, so
//! `--xdp` falls back to sockets with that one line, and the code that handles a running
//! fast path compiles unchanged but can never be reached.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::config::Config;
use crate::mapping::Mappings;
use crate::stats::Stats;

/// What `--xdp` reports in this build (after "the fast path cannot run here").
pub const NO_FAST_PATH: &str =
    "this build has no fast path: it was built without the `fastpath` feature";

pub enum FastPath {}

/// The programs' per-packet log: there are no programs.
pub enum KernelLog {}

/// The programs' grants: there are no programs.
pub enum Grants {}

impl FastPath {
    pub fn start(
        _cfg: &Config,
        _pin_dir: &Path,
        _kernel_log: bool,
        _to_daemon: crate::datapath::ToDaemon,
    ) -> anyhow::Result<FastPath> {
        anyhow::bail!(NO_FAST_PATH)
    }

    pub fn take_grants(&mut self) -> anyhow::Result<Grants> {
        match *self {}
    }

    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        match *self {}
    }

    pub fn hooks(&self) -> Vec<String> {
        match *self {}
    }

    pub fn stats(&self) -> anyhow::Result<String> {
        match *self {}
    }

    pub fn expire_idle_clients(&mut self, _max_idle: Duration) -> anyhow::Result<usize> {
        match *self {}
    }
}

pub async fn forward_kernel_log(log: KernelLog) {
    match log {}
}

pub async fn forward_grants(
    grants: Grants,
    _cfg: Arc<Config>,
    _stats: Arc<Stats>,
    _mappings: Arc<Mappings>,
    _lan: Option<Arc<UdpSocket>>,
) {
    match grants {}
}
