//! Which data path carries the packets: the eBPF fast path when `--xdp` is
//! given and the kernel accepts it, the socket relay otherwise, and what of
//! the work stays on sockets next to the fast path.

use std::path::Path;

use log::warn;

use crate::cli::FORCE_SOCKETS_ENV;
use crate::config::Config;
use crate::fastpath::FastPath;

// One exists at a time, held for the data path's life: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum DataPath {
    /// With what the programs leave to the daemon (see `socket_share`).
    Fast(FastPath, ToDaemon),
    /// On sockets; with the reason when `--xdp` was asked for.
    Sockets(Option<String>),
}

/// What the fast path's programs leave to the daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToDaemon {
    /// Grants wait for the daemon, which opens their firewall hole and then delivers them.
    pub hold_grants: bool,
    /// NAT-PMP requests go up to the daemon, which answers them (`upstream::Plan`).
    pub serve_nat_pmp: bool,
    /// PCP requests likewise.
    pub serve_pcp: bool,
    /// SSDP searches go up to the daemon, which answers them as the LAN's IGD.
    pub serve_upnp: bool,
}

impl ToDaemon {
    fn serves_any(&self) -> bool {
        self.serve_nat_pmp || self.serve_pcp
    }
}

impl DataPath {
    /// `kernel_log`: the programs log each relayed packet (`-vv`).
    pub fn choose(
        xdp: bool,
        cfg: &Config,
        pin_dir: &Path,
        kernel_log: bool,
        to_daemon: ToDaemon,
    ) -> DataPath {
        if !xdp {
            return DataPath::Sockets(None);
        }
        if std::env::var_os(FORCE_SOCKETS_ENV).is_some_and(|v| v == "1") {
            let reason = format!("{FORCE_SOCKETS_ENV}=1 is set");
            warn!("--xdp: {reason}; relaying on sockets");
            return DataPath::Sockets(Some(reason));
        }
        match FastPath::start(
            &kernel_share(cfg, to_daemon),
            pin_dir,
            kernel_log,
            to_daemon,
        ) {
            Ok(fast) => DataPath::Fast(fast, to_daemon),
            Err(e) => {
                let reason = format!("{e:#}");
                warn!("--xdp: the fast path cannot run here ({reason}); relaying on sockets");
                DataPath::Sockets(Some(reason))
            }
        }
    }

    /// The part of `cfg` the socket relay must still carry. Next to the fast
    /// path the SSDP sockets stay: they get only what the programs pass up to
    /// the stack, which is a search the kernel reassembled from IP fragments
    /// (a program sees fragments one by one) and, with `--upnp-tcp 1`, all of
    /// SSDP. NAT-PMP/PCP needs it only when portproxy answers one of them: the programs
    /// pass those requests up (PCP messages are at most 1100 bytes, never fragments).
    pub fn socket_share(&self, cfg: &Config) -> Config {
        match self {
            DataPath::Fast(_, to_daemon) if !to_daemon.serves_any() => Config {
                nat_pmp: false,
                ..cfg.clone()
            },
            _ => cfg.clone(),
        }
    }
}

/// What the kernel programs carry: NAT-PMP/PCP, and SSDP unless LOCATION
/// must be rewritten for the HTTP relay (that changes packet lengths, which
/// the programs do not do; HTTP itself is TCP and always on sockets) or the
/// daemon answers searches as the LAN's IGD.
fn kernel_share(cfg: &Config, to_daemon: ToDaemon) -> Config {
    Config {
        upnp_udp: cfg.upnp_udp && !cfg.upnp_tcp && !to_daemon.serve_upnp,
        ..cfg.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::example()
    }

    #[test]
    fn without_xdp_the_sockets_carry_everything() {
        let cfg = config();
        let path = DataPath::choose(
            false,
            &cfg,
            Path::new("/nonexistent"),
            false,
            ToDaemon::default(),
        );
        assert!(matches!(path, DataPath::Sockets(None)));
        assert_eq!(path.socket_share(&cfg), cfg);
    }

    /// The socket-only build: `--xdp` falls back with the reason that this build has none.
    #[cfg(not(feature = "fastpath"))]
    #[test]
    fn xdp_on_a_socket_only_build_says_why_and_relays_on_sockets() {
        let cfg = config();
        let path = DataPath::choose(
            true,
            &cfg,
            Path::new("/nonexistent"),
            false,
            ToDaemon::default(),
        );
        let DataPath::Sockets(Some(reason)) = &path else {
            panic!("--xdp on a socket-only build must fall back to sockets with a reason");
        };
        assert_eq!(reason, crate::fastpath::NO_FAST_PATH);
        assert_eq!(path.socket_share(&cfg), cfg);
    }
}
