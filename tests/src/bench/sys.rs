//! What the kernel says about CPU time, memory, BPF maps and UDP drops.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::Netns;

/// Clock ticks per second of /proc/stat and /proc/PID/stat.
pub fn ticks_per_second() -> u64 {
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// Busy time (everything but idle and iowait) from /proc/stat, in ticks: the machine's
/// total and each CPU's.
#[derive(Debug, Clone, Default)]
pub struct CpuBusy {
    pub total: u64,
    pub per_cpu: Vec<u64>,
}

impl CpuBusy {
    pub fn read() -> Result<CpuBusy> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let mut busy = CpuBusy::default();
        for line in text.lines().filter(|l| l.starts_with("cpu")) {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default();
            let fields: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal (guest is inside user)
            let sum: u64 = fields.iter().take(8).sum();
            let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
            let value = sum.saturating_sub(idle);
            if name == "cpu" {
                busy.total = value;
            } else {
                busy.per_cpu.push(value);
            }
        }
        Ok(busy)
    }

    /// Busy nanoseconds since `earlier`: total and per CPU.
    pub fn since(&self, earlier: &CpuBusy) -> (u64, Vec<u64>) {
        let ns = 1_000_000_000 / ticks_per_second();
        (
            self.total.saturating_sub(earlier.total) * ns,
            self.per_cpu
                .iter()
                .zip(&earlier.per_cpu)
                .map(|(a, b)| a.saturating_sub(*b) * ns)
                .collect(),
        )
    }
}

/// utime + stime of a process (all its threads), in nanoseconds (tick resolution).
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    stat_cpu_ns(&text)
}

/// On-CPU time of every thread of process `pid`, in nanoseconds (scheduler accounting,
/// finer than utime + stime).
pub fn process_sched_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| {
            std::fs::read_to_string(task.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// On-CPU time of one of this process's threads, in nanoseconds (scheduler accounting).
pub fn thread_cpu_ns(tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn stat_cpu_ns(text: &str) -> Result<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields
        .get(11)
        .and_then(|f| f.parse().ok())
        .context("no utime")?;
    let stime: u64 = fields
        .get(12)
        .and_then(|f| f.parse().ok())
        .context("no stime")?;
    Ok((utime + stime) * (1_000_000_000 / ticks_per_second()))
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => bail!("no VmRSS/VmHWM in /proc/{pid}/status"),
    }
}

/// The `Udp:` counters of a namespace (InDatagrams, RcvbufErrors, ...).
pub fn udp_counters(ns: &Netns) -> Result<BTreeMap<String, u64>> {
    let text = ns
        .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?
        .context("reading /proc/net/snmp")?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp: lines in /proc/net/snmp");
    };
    Ok(names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect())
}

/// The BPF maps process `pid` holds (map ids from its /proc/PID/fdinfo), with their
/// `bytes_memlock` per `bpftool map show -j` run in its mount namespace: names and the sum.
pub fn bpf_maps(pid: u32) -> std::result::Result<(Vec<String>, u64), String> {
    let mut ids = std::collections::BTreeSet::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {dir}: {e}"))?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            ids.insert(id);
        }
    }
    if ids.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "bpftool", "map", "show", "-j"])
        .output()
        .map_err(|e| format!("cannot run nsenter/bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bpftool map show failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let maps: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("bpftool's JSON does not parse: {e}"))?;
    let mut names = Vec::new();
    let mut bytes = 0;
    for map in maps.as_array().into_iter().flatten() {
        if map
            .get("id")
            .and_then(|v| v.as_u64())
            .is_some_and(|id| ids.contains(&id))
        {
            names.push(
                map.get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("?")
                    .to_owned(),
            );
            bytes += map
                .get("bytes_memlock")
                .and_then(|b| b.as_u64())
                .unwrap_or(0);
        }
    }
    if names.len() != ids.len() {
        return Err(format!(
            "bpftool shows {} of the {} maps the daemon holds",
            names.len(),
            ids.len()
        ));
    }
    Ok((names, bytes))
}

/// Entries in the pinned `CLIENTS` map of the daemon `pid` (its mount namespace).
pub fn clients_entries(pid: u32, pin: &str) -> std::result::Result<u64, String> {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "bpftool",
            "map",
            "dump",
            "pinned",
            pin,
            "-j",
        ])
        .output()
        .map_err(|e| format!("cannot run nsenter/bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bpftool map dump pinned {pin}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("bpftool's JSON does not parse: {e}"))?;
    Ok(entries.as_array().map_or(0, |a| a.len() as u64))
}

/// The binary's size on disk and stripped (a stripped copy when it has symbols).
pub fn binary_sizes(bin: &Path, scratch: &Path) -> Result<(u64, u64)> {
    let size = std::fs::metadata(bin)
        .with_context(|| format!("reading {}", bin.display()))?
        .len();
    let copy = scratch.join("portproxy.stripped");
    std::fs::copy(bin, &copy).with_context(|| format!("copying {}", bin.display()))?;
    let status = Command::new("strip")
        .arg(&copy)
        .status()
        .context("running strip (binutils)")?;
    if !status.success() {
        bail!("strip {} failed", copy.display());
    }
    let stripped = std::fs::metadata(&copy)?.len();
    let _ = std::fs::remove_file(&copy);
    Ok((size, stripped))
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: release is NUL-terminated by the kernel.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The 1-minute load average (other work on the machine shows here).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_name() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(
            stat_cpu_ns(line).unwrap(),
            10 * (1_000_000_000 / ticks_per_second())
        );
    }
}
