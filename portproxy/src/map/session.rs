//! What `portproxy map` knows of its one mapping, and what each answer means: renewed as
//! it was, re-created after the gateway lost its state (its epoch went back, RFC 6887
//! §8.5), or changed (another external address or port). Times are the boot-time clock's,
//! passed in, so the tests run on made-up ones.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::upstream::EpochWatch;

/// After a failed renewal, the next try (sooner if half the time left is shorter).
const RETRY: Duration = Duration::from_secs(5);
/// Renewals are never closer together than this.
const MIN_RENEWAL: Duration = Duration::from_secs(1);

/// What an answer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The first grant.
    Mapped,
    /// The same mapping for another lifetime.
    Renewed,
    /// The gateway had lost the mapping (its epoch says so); it has it again, as it was.
    Recreated,
    /// Another external address or port than before (this one).
    Changed { before: SocketAddrV4 },
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Mapped => "mapped",
            Change::Renewed => "renewed",
            Change::Recreated => "recreated",
            Change::Changed { .. } => "changed",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    external: SocketAddrV4,
    lifetime: u32,
    granted_at: Duration,
}

/// One mapping's state.
#[derive(Debug, Default)]
pub struct Session {
    held: Option<Held>,
    /// `None` for a protocol without an epoch (UPnP IGD).
    epoch: Option<EpochWatch>,
    /// When a failed renewal is tried again.
    retry_at: Option<Duration>,
    /// The epochs of the gateway's announcements (it sends a burst of ten after a change),
    /// PCP's and NAT-PMP's apart (a proxy may relay one and answer the other).
    announced_pcp: EpochWatch,
    announced_natpmp: EpochWatch,
}

impl Session {
    /// `has_epoch`: whether the protocol's answers carry the gateway's epoch.
    pub fn new(has_epoch: bool) -> Session {
        Session {
            epoch: has_epoch.then(EpochWatch::default),
            ..Session::default()
        }
    }

    /// Takes in a grant (`epoch` ignored without one) at `now`: what it changed.
    pub fn granted(
        &mut self,
        now: Duration,
        external: SocketAddrV4,
        lifetime: u32,
        epoch: u32,
    ) -> Change {
        let lost = match &mut self.epoch {
            Some(watch) => watch.lost_state(epoch, now),
            None => false,
        };
        let before = self.held.map(|h| h.external);
        self.held = Some(Held {
            external,
            lifetime,
            granted_at: now,
        });
        self.retry_at = None;
        match before {
            None => Change::Mapped,
            Some(before) if before != external => Change::Changed { before },
            Some(_) if lost => Change::Recreated,
            Some(_) => Change::Renewed,
        }
    }

    /// The gateway announced itself at `now` with `epoch` and, NAT-PMP (`None`: PCP), its
    /// address: whether to renew now. The first announcement heard, one whose epoch says
    /// the gateway lost its state, or a new address do; the rest of a burst does not.
    pub fn announced(&mut self, now: Duration, epoch: u32, address: Option<Ipv4Addr>) -> bool {
        let watch = match address {
            Some(_) => &mut self.announced_natpmp,
            None => &mut self.announced_pcp,
        };
        let first = *watch == EpochWatch::default();
        let lost = watch.lost_state(epoch, now);
        let moved = address.is_some_and(|a| self.external().is_some_and(|e| *e.ip() != a));
        first || lost || moved
    }

    /// A renewal failed at `now`: when to try again.
    pub fn failed(&mut self, now: Duration) -> Duration {
        let left = self
            .expires()
            .map_or(Duration::ZERO, |t| t.saturating_sub(now));
        let wait = RETRY.min(left / 2).max(MIN_RENEWAL);
        let at = now + wait;
        self.retry_at = Some(at);
        at
    }

    /// When to renew: half the granted lifetime after the grant, or the retry after a failure.
    pub fn next_renewal(&self) -> Option<Duration> {
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        let held = self.held?;
        let half = Duration::from_secs(u64::from(held.lifetime / 2));
        Some(held.granted_at + half.max(MIN_RENEWAL))
    }

