//! Counters for every fate a packet can meet in the socket relay.

// std's AtomicU64 where the CPU has 64-bit atomics; a lock on those without (32-bit MIPS).
use portable_atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident => $label:literal,)*) => {
        /// One counter per reason; the label is what `-v` prints at exit.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Counter { $($name,)* }

        impl Counter {
            pub const ALL: &[Counter] = &[$(Counter::$name,)*];
            pub fn label(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }
        }
    };
}

counters! {
    NatPmpToCgn => "nat-pmp requests relayed to the CGN",
    NatPmpToClient => "nat-pmp replies relayed to clients",
    PcpToCgn => "pcp requests relayed to the CGN",
    PcpToClient => "pcp replies relayed to clients",
    SearchToCgn => "ssdp searches relayed to the CGN",
    SearchReplyToClient => "ssdp search replies relayed to clients",
    NotifyToLan => "ssdp notifies relayed to the LAN",
    HttpConnections => "http connections relayed",
    CgnProbes => "looks at what the CGN speaks (one ssdp search each)",
    NatPmpAnswered => "nat-pmp requests answered here",
    PcpAnswered => "pcp requests answered here",
    UpstreamFailed => "mappings the CGN refused or did not answer",
    DropMalformed => "dropped: malformed",
    DropNotFromCgn => "dropped: not from the CGN",
    DropFromWan => "dropped: request or search from the WAN side",
    DropOwn => "dropped: sent by portproxy itself",
    DropNotOnLan => "dropped: source not on the LAN",
    DropUnexpected => "dropped: unexpected message type",
    DropTableFull => "dropped: too many clients or searches in flight",
    DropRateLimit => "dropped: client over its rate limit",
    DropQuota => "dropped: client over its quota of requests in flight",
    DropBusy => "dropped: a request from the same client is being answered",
    DropSendFailed => "dropped: send failed",
    Expired => "client entries expired",
    MappingsAdded => "mappings learned from the CGN's grants",
    MappingsRenewed => "mappings renewed",
    MappingsDeleted => "mappings deleted",
    MappingsExpired => "mappings expired",
    MappingsRecreated => "mappings re-created after the CGN lost them",
    AnnouncementsRelayed => "CGN announcements passed on to the LAN",
    MappingRefusedQuota => "grants not taken: host over its mapping quota",
    MappingRefusedFull => "grants not taken: mapping table full",
    MappingRefusedLifetime => "grants not taken: lifetime out of range",
    MappingRefusedNotLan => "grants not taken: not for a LAN host",
    MappingRefusedProtocol => "grants not taken: protocol other than TCP or UDP",
    GrantUnmatched => "grants not taken: no matching request in flight",
    FirewallErrors => "firewall updates failed",
    SaveErrors => "mappings file writes failed",
    UpnpNotUnderstood => "upnp mapping actions not understood (spliced, not learned)",
}

#[derive(Debug)]
pub struct Stats([AtomicU64; Counter::ALL.len()]);

impl Default for Stats {
    fn default() -> Self {
        Stats(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Stats {
    pub fn add(&self, counter: Counter) {
        self.add_n(counter, 1);
    }

    pub fn add_n(&self, counter: Counter, n: u64) {
        self.0[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize].load(Ordering::Relaxed)
    }

    /// Every counter by label, for the status file.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        Counter::ALL
            .iter()
            .map(|c| (c.label().to_string(), self.get(*c)))
            .collect()
    }

    /// The non-zero counters, one per line.
    pub fn report(&self) -> String {
        Counter::ALL
            .iter()
            .filter(|c| self.get(**c) > 0)
            .map(|c| format!("{:>10}  {}", self.get(*c), c.label()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_reports_non_zero() {
        let stats = Stats::default();
        stats.add(Counter::DropMalformed);
        stats.add(Counter::DropMalformed);
        assert_eq!(stats.get(Counter::DropMalformed), 2);
        assert_eq!(stats.report(), "         2  dropped: malformed");
    }
}
