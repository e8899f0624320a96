//! The results: per-mode summaries, same-run ratios, targets, the table (stdout and
//! bench.txt), the raw numbers (bench.json) and the chart (bench.png).

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::igd::IgdLoad;
use super::renewal::{self, Renewal};
use super::{Args, Kind, ModeResult, Placement, Round, Scale, ScalePass, Throughput};
use crate::bench::traffic::ProbeResult;

pub struct Report {
    pub args: Args,
    pub kernel: String,
    pub placement: Placement,
    pub bin: PathBuf,
    pub size: u64,
    pub stripped: u64,
    pub layout_note: String,
    pub results: Vec<ModeResult>,
    pub elapsed_s: f64,
    /// /proc/loadavg at the start and the end (other work on the machine skews the numbers).
    pub load: [String; 2],
}

/// What the table shows of a mode: medians over rounds, pooled latency samples.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub name: String,
    pub kind: String,
    pub unavailable: Option<String>,
    pub delivered_pps: Option<f64>,
    pub delivered_pps_median: Option<f64>,
    pub generator_busy_median: Option<f64>,
    pub sys_ns_per_pkt_median: Option<f64>,
    pub daemon_ns_per_pkt_median: Option<f64>,
    pub sent_pps: Option<f64>,
    pub replies_pps: Option<f64>,
    pub delivered_of_sent: Option<f64>,
    pub generator_busy: Option<f64>,
    pub sys_ns_per_pkt: Option<f64>,
    pub daemon_ns_per_pkt: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub latency_samples: u64,
    pub latency_lost: u64,
    pub flood_legit_pct: Option<f64>,
    pub flood_delivered_pps: Option<f64>,
    pub rss_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    pub load_hwm_kib: Option<u64>,
    pub bpf_maps: Option<std::result::Result<(Vec<String>, u64), String>>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The `p` quantile (0..1) of sorted samples, nearest rank.
fn quantile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64)
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Routing => "routing",
        Kind::Sockets => "sockets",
        Kind::Fast(_) => "fast",
        Kind::Nft => "nft",
        Kind::Proxy => "proxy",
    }
}

pub fn summarize(result: &ModeResult) -> Summary {
    let rounds = &result.rounds;
    let per = |f: &dyn Fn(&Round) -> Option<f64>| median(rounds.iter().filter_map(f).collect());
    let tp = |r: &Round| r.throughput.clone();
    let mut rtts: Vec<u64> = rounds
        .iter()
        .flat_map(|r| r.latency.rtts_ns.iter().copied())
        .collect();
    rtts.sort_unstable();
    let us = |v: Option<f64>| v.map(|ns| ns / 1000.0);
    let lat_sent: u64 = rounds.iter().map(|r| r.latency.sent).sum();
    let lat_answered: u64 = rounds.iter().map(|r| r.latency.answered).sum();
    let flood_sent: u64 = rounds.iter().map(|r| r.flood.sent).sum();
    let flood_answered: u64 = rounds.iter().map(|r| r.flood.answered).sum();
    let available = result.mode.unavailable.is_none() && !rounds.is_empty();
    // Foreign load on the shared CPUs only ever lowers a round's rate: the headline figures
    // come from each mode's best round (the most delivered), medians are kept alongside.
    let best = rounds.iter().max_by(|a, b| {
        a.throughput
            .pps(a.throughput.delivered)
            .total_cmp(&b.throughput.pps(b.throughput.delivered))
    });
    let at_best = |f: &dyn Fn(&Round) -> Option<f64>| best.and_then(f);
    let delivered = |r: &Round| Some(tp(r).pps(r.throughput.delivered));
    let sent = |r: &Round| Some(tp(r).pps(r.throughput.sent));
    let replies = |r: &Round| Some(tp(r).pps(r.throughput.replies));
    let of_sent = |r: &Round| {
        (r.throughput.sent > 0).then(|| r.throughput.delivered as f64 / r.throughput.sent as f64)
    };
    let gen_busy =
        |r: &Round| Some(r.throughput.generator_cpu_ns as f64 / (r.throughput.window_s * 1e9));
    let sys_ns = |r: &Round| {
        (r.throughput.delivered > 0)
            .then(|| r.throughput.busy_ns as f64 / r.throughput.delivered as f64)
    };
    let daemon_ns = |r: &Round| {
        let ns = r.throughput.daemon_cpu_ns?;
        (r.throughput.delivered > 0).then(|| ns as f64 / r.throughput.delivered as f64)
    };
    Summary {
        name: result.mode.name.clone(),
        kind: kind_name(&result.mode.kind).into(),
        unavailable: result
            .mode
            .unavailable
            .clone()
            .or_else(|| rounds.is_empty().then(|| "not measured".into())),
        delivered_pps: at_best(&delivered),
        delivered_pps_median: per(&delivered),
        sent_pps: at_best(&sent),
        replies_pps: at_best(&replies),
        delivered_of_sent: at_best(&of_sent),
        generator_busy: at_best(&gen_busy),
        generator_busy_median: per(&gen_busy),
        sys_ns_per_pkt: at_best(&sys_ns),
        sys_ns_per_pkt_median: per(&sys_ns),
        daemon_ns_per_pkt: at_best(&daemon_ns),
        daemon_ns_per_pkt_median: per(&daemon_ns),
        p50_us: us(quantile(&rtts, 0.50)),
        p99_us: us(quantile(&rtts, 0.99)),
        p999_us: us(quantile(&rtts, 0.999)),
        latency_samples: rtts.len() as u64,
        latency_lost: lat_sent - lat_answered,
        flood_legit_pct: (available && flood_sent > 0)
            .then(|| 100.0 * flood_answered as f64 / flood_sent as f64),
        flood_delivered_pps: per(&|r| Some(r.flood_throughput.pps(r.flood_throughput.delivered))),
        rss_kib: rounds.iter().filter_map(|r| r.rss_kib).max(),
        hwm_kib: rounds.iter().filter_map(|r| r.hwm_kib).max(),
        load_hwm_kib: rounds.iter().filter_map(|r| r.load_hwm_kib).max(),
        bpf_maps: rounds.iter().rev().find_map(|r| r.bpf_maps.clone()),
    }
}

