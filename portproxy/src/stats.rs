//! The fates a packet (or a grant, a mapping) can meet on either data path, and the daemon's
//! counters of them; the programs count theirs in `STATS`.

// std's AtomicU64 where the CPU has 64-bit atomics; a lock on those without (32-bit MIPS).
use portable_atomic::{AtomicU64, Ordering};

macro_rules! counters {
    (
        daemon { $($name:ident $id:literal => $label:literal,)* }
        kernel { $($kname:ident $kid:literal => $klabel:literal,)* }
    ) => {
        /// One counter per fate; the label is what `-v` and `portproxy stats` print, the id
        /// the key in `portproxy stats --json`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Counter { $($name,)* $($kname,)* }

        impl Counter {
            /// Every fate of both data paths.
            pub const ALL: &[Counter] = &[$(Counter::$name,)* $(Counter::$kname,)*];
            /// The fates the daemon counts (the others only the programs, in `STATS`).
            pub const DAEMON: &[Counter] = &[$(Counter::$name,)*];

            pub fn id(self) -> &'static str {
                match self { $(Counter::$name => $id,)* $(Counter::$kname => $kid,)* }
            }

            pub fn label(self) -> &'static str {
                match self { $(Counter::$name => $label,)* $(Counter::$kname => $klabel,)* }
            }
        }
    };
}

// One vocabulary for both data paths: a fate the programs count as well (`STATS`, named by
// `portproxy_common::STAT_IDS`) has the same id and label on either path.
counters! {
    daemon {
        // Also counted by the programs.
        NatPmpToCgn "nat_pmp_to_cgn" => "nat-pmp requests relayed to the CGN",
        NatPmpToClient "nat_pmp_to_client" => "nat-pmp replies relayed to clients",
        PcpToCgn "pcp_to_cgn" => "pcp requests relayed to the CGN",
        PcpToClient "pcp_to_client" => "pcp replies relayed to clients",
        SearchToCgn "search_to_cgn" => "ssdp searches relayed to the CGN",
        NotifyToLan "notify_to_lan" => "ssdp notifies relayed to the LAN",
        // The programs count only NAT-PMP/PCP here (malformed searches apart).
        DropMalformed "dropped_malformed" => "dropped: malformed",
        DropNotFromCgn "dropped_not_from_cgn" => "dropped: not from the CGN",
        DropNotOnLan "dropped_not_on_lan" => "dropped: source not on the LAN",
        DropRateLimit "dropped_rate_limit" => "dropped: client over its rate limit",
        DropQuota "dropped_quota" => "dropped: client over its quota of requests in flight",
        // Only the daemon.
        SearchReplyToClient "search_reply_to_client" => "ssdp search replies relayed to clients",
        HttpConnections "http_connections" => "http connections relayed",
        CgnProbes "cgn_probes" => "looks at what the CGN speaks (one ssdp search each)",
        NatPmpAnswered "nat_pmp_answered" => "nat-pmp requests answered here",
        PcpAnswered "pcp_answered" => "pcp requests answered here",
        UpnpAnswered "upnp_answered" => "upnp actions answered here",
        UpnpRefused "upnp_refused" => "upnp actions refused (a upnp error)",
        SearchAnswered "search_answered" => "ssdp searches answered here",
        DropHttp "dropped_http" => "dropped: http connections over the limit, too slow or malformed",
        UpstreamFailed "upstream_failed" => "mappings the CGN refused or did not answer",
        DropFromWan "dropped_from_wan" => "dropped: request or search from the WAN side",
        DropOwn "dropped_own" => "dropped: sent by portproxy itself",
        DropUnexpected "dropped_unexpected" => "dropped: unexpected message type",
        DropTableFull "dropped_table_full" => "dropped: too many clients or searches in flight",
        DropBusy "dropped_busy" => "dropped: a request from the same client is being answered",
        DropSendFailed "dropped_send_failed" => "dropped: send failed",
        Expired "clients_expired" => "client entries expired",
        MappingsAdded "mappings_added" => "mappings learned from the CGN's grants",
        MappingsRenewed "mappings_renewed" => "mappings renewed",
        MappingsDeleted "mappings_deleted" => "mappings deleted",
        MappingsExpired "mappings_expired" => "mappings expired",
        MappingsRecreated "mappings_recreated" => "mappings re-created after the CGN lost them",
        AnnouncementsRelayed "announcements_relayed" => "CGN announcements passed on to the LAN",
        MappingRefusedQuota "grants_refused_quota" => "grants not taken: host over its mapping quota",
        MappingRefusedFull "grants_refused_full" => "grants not taken: mapping table full",
        MappingRefusedLifetime "grants_refused_lifetime" => "grants not taken: lifetime out of range",
        MappingRefusedNotLan "grants_refused_not_lan" => "grants not taken: not for a LAN host",
        MappingRefusedProtocol "grants_refused_protocol" => "grants not taken: protocol other than TCP or UDP",
        GrantUnmatched "grants_unmatched" => "grants not taken: no matching request in flight",
        FirewallErrors "firewall_errors" => "firewall updates failed",
        SaveErrors "save_errors" => "mappings file writes failed",
        UpnpNotUnderstood "upnp_not_understood" => "upnp mapping actions not understood (spliced, not learned)",
        GenaSubscribed "gena_subscribed" => "gena subscriptions taken (renewals apart)",
        GenaRefused "gena_refused" => "gena (un)subscribes refused: bad headers, unknown sid or a callback not to the subscriber",
        GenaEvicted "gena_evicted" => "gena subscriptions ended early for a newer one (per-host or total limit)",
        GenaEvents "gena_events" => "gena events delivered",
        GenaFailed "gena_failed" => "gena events not delivered (callback refused, silent or not 2xx)",
    }
    kernel {
        Passed "passed" => "passed to the stack: not for portproxy",
        PassedToDaemon "passed_to_daemon" => "passed to the daemon",
        SearchFromWan "search_from_wan" => "ssdp searches from the WAN, passed to the stack",
        PassedOwn "passed_own" => "passed: sent from the CPE's own address",
        Errors "errors" => "errors in the programs (packet passed)",
        RelayedByXdp "relayed_by_xdp" => "relayed by xdp (also counted by protocol)",
        XdpDeferred "xdp_deferred" => "left by xdp to tc",
        ClientsEvicted "clients_evicted" => "client entries evicted (table full)",
        DropMalformedSearch "dropped_malformed_search" => "dropped: malformed search",
        DropTtl "dropped_ttl" => "dropped: ttl 1 or 0",
        GrantsToDaemon "grants_to_daemon" => "grants handed to the daemon",
        GrantsLost "grants_lost" => "grants lost (ring full)",
    }
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

    /// Every counter the daemon keeps, by id, for the status file.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        Counter::DAEMON
            .iter()
            .map(|c| (c.id().to_string(), self.get(*c)))
            .collect()
    }

    /// The non-zero counters, one per line.
    pub fn report(&self) -> String {
        Counter::DAEMON
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

    #[test]
    fn ids_and_labels_are_unique() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.id(), b.id());
                assert_ne!(a.label(), b.label());
            }
        }
    }
}
