//! The CGN as portproxy sees it when it asks for mappings itself: what it speaks (`probe`),
//! which client protocol is relayed and which is answered here (`Plan`), and the clients
//! that ask it on a LAN host's behalf (`client`).
//!
//! Requests go out *as the LAN host* (a transparent socket bound to the host's address,
//! the way the relay sends), so the CGN maps to the host itself: NAT-PMP has no other way
//! to name it, and a DS-Lite AFTR sees exactly what the host would have sent.

mod client;
mod epoch;
mod exchanges;
mod igd;
mod keeper;
mod nonce;
mod probe;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use client::{Ask, Granted, SocketPool, Upstream};
pub use exchanges::Exchanges;
pub use igd::{Igd, other_port};
pub use keeper::{CgnState, Keeper, made_with};
pub use nonce::Nonces;
pub use probe::{Probed, probe};
// What `portproxy map` builds on besides the daemon's own uses.
#[cfg(feature = "map-client")]
pub use {
    epoch::EpochWatch,
    probe::{port_control, search_igd},
};

use crate::cli::Mode;
use crate::proto::{natpmp, pcp};

/// The protocols the CGN answered when probed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Speaks {
    pub pcp: bool,
    pub nat_pmp: bool,
    pub upnp: bool,
}

impl Speaks {
    /// What either answered.
    pub fn union(self, other: Speaks) -> Speaks {
        Speaks {
            pcp: self.pcp || other.pcp,
            nat_pmp: self.nat_pmp || other.nat_pmp,
            upnp: self.upnp || other.upnp,
        }
    }
}

impl fmt::Display for Speaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.pcp, "PCP"),
            (self.nat_pmp, "NAT-PMP"),
            (self.upnp, "UPnP IGD"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        match names.is_empty() {
            true => f.write_str("nothing (no answer to any probe)"),
            false => f.write_str(&names.join(", ")),
        }
    }
}

/// Which protocol portproxy speaks to the CGN when it answers a client itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Pcp,
    NatPmp,
    /// A UPnP IGD control point (`igd`).
    Upnp,
}

/// What happens to one client protocol (NAT-PMP or PCP) on port 5351.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Passed to the CGN as it is (on the fast path where it runs).
    Relay,
    /// Answered by portproxy, which asks the CGN in the protocol it speaks.
    Serve,
}

/// The choice for both client protocols, from `--mode` and what the CGN speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub nat_pmp: Handling,
    pub pcp: Handling,
    /// UPnP IGD: relayed (SSDP to the CGN, which answers as an IGD) or served by the IGD
    /// on the LAN address (`serve::igd`).
    pub upnp: Handling,
    /// What the served protocols are translated to; `None` when the CGN answered no probe
    /// (served requests then get NETWORK_FAILURE, a short error clients retry).
    pub via: Option<Via>,
}

impl Plan {
    /// auto: a protocol the CGN speaks is relayed, the others served and translated to
    /// what it speaks (PCP preferred, then NAT-PMP, then UPnP IGD). A CGN that answered no
    /// probe (down) leaves all relayed, as a plain relay would. relay: all relayed. proxy:
    /// all served (but nothing when the CGN answered no probe).
    pub fn choose(mode: Mode, speaks: Speaks) -> Plan {
        use Handling::{Relay, Serve};
        let via = match (speaks.pcp, speaks.nat_pmp, speaks.upnp) {
            (true, _, _) => Some(Via::Pcp),
            (false, true, _) => Some(Via::NatPmp),
            (false, false, true) => Some(Via::Upnp),
            (false, false, false) => None,
        };
        let auto = |spoken: bool| match spoken || via.is_none() {
            true => Relay,
            false => Serve,
        };
        let (nat_pmp, pcp, upnp) = match mode {
            Mode::Relay => (Relay, Relay, Relay),
            Mode::Proxy if via.is_some() => (Serve, Serve, Serve),
            Mode::Proxy => (Serve, Serve, Relay),
            Mode::Auto => (auto(speaks.nat_pmp), auto(speaks.pcp), auto(speaks.upnp)),
        };
        // A build without the IGD server (`serve::NO_IGD_SERVER`) can only relay UPnP.
        let upnp = match crate::serve::NO_IGD_SERVER {
            Some(_) => Relay,
            None => upnp,
        };
        Plan {
            nat_pmp,
            pcp,
            upnp,
            via,
        }
    }

    /// Whether NAT-PMP or PCP is answered here.
    pub fn serves_any(&self) -> bool {
        self.nat_pmp == Handling::Serve || self.pcp == Handling::Serve
    }

    /// Whether a datagram to port 5351 is answered here: by its version byte (0 NAT-PMP,
    /// anything else is PCP's to answer, if only with UNSUPP_VERSION).
    pub fn serves(&self, msg: &[u8]) -> bool {
        match msg.first() {
            None => false,
            Some(&natpmp::VERSION) => self.nat_pmp == Handling::Serve,
            Some(_) => self.pcp == Handling::Serve,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |h: Handling| match (h, self.via) {
            (Handling::Relay, _) => "relayed".to_string(),
            (Handling::Serve, Some(Via::Pcp)) => "answered here, mapped with PCP".to_string(),
            (Handling::Serve, Some(Via::NatPmp)) => {
                "answered here, mapped with NAT-PMP".to_string()
            }
            (Handling::Serve, Some(Via::Upnp)) => "answered here, mapped with UPnP IGD".to_string(),
            (Handling::Serve, None) => "answered here, no upstream protocol".to_string(),
        };
        write!(
            f,
            "NAT-PMP {}; PCP {}; UPnP IGD {}",
            show(self.nat_pmp),
            show(self.pcp),
            show(self.upnp)
        )
    }
}

/// Why the CGN did not grant a mapping, in terms both client protocols can say (the
/// RFCs' names, one of which ends in "Failure").
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NotAuthorized,
    NetworkFailure,
    NoResources,
    UserExQuota,
    CannotProvideExternal,
    /// The CGN did not answer in time.
    NoAnswer,
    /// An answer this client should never get (say, UNSUPP_OPTION to a request without
    /// options): reported to clients as a network failure.
    Unexpected,
}

