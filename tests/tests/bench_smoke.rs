//! The benchmark's short run: `bench --smoke` builds its namespaces, measures every mode once
//! and writes bench.json (every mode, every metric) and a non-empty bench.png. Needs root and
//! PORTPROXY_BIN (`cargo xtask test` sets both up).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Against a hung run, not a speed check: a smoke run takes 70-80 s on two busy cores.
const TIMEOUT: Duration = Duration::from_secs(150);

const MODES: [&str; 5] = ["routing", "sockets", "fast", "nft", "proxy"];
const METRICS: [&str; 14] = [
    "delivered_pps",
    "sent_pps",
    "delivered_of_sent",
    "cpu_ns_per_pkt_system",
    "cpu_ns_per_pkt_daemon",
    "latency_p50_us",
    "latency_p99_us",
    "latency_p999_us",
    "flood_legit_pct",
    "flood_delivered_pps",
    "rss_kib",
    "hwm_kib",
    "load_hwm_kib",
    "bpf_maps",
];

/// Removes the output directory, and whatever namespaces a killed or failed run left.
struct Cleanup {
    out: PathBuf,
    pid: Option<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let left = tests::bench::remove_namespaces_of(pid);
            if !left.is_empty() {
                eprintln!("removed namespaces the benchmark left: {left:?}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

#[test]
fn bench_smoke_writes_every_mode_and_metric() -> Result<()> {
    let out = std::env::temp_dir().join(format!("ppbench-smoke-{}", std::process::id()));
    let mut cleanup = Cleanup {
        out: out.clone(),
        pid: None,
    };
    std::fs::create_dir_all(&out)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the bench binary")?;
    cleanup.pid = Some(child.id());
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    let shown = format!("--- stdout\n{stdout}--- stderr\n{stderr}---");
    match status {
        None => bail!("bench --smoke did not finish within {TIMEOUT:?}\n{shown}"),
        Some(s) if !s.success() => bail!("bench --smoke failed ({s})\n{shown}"),
        Some(_) => eprintln!("{stdout}"),
    }

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("bench.json")).context("reading bench.json")?,
    )
    .context("bench.json does not parse")?;
    for key in [
        "kernel",
        "placement",
        "binary",
        "ratios",
        "targets",
        "modes",
    ] {
        if json.get(key).is_none() {
            bail!("bench.json has no {key:?}\n{json:#}");
        }
    }
    let modes = json["modes"]
        .as_object()
        .context("modes is not an object")?;
    for mode in MODES {
        // The fast path may be measured once per hook layout: `fast` or `fast:<layout>`.
        let found: Vec<(&String, &Value)> = modes
            .iter()
            .filter(|(name, _)| *name == mode || name.starts_with(&format!("{mode}:")))
            .collect();
        if found.is_empty() {
            bail!(
                "bench.json has no mode {mode} (has {:?})",
                modes.keys().collect::<Vec<_>>()
            );
        }
        for (name, value) in found {
            let summary = &value["summary"];
            for metric in METRICS {
                if summary.get(metric).is_none() {
                    bail!("mode {name} has no metric {metric}: {summary:#}");
                }
            }
            if value.get("scale").is_none() {
                bail!("mode {name} has no scale result");
            }
            match value["available"].as_bool() {
                Some(true) => {
                    if !summary["delivered_pps"]
                        .as_f64()
                        .is_some_and(|pps| pps > 0.0)
                    {
                        bail!("mode {name} delivered nothing: {summary:#}");
                    }
                    if !summary["latency_p50_us"].is_number() {
                        bail!("mode {name} has no latency: {summary:#}");
                    }
                }
                Some(false) => {
                    if !value["unavailable_reason"].is_string() {
                        bail!("mode {name} is unavailable without a reason");
                    }
                }
                None => bail!("mode {name} does not say whether it was available"),
            }
        }
    }
    let renewal = &modes["proxy"]["renewal"];
    if !(renewal["renewals"].as_u64().is_some_and(|n| n > 0)
        && renewal["rss_mapped_kib"].as_u64().is_some_and(|k| k > 0)
        && renewal["renewal_cpu_pct"].is_number())
    {
        bail!("the proxy's renewal measurement is missing or failed: {renewal:#}");
    }
    let igd = &modes["proxy"]["igd"];
    if !(igd["calls_per_s"].as_f64().is_some_and(|r| r > 0.0) && igd["p99_us"].is_number()) {
        bail!("the IGD measurement is missing or failed: {igd:#}");
    }
    let png = std::fs::metadata(out.join("bench.png")).context("no bench.png")?;
    if png.len() == 0 {
        bail!("bench.png is empty");
    }
    let table = std::fs::read_to_string(out.join("bench.txt")).context("no bench.txt")?;
    if !table.contains("same-run ratios") || !table.contains("targets") {
        bail!("bench.txt lacks the ratios or targets:\n{table}");
    }
    Ok(())
}

fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}