/// A ratio of two optional figures.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub struct Target {
    pub what: String,
    pub value: Option<f64>,
    pub shown: String,
    pub goal: String,
    /// None: not measurable in this run (with why in `shown`).
    pub met: Option<bool>,
}

impl Report {
    /// The proxy's renewal measurement, if the proxy mode ran.
    fn renewal(&self) -> Option<Result<&Renewal, &String>> {
        self.results
            .iter()
            .find_map(|r| r.renewal.as_ref().map(|r| r.as_ref()))
    }

    /// The IGD's measurement, if the proxy mode ran.
    fn igd(&self) -> Option<Result<&IgdLoad, &String>> {
        self.results
            .iter()
            .find_map(|r| r.igd.as_ref().map(|r| r.as_ref()))
    }

    fn summaries(&self) -> Vec<Summary> {
        self.results.iter().map(summarize).collect()
    }

    fn find<'s>(summaries: &'s [Summary], kind: &str) -> Vec<&'s Summary> {
        summaries.iter().filter(|s| s.kind == kind).collect()
    }

    /// Ratios of medians within this run; `(label, value)`.
    fn ratios(&self, summaries: &[Summary]) -> Vec<(String, Option<f64>, String)> {
        let routing = Self::find(summaries, "routing")
            .first()
            .copied()
            .cloned()
            .unwrap_or_default();
        let sockets = Self::find(summaries, "sockets")
            .first()
            .copied()
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::new();
        let x = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}x"));
        // Best-round ratio, then the ratio of medians.
        let both = |a: &Summary, b: &Summary| {
            let best = ratio(a.delivered_pps, b.delivered_pps);
            let median = ratio(a.delivered_pps_median, b.delivered_pps_median);
            (best, format!("{} ({})", x(best), x(median)))
        };
        for fast in Self::find(summaries, "fast") {
            let why = fast.unavailable.clone().unwrap_or_default();
            let show = |v: Option<f64>| {
                if fast.unavailable.is_some() {
                    why.clone()
                } else {
                    x(v)
                }
            };
            for (other, label) in [(&routing, "routing"), (&sockets, "sockets")] {
                let (r, shown) = both(fast, other);
                let shown = if fast.unavailable.is_some() {
                    show(r)
                } else {
                    shown
                };
                out.push((format!("{}/{label} pps", fast.name), r, shown));
            }
        }
        let (r, shown) = both(&sockets, &routing);
        out.push(("sockets/routing pps".into(), r, shown));
        let nft = Self::find(summaries, "nft")
            .first()
            .copied()
            .cloned()
            .unwrap_or_default();
        let (r, shown) = both(&nft, &routing);
        out.push(("nft/routing pps".into(), r, shown));
        let proxy = Self::find(summaries, "proxy")
            .first()
            .copied()
            .cloned()
            .unwrap_or_default();
        let (r, shown) = both(&proxy, &sockets);
        out.push((
            "proxy/sockets pps (map requests translated / public address requests relayed)".into(),
            r,
            shown,
        ));
        for s in summaries.iter().filter(|s| s.kind != "routing") {
            let added = match (s.p99_us, routing.p99_us) {
                (Some(a), Some(b)) if s.unavailable.is_none() => Some(a - b),
                _ => None,
            };
            let shown = match (&s.unavailable, added) {
                (Some(why), _) => why.clone(),
                (None, Some(v)) => format!("{v:+.1} us"),
                (None, None) => "n/a".into(),
            };
            out.push((
                format!("{} p99 added latency over routing", s.name),
                added,
                shown,
            ));
        }
        out
    }

    fn targets(&self, summaries: &[Summary]) -> Vec<Target> {
        let routing = Self::find(summaries, "routing")
            .first()
            .copied()
            .cloned()
            .unwrap_or_default();
        let sockets = Self::find(summaries, "sockets")
            .first()
            .copied()
            .cloned()
            .unwrap_or_default();
        let mut targets = Vec::new();
        let mut push = |what: String,
                        value: Option<f64>,
                        unit: &str,
                        goal: String,
                        ok: &dyn Fn(f64) -> bool,
                        why: Option<String>| {
            let (shown, met) = match (why, value) {
                (Some(why), _) => (why, None),
                (None, Some(v)) if unit == " us" => (format!("{v:+.1}{unit}"), Some(ok(v))),
                (None, Some(v)) => (format!("{v:.2}{unit}"), Some(ok(v))),
                (None, None) => ("not measured".into(), None),
            };
            targets.push(Target {
                what,
                value,
                shown,
                goal,
                met,
            });
        };
        for fast in Self::find(summaries, "fast") {
            let why = fast.unavailable.clone();
            push(
                format!("{} pps vs routing", fast.name),
                ratio(fast.delivered_pps, routing.delivered_pps),
                "x",
                ">= 1.0x".into(),
                &|v| v >= 1.0,
                why.clone(),
            );
            push(
                format!("{} pps vs sockets", fast.name),
                ratio(fast.delivered_pps, sockets.delivered_pps),
                "x",
                ">= 3x".into(),
                &|v| v >= 3.0,
                why.clone(),
            );
            let added = fast.p99_us.zip(routing.p99_us).map(|(a, b)| a - b);
            push(
                format!("{} p99 added latency", fast.name),
                added,
                " us",
                "<= +5 us".into(),
                &|v| v <= 5.0,
                why.clone(),
            );
            push(
                format!("{} legit served under flood", fast.name),
                fast.flood_legit_pct,
                " %",
                ">= 99 %".into(),
                &|v| v >= 99.0,
                why.clone(),
            );
            push(
                format!("{} load peak (VmHWM when ready)", fast.name),
                fast.load_hwm_kib.map(|k| k as f64 / 1024.0),
                " MiB",
                "<= 8 MiB".into(),
                &|v| v <= 8.0,
                why.clone(),
            );
            push(
                format!("{} daemon RSS (VmHWM)", fast.name),
                fast.hwm_kib.map(|k| k as f64 / 1024.0),
                " MiB",
                "<= 8 MiB".into(),
                &|v| v <= 8.0,
                why,
            );
        }
        push(
            "sockets pps vs routing".into(),
            ratio(sockets.delivered_pps, routing.delivered_pps),
            "x",
            ">= 0.5x".into(),
            &|v| v >= 0.5,
            sockets.unavailable.clone(),
        );
        push(
            "sockets daemon RSS (VmHWM)".into(),
            sockets.hwm_kib.map(|k| k as f64 / 1024.0),
            " MiB",
            "<= 8 MiB".into(),
            &|v| v <= 8.0,
            sockets.unavailable.clone(),
        );
        let proxy = Self::find(summaries, "proxy")
            .first()
            .copied()
            .cloned()
            .unwrap_or_default();
        push(
            "proxy p99 added latency (translated request)".into(),
            proxy.p99_us.zip(routing.p99_us).map(|(a, b)| a - b),
            " us",
            "<= +1000 us".into(),
            &|v| v <= 1000.0,
            proxy.unavailable.clone(),
        );
        let renewal = self.renewal();
        let (renewal, why) = match renewal {
            Some(Ok(r)) => (Some(r), proxy.unavailable.clone()),
            Some(Err(e)) => (None, Some(format!("failed: {e}"))),
            None => (None, Some("proxy mode not run".into())),
        };
        push(
            format!("proxy CPU, {} mappings renewed", self.args.renewal_mappings),
            renewal.map(|r| r.renewal_cpu_pct),
            " %",
            "< 1 % of one core".into(),
            &|v| v < 1.0,
            why.clone(),
        );
        push(
            format!("proxy table, {} mappings", self.args.renewal_mappings),
            renewal.map(|r| r.rss_mapped_kib.saturating_sub(r.rss_ready_kib) as f64 / 1024.0),
            " MiB",
            "<= 1 MiB".into(),
            &|v| v <= 1.0,
            why,
        );
        push(
            "stripped binary".into(),
            Some(self.stripped as f64 / (1024.0 * 1024.0)),
            " MiB",
            "<= 4 MiB".into(),
            &|v| v <= 4.0,
            None,
        );
        targets
    }

    pub fn table(&self) -> String {
        let summaries = self.summaries();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "portproxy bench: kernel {}, {} softwire, {} round{} x {:.1} s throughput / {:.1} s latency / {:.1} s flood{}",
            self.kernel,
            self.args.softwire,
            self.args.rounds,
            if self.args.rounds == 1 { "" } else { "s" },
            self.args.seconds,
            self.args.latency_seconds,
            self.args.flood_seconds,
            if self.args.smoke { " (smoke)" } else { "" }
        );
        let _ = writeln!(t, "CPU placement: {}", self.placement.describe());
        let _ = writeln!(
            t,
            "load average before/after: {} / {} (other work on the machine shares these CPUs)",
            self.load[0], self.load[1]
        );
        let _ = writeln!(
            t,
            "generator: sendmmsg x{} over {} client tuples ({} ports on each of lan1, lan2); throughput and CPU figures from each mode's best round \
             (other load only lowers a round; medians in the JSON), latency and flood pooled over rounds",
            self.args.batch,
            2 * u32::from(self.args.ports_per_host),
            self.args.ports_per_host
        );
        let _ = writeln!(t, "fast path hook layouts: {}", self.layout_note);
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<9} {:>11} {:>11} {:>9} {:>8} {:>9} {:>10} {:>7} {:>7} {:>8} {:>8} {:>17} {:>12}",
            "mode",
            "deliv pps",
            "sent pps",
            "deliv/sent",
            "gen cpu",
            "sys ns/p",
            "daemon ns/p",
            "p50 us",
            "p99 us",
            "p999 us",
            "flood %",
            "RSS/HWM/load KiB",
            "BPF maps"
        );
        for s in &summaries {
            if let Some(why) = &s.unavailable {
                let _ = writeln!(t, "{:<9} {why}", s.name);
                continue;
            }
            let f0 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
            let f1 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0}%", v * 100.0));
            let mem = match (s.rss_kib, s.hwm_kib, s.load_hwm_kib) {
                (Some(r), Some(h), Some(l)) => format!("{r}/{h}/{l}"),
                _ => "-".into(),
            };
            let maps = match &s.bpf_maps {
                None => "-".into(),
                Some(Ok((names, _))) if names.is_empty() => "none".into(),
                Some(Ok((names, bytes))) => format!("{} B ({})", bytes, names.len()),
                Some(Err(_)) => "unavailable".into(),
            };
            let flood = s.flood_legit_pct.map_or("-".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                t,
                "{:<9} {:>11} {:>11} {:>9} {:>8} {:>9} {:>10} {:>7} {:>7} {:>8} {:>8} {:>17} {:>12}",
                s.name,
                f0(s.delivered_pps),
                f0(s.sent_pps),
                pct(s.delivered_of_sent),
                pct(s.generator_busy),
                f0(s.sys_ns_per_pkt),
                f0(s.daemon_ns_per_pkt),
                f1(s.p50_us),
                f1(s.p99_us),
                f1(s.p999_us),
                flood,
                mem,
                maps
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "bottleneck (deliv/sent >= 95 %: the path kept up, so the generator's rate is the limit):"
        );
        for s in summaries.iter().filter(|s| s.unavailable.is_none()) {
            let verdict = match (s.delivered_of_sent, s.generator_busy) {
                (Some(d), g) if d >= 0.95 => format!(
                    "generator-bound: {:.0}% of sent delivered, generator thread {:.0}% busy (in-kernel forwarding of its packets runs on its CPU)",
                    d * 100.0,
                    g.unwrap_or(0.0) * 100.0
                ),
                (Some(d), _) => format!(
                    "path-bound: {:.0}% of what the generator sent reached the CGN",
                    d * 100.0
                ),
                _ => "-".into(),
            };
            let _ = writeln!(t, "  {:<9} {verdict}", s.name);
        }
        let starved: Vec<String> = summaries
            .iter()
            .filter(|s| s.unavailable.is_none() && s.generator_busy.is_some_and(|g| g < 0.8))
            .map(|s| format!("{} {:.0}%", s.name, s.generator_busy.unwrap_or(0.0) * 100.0))
            .collect();
        if !starved.is_empty() {
            let _ = writeln!(
                t,
                "  note: the generator thread ran for only part of each window ({}): other processes took CPU {}, \
                 so absolute rates and tail latencies are understated/inflated; the same-run ratios still compare like with like",
                starved.join(", "),
                self.placement.lan
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "same-run ratios (best rounds; ratio of medians in brackets):"
        );
        for (label, _, shown) in self.ratios(&summaries) {
            let _ = writeln!(t, "  {label:<40} {shown}");
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "targets (latency: p99 over routing's p99; RSS: the highest VmHWM seen):"
        );
        for target in self.targets(&summaries) {
            let verdict = match target.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measurable",
            };
            let _ = writeln!(
                t,
                "  {:<34} {:<10} {:<12} {}",
                target.what, target.goal, target.shown, verdict
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "scale: {} client tuples ({} per LAN host), one request each from a raw socket, twice (new tuples, then the same again):",
            self.args.scale_tuples,
            self.args.scale_tuples / 2
        );
        for r in &self.results {
            match (&r.mode.unavailable, &r.scale) {
                (Some(why), _) => {
                    let _ = writeln!(t, "  {:<9} {why}", r.mode.name);
                }
                (None, Some(scale)) => {
                    let pass = |p: &ScalePass| {
                        format!(
                            "{}/{} at the CGN in {:.3} s ({:.0}/s), {} replies back",
                            p.delivered,
                            p.tuples,
                            p.relay_s,
                            if p.relay_s > 0.0 {
                                p.delivered as f64 / p.relay_s
                            } else {
                                0.0
                            },
                            p.replies
                        )
                    };
                    let _ = writeln!(
                        t,
                        "  {:<9} new: {}; known: {}",
                        r.mode.name,
                        pass(&scale.new),
                        pass(&scale.known)
                    );
                    if let Some(entries) = &scale.clients_entries {
                        let _ = writeln!(
                            t,
                            "            CLIENTS entries after: {}",
                            match entries {
                                Ok(n) => n.to_string(),
                                Err(e) => format!("unavailable ({e})"),
                            }
                        );
                    }
                    match &scale.aging {
                        Some(Ok(a)) => {
                            let _ = writeln!(
                                t,
                                "            aging (--timeout {}): {} -> {} entries{}, daemon CPU {:.2} ms meanwhile",
                                a.idle_timeout_s,
                                a.entries_before,
                                a.entries_after,
                                a.emptied_within_s
                                    .map_or(" (not empty after 10 s)".into(), |s| format!(
                                        " within {s:.1} s"
                                    )),
                                a.daemon_cpu_ns as f64 / 1e6
                            );
                        }
                        Some(Err(e)) => {
                            let _ = writeln!(t, "            aging: unavailable ({e})");
                        }
                        None => {}
                    }
                    let dropped: Vec<&String> = scale
                        .daemon_counters
                        .iter()
                        .filter(|c| c.contains("drop"))
                        .collect();
                    if !dropped.is_empty() {
                        let _ = writeln!(
                            t,
                            "            daemon drops: {}",
                            dropped
                                .iter()
                                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                                .collect::<Vec<_>>()
                                .join("; ")
                        );
                    }
                }
                (None, None) => {
                    let _ = writeln!(t, "  {:<9} not measured", r.mode.name);
                }
            }
        }
        let _ = writeln!(
            t,
            "  missing: the CLIENTS lookup rate and the exact aging sweep time need the daemon to expose them (it does not); \
             the numbers above are measured from outside (sink and LAN counters, bpftool, the daemon's CPU time)"
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "renewal: portproxy --mode proxy holding {} NAT-PMP mappings (lifetime {} s) of one host, which renews each at half its lifetime; {:.1} s windows:",
            self.args.renewal_mappings,
            renewal::LIFETIME_S,
            self.args.renewal_seconds
        );
        let _ = match self.renewal() {
            Some(Ok(r)) => writeln!(
                t,
                "  RSS {:.2} MiB ready, {:.2} MiB with the mappings ({:.0} bytes a mapping), VmHWM {:.2} MiB; \
                 CPU {:.2} % of one core idle, {:.2} % renewing {} in {:.1} s ({:.1}/s)",
                r.rss_ready_kib as f64 / 1024.0,
                r.rss_mapped_kib as f64 / 1024.0,
                r.bytes_per_mapping(),
                r.hwm_kib as f64 / 1024.0,
                r.idle_cpu_pct,
                r.renewal_cpu_pct,
                r.renewals,
                r.window_s,
                r.renewals_per_s
            ),
            Some(Err(e)) => writeln!(t, "  failed: {e}"),
            None => writeln!(t, "  not measured (proxy mode not run)"),
        };
        let _ = writeln!(
            t,
            "igd: portproxy as the LAN's IGD (the CGN speaks NAT-PMP), {} AddPortMapping calls from one control point, one at a time:",
            self.args.renewal_mappings
        );
        let _ = match self.igd() {
            Some(Ok(g)) => writeln!(
                t,
                "  round trip p50 {:.0} us, p99 {:.0} us; {:.0} calls/s; RSS {:.2} MiB before, {:.2} MiB with the mappings",
                g.p50_us,
                g.p99_us,
                g.calls_per_s,
                g.rss_ready_kib as f64 / 1024.0,
                g.rss_mapped_kib as f64 / 1024.0
            ),
            Some(Err(e)) => writeln!(t, "  failed: {e}"),
            None => writeln!(t, "  not measured (proxy mode not run)"),
        };
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "binary {}: {} bytes, stripped {} bytes; run took {:.0} s; raw numbers {}, chart {}",
            self.bin.display(),
            self.size,
            self.stripped,
            self.elapsed_s,
            self.args.out.join("bench.json").display(),
            self.args.out.join("bench.png").display()
        );
        t
    }

    pub fn json(&self) -> Value {
        let summaries = self.summaries();
        let opt = |v: Option<f64>| v.map_or(Value::Null, |v| json!(v));
        let tp_json = |t: &Throughput| {
            json!({
                "window_s": t.window_s,
                "delivered": t.delivered,
                "delivered_pps": t.pps(t.delivered),
                "sent": t.sent,
                "sent_pps": t.pps(t.sent),
                "send_blocked": t.send_blocked,
                "replies_at_generator": t.replies,
                "replies_at_sink": t.sink_replies,
                "per_second_delivered": t.per_second,
                "system_busy_ns": t.busy_ns,
                "per_cpu_busy_ns": t.per_cpu_busy_ns,
                "daemon_cpu_ns": t.daemon_cpu_ns,
                "generator_thread_cpu_ns": t.generator_cpu_ns,
                "responder_thread_cpu_ns": t.responder_cpu_ns,
                "cpe_udp_rcvbuf_errors": t.cpe_rcvbuf_errors,
                "cgn_udp_rcvbuf_errors": t.cgn_rcvbuf_errors,
            })
        };
        let probe_json =
            |p: &ProbeResult| json!({"sent": p.sent, "answered": p.answered, "rtts_ns": p.rtts_ns});
        let scale_json = |s: &Option<Scale>, why: &Option<String>| match (s, why) {
            (_, Some(why)) => json!({"unavailable": why}),
            (None, None) => json!({"unavailable": "not measured"}),
            (Some(s), None) => {
                let pass = |p: &ScalePass| {
                    json!({
                        "tuples": p.tuples, "sent": p.sent, "delivered": p.delivered, "replies_at_lan": p.replies,
                        "send_s": p.send_s, "relay_s": p.relay_s,
                        "delivered_per_s": if p.relay_s > 0.0 { json!(p.delivered as f64 / p.relay_s) } else { Value::Null },
                    })
                };
                json!({
                    "new_tuples": pass(&s.new),
                    "known_tuples": pass(&s.known),
                    "clients_entries": match &s.clients_entries {
                        Some(Ok(n)) => json!(n),
                        Some(Err(e)) => json!({"unavailable": e}),
                        None => Value::Null,
                    },
                    "clients_lookup_rate": {"unavailable": "the daemon does not expose CLIENTS lookups"},
                    "aging_sweep_s": {"unavailable": "the daemon does not expose its aging sweep time"},
                    "aging_from_outside": match &s.aging {
                        Some(Ok(a)) => json!({
                            "idle_timeout_s": a.idle_timeout_s, "entries_before": a.entries_before,
                            "entries_after": a.entries_after, "emptied_within_s": a.emptied_within_s,
                            "daemon_cpu_ns": a.daemon_cpu_ns,
                        }),
                        Some(Err(e)) => json!({"unavailable": e}),
                        None => Value::Null,
                    },
                    "daemon_counters": s.daemon_counters,
                })
            }
        };
        let mut modes = serde_json::Map::new();
        for (r, s) in self.results.iter().zip(&summaries) {
            let maps = match &s.bpf_maps {
                None if s.kind == "routing" || s.kind == "nft" => {
                    json!({"unavailable": "no daemon in this mode"})
                }
                None => {
                    json!({"unavailable": s.unavailable.clone().unwrap_or_else(|| "not read".into())})
                }
                Some(Ok((names, bytes))) => json!({"maps": names, "bytes_memlock": bytes}),
                Some(Err(e)) => json!({"unavailable": e}),
            };
            let summary = json!({
                "delivered_pps": opt(s.delivered_pps),
                "delivered_pps_median": opt(s.delivered_pps_median),
                "sent_pps": opt(s.sent_pps),
                "replies_pps": opt(s.replies_pps),
                "delivered_of_sent": opt(s.delivered_of_sent),
                "generator_busy": opt(s.generator_busy),
                "generator_busy_median": opt(s.generator_busy_median),
                "cpu_ns_per_pkt_system": opt(s.sys_ns_per_pkt),
                "cpu_ns_per_pkt_system_median": opt(s.sys_ns_per_pkt_median),
                "cpu_ns_per_pkt_daemon": opt(s.daemon_ns_per_pkt),
                "cpu_ns_per_pkt_daemon_median": opt(s.daemon_ns_per_pkt_median),
                "throughput_figures_from": "the round with the most delivered packets (foreign load only lowers a round); *_median over all rounds",
                "latency_p50_us": opt(s.p50_us),
                "latency_p99_us": opt(s.p99_us),
                "latency_p999_us": opt(s.p999_us),
                "latency_samples": s.latency_samples,
                "latency_lost": s.latency_lost,
                "flood_legit_pct": opt(s.flood_legit_pct),
                "flood_delivered_pps": opt(s.flood_delivered_pps),
                "rss_kib": s.rss_kib,
                "hwm_kib": s.hwm_kib,
                "load_hwm_kib": s.load_hwm_kib,
                "bpf_maps": maps,
            });
            let rounds: Vec<Value> = r
                .rounds
                .iter()
                .map(|round| {
                    json!({
                        "throughput": tp_json(&round.throughput),
                        "latency": probe_json(&round.latency),
                        "flood": {"probe": probe_json(&round.flood), "flood_from_lan2": tp_json(&round.flood_throughput)},
                        "rss_kib": round.rss_kib,
                        "hwm_kib": round.hwm_kib,
                        "load_hwm_kib": round.load_hwm_kib,
                        "daemon_counters": round.daemon_counters,
                        "leftover_capture_rule": round.leftover_rule,
                    })
                })
                .collect();
            modes.insert(
                r.mode.name.clone(),
                json!({
                    "kind": s.kind,
                    "available": s.unavailable.is_none(),
                    "unavailable_reason": s.unavailable,
                    "summary": summary,
                    "scale": scale_json(&r.scale, &s.unavailable),
                    "igd": r.igd.as_ref().map(|r| match r {
                        Ok(g) => json!({
                            "calls": g.calls,
                            "p50_us": g.p50_us,
                            "p99_us": g.p99_us,
                            "calls_per_s": g.calls_per_s,
                            "rss_ready_kib": g.rss_ready_kib,
                            "rss_mapped_kib": g.rss_mapped_kib,
                        }),
                        Err(e) => json!({"error": e}),
                    }),
                    "renewal": r.renewal.as_ref().map(|r| match r {
                        Ok(r) => json!({
                            "mappings": r.mappings,
                            "lifetime_s": renewal::LIFETIME_S,
                            "window_s": r.window_s,
                            "rss_ready_kib": r.rss_ready_kib,
                            "rss_mapped_kib": r.rss_mapped_kib,
                            "bytes_per_mapping": r.bytes_per_mapping(),
                            "hwm_kib": r.hwm_kib,
                            "idle_cpu_pct": r.idle_cpu_pct,
                            "renewal_cpu_pct": r.renewal_cpu_pct,
                            "renewals": r.renewals,
                            "renewals_per_s": r.renewals_per_s,
                        }),
                        Err(e) => json!({"error": e}),
                    }),
                    "rounds": rounds,
                }),
            );
        }
        let ratios: serde_json::Map<String, Value> = self
            .ratios(&summaries)
            .into_iter()
            .map(|(label, v, shown)| (label, json!({"value": opt(v), "shown": shown})))
            .collect();
        let targets: Vec<Value> = self
            .targets(&summaries)
            .into_iter()
            .map(|t| json!({"what": t.what, "goal": t.goal, "value": opt(t.value), "shown": t.shown, "met": t.met}))
            .collect();
        json!({
            "kernel": self.kernel,
            "smoke": self.args.smoke,
            "softwire": self.args.softwire.to_string(),
            "rounds": self.args.rounds,
            "seconds": {"throughput": self.args.seconds, "latency": self.args.latency_seconds, "flood": self.args.flood_seconds},
            "placement": {
                "generator_and_prober_cpu": self.placement.lan,
                "portproxy_cpu": self.placement.cpe,
                "responder_cpu": self.placement.cgn,
                "cpus_online": self.placement.online,
                "description": self.placement.describe(),
            },
            "generator": {"hosts": 2, "ports_per_host": self.args.ports_per_host, "batch": self.args.batch},
            "fast_path_layouts": self.layout_note,
            "binary": {"path": self.bin.display().to_string(), "size_bytes": self.size, "stripped_bytes": self.stripped},
            "modes": modes,
            "ratios": ratios,
            "targets": targets,
            "scale_tuples": self.args.scale_tuples,
            "elapsed_s": self.elapsed_s,
            "loadavg": {"start": self.load[0], "end": self.load[1]},
        })
    }

    pub fn write(&self) -> Result<()> {
        let table = self.table();
        print!("{table}");
        let out = &self.args.out;
        std::fs::write(out.join("bench.txt"), &table).context("writing bench.txt")?;
        let json = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(out.join("bench.json"), json).context("writing bench.json")?;
        super::chart::draw(&self.summaries(), &self.kernel, &out.join("bench.png"))
            .context("drawing bench.png")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), Some(500.0));
        assert_eq!(quantile(&v, 0.99), Some(990.0));
        assert_eq!(quantile(&v, 0.999), Some(999.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
