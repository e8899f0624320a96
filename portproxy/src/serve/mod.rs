//! portproxy as a server on the LAN, when the CGN does not speak the client's protocol or
//! `--mode proxy` says so: NAT-PMP and PCP answered here (`port_control`), a UPnP IGD
//! (`igd`); both carry out mappings at the CGN through `mapper`.
//!
//! Without the `http-server` cargo feature (the minimal build) `igd` is `no_igd.rs`: UPnP
//! is then relayed to the CGN only.

#[cfg(feature = "http-server")]
mod igd;
#[cfg(not(feature = "http-server"))]
#[path = "no_igd.rs"]
mod igd;
mod mapper;
mod port_control;

use std::sync::Mutex;
use std::time::Duration;

pub use igd::{Events, IgdServer, NO_IGD_SERVER};
pub use mapper::Mapper;
pub use port_control::PortControlServer;

use crate::clock::boot_time;
use crate::upstream::Nonces;

/// What the servers keep across rebuilds of the data path: the epoch they show clients
/// (it must not go back to 0 on an interface flap, or clients would think the server lost
/// their mappings) and the key of the PCP nonces they make upstream.
pub struct Identity {
    epoch_start: Mutex<Duration>,
    pub nonces: Nonces,
}

impl Default for Identity {
    fn default() -> Identity {
        Identity {
            epoch_start: Mutex::new(boot_time()),
            nonces: Nonces::default(),
        }
    }
}

impl Identity {
    /// Starts a new epoch: the CGN lost the mappings, so clients must make theirs again.
    pub fn new_epoch(&self) {
        *self.epoch_start.lock().unwrap() = boot_time();
    }

    /// Seconds since the epoch started (RFC 6886 §3.6, RFC 6887 §8.5).
    pub fn epoch(&self) -> u32 {
        let start = *self.epoch_start.lock().unwrap();
        u32::try_from(boot_time().saturating_sub(start).as_secs()).unwrap_or(u32::MAX)
    }
}
