//! Has the CGN lost its mappings? Every NAT-PMP and PCP answer carries the server's epoch,
//! the seconds since it started (or last lost its state). Compared with the time that passed
//! here between two answers it tells a restart apart from a slow clock (RFC 6887 §8.5, and
//! RFC 6886 §3.6 for NAT-PMP's seconds since start of epoch), as libpcp checks it.

use std::time::Duration;

/// The last epoch seen from one server, and when (boot-time clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochWatch {
    last: Option<(u32, Duration)>,
}

impl EpochWatch {
    /// Takes in the epoch `server` seen at `now`; true when it says the server lost its
    /// state since the last one: it went back by more than a second, or moved more than 1/16
    /// (plus 2 s) faster or slower than this clock did.
    pub fn lost_state(&mut self, server: u32, now: Duration) -> bool {
        let lost = self.last.is_some_and(|(before, then)| {
            let ds = i64::from(server) - i64::from(before);
            let dc = i64::try_from(now.saturating_sub(then).as_secs()).unwrap_or(i64::MAX);
            ds < -1 || dc.saturating_add(2) < ds - ds / 16 || ds + 2 < dc - dc / 16
        });
        self.last = Some((server, now));
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_server_that_keeps_time_keeps_its_state() {
        let mut w = EpochWatch::default();
        assert!(
            !w.lost_state(1000, at(50)),
            "the first answer has nothing to compare"
        );
        assert!(!w.lost_state(1000, at(50)));
        assert!(!w.lost_state(1060, at(110)));
        // A few seconds of drift over an hour is fine.
        assert!(!w.lost_state(4662, at(3710)));
    }

    #[test]
    fn a_restart_or_a_jump_is_lost_state() {
        let mut w = EpochWatch::default();
        w.lost_state(1000, at(50));
        assert!(w.lost_state(3, at(60)), "went back: restarted");
        let mut w = EpochWatch::default();
        w.lost_state(1000, at(50));
        assert!(w.lost_state(1200, at(60)), "jumped ahead of our clock");
        let mut w = EpochWatch::default();
        w.lost_state(10, at(0));
        assert!(
            w.lost_state(20, at(600)),
            "restarted long ago: too little time passed there"
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut w = EpochWatch::default();
        w.lost_state(u32::MAX, Duration::ZERO);
        assert!(w.lost_state(0, Duration::MAX));
        assert!(!EpochWatch::default().lost_state(0, Duration::MAX));
    }
}
