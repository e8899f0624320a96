//! Per-client rate limit (`--rate-limit`): a token bucket per LAN address, so
//! that one host flooding requests or searches cannot starve the others. Real
//! clients send a handful (libnatpmp: 9 tries from 250 ms, doubling); the
//! default of 10 per second with bursts of 20 leaves them untouched.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Clients tracked at most; buckets idle long enough to be full again are
/// forgotten first, so memory stays bounded under address-spoofing floods.
const MAX_CLIENTS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug)]
pub struct RateLimit {
    /// Tokens per second; 0 turns the limit off.
    rate: u32,
    buckets: HashMap<Ipv4Addr, Bucket>,
}

impl RateLimit {
    pub fn new(rate: u32) -> RateLimit {
        RateLimit {
            rate,
            buckets: HashMap::new(),
        }
    }

    fn burst(&self) -> f64 {
        2.0 * f64::from(self.rate)
    }

    /// Takes a token for `client` at `now`; false if it has none left.
    pub fn allow(&mut self, client: Ipv4Addr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        if self.buckets.len() >= MAX_CLIENTS && !self.buckets.contains_key(&client) {
            self.forget_full(now);
            if self.buckets.len() >= MAX_CLIENTS {
                return false;
            }
        }
        let (rate, burst) = (f64::from(self.rate), self.burst());
        let bucket = self.buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the buckets that would be full by now: forgetting them changes nothing.
    fn forget_full(&mut self, now: Instant) {
        let full_after = Duration::from_secs_f64(self.burst() / f64::from(self.rate));
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.refilled) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);

    #[test]
    fn a_burst_then_the_rate() {
        let mut limit = RateLimit::new(10);
        let t0 = Instant::now();
        assert_eq!((0..100).filter(|_| limit.allow(A, t0)).count(), 20);
        // Another client is not affected by A's flood.
        assert!(limit.allow(B, t0));
        // One second later A has 10 new tokens.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| limit.allow(A, t1)).count(), 10);
    }

    #[test]
    fn zero_means_no_limit() {
        let mut limit = RateLimit::new(0);
        assert!((0..10_000).all(|_| limit.allow(A, Instant::now())));
    }

    #[test]
    fn memory_is_bounded_and_quiet_clients_are_forgotten_first() {
        let mut limit = RateLimit::new(10);
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS as u32 {
            assert!(limit.allow(Ipv4Addr::from(0x0a00_0000 + i), t0));
        }
        // Table full of active clients: a new one is refused, not let in by evicting them.
        assert!(!limit.allow(A, t0));
        // Once they are quiet long enough to be full again, they make room.
        assert!(limit.allow(A, t0 + Duration::from_secs(3)));
        assert!(limit.buckets.len() <= MAX_CLIENTS);
    }
}
