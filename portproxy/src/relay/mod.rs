//! The socket relay: one module per protocol family. `start` binds every
//! socket first, so that configuration errors surface before "ready", then
//! runs the relays as tasks.

pub mod http;
pub mod port_control;
mod rate_limit;
pub mod ssdp;

use std::sync::Arc;

use anyhow::Result;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::stats::Stats;

pub fn start(cfg: &Arc<Config>, stats: &Arc<Stats>) -> Result<JoinSet<Result<()>>> {
    let mut tasks = JoinSet::new();
    let http = if cfg.upnp_tcp {
        let (relay, listeners) = http::HttpRelay::bind(cfg.clone(), stats.clone())?;
        for listener in listeners {
            tasks.spawn(relay.clone().serve(listener));
        }
        Some(relay)
    } else {
        None
    };
    if cfg.nat_pmp {
        tasks.spawn(port_control::PortControlRelay::bind(cfg.clone(), stats.clone())?.run());
    }
    if cfg.upnp_udp {
        tasks.spawn(ssdp::SsdpRelay::bind(cfg.clone(), stats.clone(), http)?.run());
    }
    Ok(tasks)
}