    /// When the mapping ends unless renewed.
    pub fn expires(&self) -> Option<Duration> {
        self.held
            .map(|h| h.granted_at + Duration::from_secs(u64::from(h.lifetime)))
    }

    /// The external address and port held.
    pub fn external(&self) -> Option<SocketAddrV4> {
        self.held.map(|h| h.external)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 1);

    fn ext(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(PUBLIC, port)
    }

    #[test]
    fn renewed_at_half_the_granted_lifetime() {
        let mut s = Session::new(true);
        assert_eq!(s.next_renewal(), None);
        assert_eq!(s.granted(at(100), ext(9000), 120, 1000), Change::Mapped);
        assert_eq!(s.next_renewal(), Some(at(160)));
        assert_eq!(s.expires(), Some(at(220)));
        assert_eq!(s.granted(at(160), ext(9000), 120, 1060), Change::Renewed);
        assert_eq!(s.next_renewal(), Some(at(220)));
        assert_eq!(s.external(), Some(ext(9000)));
    }

    #[test]
    fn an_epoch_gone_back_is_a_recreation() {
        let mut s = Session::new(true);
        s.granted(at(0), ext(9000), 60, 5000);
        assert_eq!(s.granted(at(30), ext(9000), 60, 4), Change::Recreated);
        assert_eq!(s.granted(at(60), ext(9000), 60, 34), Change::Renewed);
    }

    #[test]
    fn another_address_or_port_is_a_change() {
        let mut s = Session::new(true);
        s.granted(at(0), ext(9000), 60, 100);
        let moved = SocketAddrV4::new(Ipv4Addr::new(203, 0, 114, 9), 9000);
        assert_eq!(
            s.granted(at(30), moved, 60, 1),
            Change::Changed { before: ext(9000) },
            "a change wins over the epoch's reset"
        );
        assert_eq!(
            s.granted(at(60), ext(9001), 60, 31),
            Change::Changed { before: moved }
        );
        assert_eq!(s.external(), Some(ext(9001)));
    }

    #[test]
    fn without_an_epoch_time_passing_is_no_loss() {
        let mut s = Session::new(false);
        s.granted(at(0), ext(9000), 3600, 0);
        assert_eq!(s.granted(at(1800), ext(9000), 3600, 0), Change::Renewed);
    }

    #[test]
    fn a_failure_is_retried_sooner_while_the_mapping_lasts() {
        let mut s = Session::new(true);
        s.granted(at(0), ext(9000), 60, 100);
        assert_eq!(s.failed(at(30)), at(35));
        assert_eq!(s.next_renewal(), Some(at(35)));
        assert_eq!(s.failed(at(56)), at(58), "half the 4 s left");
        assert_eq!(s.failed(at(70)), at(71), "expired: once a second at most");
        assert_eq!(s.granted(at(71), ext(9000), 60, 171), Change::Renewed);
        assert_eq!(s.next_renewal(), Some(at(101)));
    }

    #[test]
    fn an_announcement_burst_makes_one_renewal() {
        let mut s = Session::new(true);
        s.granted(at(0), ext(9000), 60, 100);
        assert!(s.announced(at(10), 2, None), "the first one heard");
        assert!(!s.announced(at(11), 3, None));
        assert!(s.announced(at(11), 700, Some(PUBLIC)), "NAT-PMP's first");
        assert!(!s.announced(at(13), 702, Some(PUBLIC)), "the same address");
        assert!(!s.announced(at(13), 5, None));
        assert!(s.announced(at(20), 1, None), "the gateway restarted");
        assert!(
            s.announced(at(22), 3, Some(Ipv4Addr::new(203, 0, 114, 9))),
            "another address"
        );
    }

    #[test]
    fn a_tiny_lifetime_is_not_renewed_in_a_loop() {
        let mut s = Session::new(true);
        s.granted(at(10), ext(9000), 1, 100);
        assert_eq!(s.next_renewal(), Some(at(11)));
    }
}
