//! The socket relay: one module per protocol family. `SocketRelay::start`
//! binds every socket first, so that configuration errors surface before
//! "ready", then runs the relays as tasks; `stop` ends all of them.

pub mod http;
pub mod port_control;
mod rate_limit;
pub mod ssdp;
mod tasks;

use std::sync::Arc;

use anyhow::{Result, anyhow};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::mapping::Mappings;
use crate::serve::{IgdServer, PortControlServer};
use crate::stats::Stats;
pub use tasks::Tasks;

/// The relays running for one configuration.
pub struct SocketRelay {
    /// The long-running receive loops; one ending means its relay failed.
    loops: JoinSet<Result<()>>,
    /// What the loops spawn (per client, search, connection).
    tasks: Tasks,
    /// The NAT-PMP/PCP relay's LAN socket, when it runs.
    port_control: Option<Arc<UdpSocket>>,
    /// Says goodbye for the IGD, when portproxy is the LAN's IGD.
    ssdp: Option<Arc<ssdp::SsdpRelay>>,
}

impl SocketRelay {
    pub fn start(
        cfg: &Arc<Config>,
        stats: &Arc<Stats>,
        mappings: &Arc<Mappings>,
        server: Option<Arc<PortControlServer>>,
        igd: Option<Arc<IgdServer>>,
    ) -> Result<SocketRelay> {
        let tasks = Tasks::default();
        let mut loops = JoinSet::new();
        // The LAN's IGD is portproxy itself: no HTTP to relay to the CGN.
        let http = if cfg.upnp_tcp && igd.is_none() {
            let (relay, listeners) =
                http::HttpRelay::bind(cfg.clone(), stats.clone(), mappings.clone(), &tasks)?;
            for listener in listeners {
                loops.spawn(relay.clone().serve(listener));
            }
            Some(relay)
        } else {
            None
        };
        let mut port_control = None;
        if cfg.nat_pmp {
            let relay = port_control::PortControlRelay::bind(
                cfg.clone(),
                stats.clone(),
                mappings.clone(),
                server,
                &tasks,
            )?;
            port_control = Some(relay.lan_socket());
            loops.spawn(relay.run());
        }
        let igd = igd.filter(|_| cfg.upnp_udp);
        if let Some(igd) = &igd {
            let listener = igd.bind()?;
            loops.spawn(igd.clone().run(listener, tasks.clone()));
        }
        let mut ssdp = None;
        if cfg.upnp_udp {
            let relay = ssdp::SsdpRelay::bind(cfg.clone(), stats.clone(), http, igd, &tasks)?;
            ssdp = Some(relay.clone());
            loops.spawn(relay.run());
        }
        Ok(SocketRelay {
            loops,
            tasks,
            port_control,
            ssdp,
        })
    }

    /// The socket NAT-PMP/PCP answers leave from (LAN address, port 5351), if this relay has it.
    pub fn port_control_socket(&self) -> Option<Arc<UdpSocket>> {
        self.port_control.clone()
    }

    /// Waits until a receive loop ends (which is always a failure); never while none runs.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.loops.join_next().await {
            Some(Ok(Err(e))) => e,
            Some(Ok(Ok(()))) => anyhow!("a relay stopped unexpectedly"),
            Some(Err(e)) => anyhow!("a relay task panicked: {e}"),
            None => std::future::pending().await,
        }
    }

    /// Stops every loop and task; when it returns, every socket of this relay is closed.
    pub async fn stop(mut self) {
        if let Some(ssdp) = &self.ssdp {
            ssdp.goodbye().await;
        }
        self.loops.shutdown().await;
        self.tasks.stop().await;
    }
}