impl Failure {
    pub fn from_pcp(code: u8) -> Failure {
        use pcp::result::*;
        match code {
            NOT_AUTHORIZED => Failure::NotAuthorized,
            NETWORK_FAILURE => Failure::NetworkFailure,
            NO_RESOURCES => Failure::NoResources,
            USER_EX_QUOTA => Failure::UserExQuota,
            CANNOT_PROVIDE_EXTERNAL => Failure::CannotProvideExternal,
            _ => Failure::Unexpected,
        }
    }

    pub fn from_natpmp(code: u16) -> Failure {
        use natpmp::result::*;
        match code {
            NOT_AUTHORIZED => Failure::NotAuthorized,
            NETWORK_FAILURE => Failure::NetworkFailure,
            OUT_OF_RESOURCES => Failure::NoResources,
            _ => Failure::Unexpected,
        }
    }

    pub fn pcp(self) -> u8 {
        use pcp::result::*;
        match self {
            Failure::NotAuthorized => NOT_AUTHORIZED,
            Failure::NoResources => NO_RESOURCES,
            Failure::UserExQuota => USER_EX_QUOTA,
            Failure::CannotProvideExternal => CANNOT_PROVIDE_EXTERNAL,
            Failure::NetworkFailure | Failure::NoAnswer | Failure::Unexpected => NETWORK_FAILURE,
        }
    }

    /// NAT-PMP has no quota or "that port, or none" result: both are out of resources.
    pub fn natpmp(self) -> u16 {
        use natpmp::result::*;
        match self {
            Failure::NotAuthorized => NOT_AUTHORIZED,
            Failure::NoResources | Failure::UserExQuota | Failure::CannotProvideExternal => {
                OUT_OF_RESOURCES
            }
            Failure::NetworkFailure | Failure::NoAnswer | Failure::Unexpected => NETWORK_FAILURE,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::NotAuthorized => "not authorized",
            Failure::NetworkFailure => "network failure",
            Failure::NoResources => "no resources",
            Failure::UserExQuota => "over the user's quota",
            Failure::CannotProvideExternal => "cannot provide that external port",
            Failure::NoAnswer => "no answer",
            Failure::Unexpected => "an unexpected result",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speaks(pcp: bool, nat_pmp: bool) -> Speaks {
        Speaks {
            pcp,
            nat_pmp,
            upnp: false,
        }
    }

    #[test]
    fn auto_relays_what_the_cgn_speaks_and_serves_the_rest() {
        use Handling::{Relay, Serve};
        let plan = |pcp, nat_pmp| {
            let p = Plan::choose(Mode::Auto, speaks(pcp, nat_pmp));
            (p.nat_pmp, p.pcp, p.via)
        };
        assert_eq!(plan(true, true), (Relay, Relay, Some(Via::Pcp)));
        assert_eq!(plan(true, false), (Serve, Relay, Some(Via::Pcp)));
        assert_eq!(plan(false, true), (Relay, Serve, Some(Via::NatPmp)));
        assert_eq!(plan(false, false), (Relay, Relay, None));
        let upnp_only = Plan::choose(
            Mode::Auto,
            Speaks {
                pcp: false,
                nat_pmp: false,
                upnp: true,
            },
        );
        assert_eq!(
            (upnp_only.nat_pmp, upnp_only.pcp, upnp_only.via),
            (Serve, Serve, Some(Via::Upnp))
        );
        assert_eq!(upnp_only.upnp, Relay);
        // UPnP is answered here only by a build with the IGD server.
        let upnp_served = match crate::serve::NO_IGD_SERVER {
            None => Serve,
            Some(_) => Relay,
        };
        assert_eq!(
            Plan::choose(Mode::Auto, speaks(true, false)).upnp,
            upnp_served
        );
        assert_eq!(Plan::choose(Mode::Auto, speaks(false, false)).upnp, Relay);
        let proxy = Plan::choose(Mode::Proxy, speaks(false, true));
        assert_eq!(
            (proxy.nat_pmp, proxy.pcp, proxy.upnp),
            (Serve, Serve, upnp_served)
        );
        assert_eq!(Plan::choose(Mode::Proxy, speaks(false, false)).upnp, Relay);
        let relay = Plan::choose(Mode::Relay, speaks(true, false));
        assert!(!relay.serves_any() && relay.upnp == Relay);
    }

    #[test]
    fn the_version_byte_picks_the_protocol() {
        let plan = Plan::choose(Mode::Auto, speaks(true, false));
        assert!(plan.serves(&[0, 0]));
        assert!(!plan.serves(&[2, 1]));
        assert!(!plan.serves(&[]));
        let plan = Plan::choose(Mode::Auto, speaks(false, true));
        assert!(plan.serves(&[1, 1]), "PCP's to refuse with UNSUPP_VERSION");
    }

    #[test]
    fn failures_map_both_ways() {
        for code in 0..=13 {
            let f = Failure::from_pcp(code);
            assert!(f.natpmp() <= 5);
            if f != Failure::Unexpected {
                assert_eq!(f.pcp(), code);
            }
        }
        assert_eq!(Failure::from_natpmp(4).pcp(), pcp::result::NO_RESOURCES);
        assert_eq!(Failure::CannotProvideExternal.natpmp(), 4);
        assert_eq!(Failure::NoAnswer.pcp(), pcp::result::NETWORK_FAILURE);
    }
}
