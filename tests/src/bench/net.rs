//! The benchmark's own topology: two LAN hosts, the CPE, and the CGN with a fast responder
//! instead of miniupnpd (which would be the bottleneck). Namespaces are named
//! `ppb<pid>x<n>-<role>`, removed on drop and, when a killed run left them, at the next start.
//!
//! ```text
//!  lan1 192.168.1.2 ─┐  cpe                               cgn
//!                    ├─ br-lan 192.168.1.1   softwire ──── softwire 192.0.0.1   responder :5351
//!  lan2 192.168.1.3 ─┘         192.0.0.2     L2: veth pair / L3: TUN pair + forwarder
//! ```

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    CGN_SOFTWIRE_IP, CPE_SOFTWIRE_IP, LAN_GATEWAY, Netns, Softwire,
    tunpipe::{TunPipe, open_tun},
};

/// Namespace prefix of benchmark runs (the lab's is `ppt`).
pub const PREFIX: &str = "ppb";

/// The benchmark network. Dropping it stops the L3 forwarder and deletes the namespaces
/// (killing whatever still runs in them).
pub struct BenchNet {
    pub softwire: Softwire,
    pub prefix: String,
    pub dir: PathBuf,
    pipe: Option<TunPipe>,
    /// lan1, lan2, cpe, cgn.
    namespaces: Vec<Netns>,
}

impl BenchNet {
    pub fn build(softwire: Softwire) -> Result<BenchNet> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let prefix = format!(
            "{PREFIX}{}x{}-",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(prefix.trim_end_matches('-'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
        let mut net = BenchNet {
            softwire,
            prefix,
            dir,
            pipe: None,
            namespaces: Vec::new(),
        };
        for role in ["lan1", "lan2", "cpe", "cgn"] {
            let ns = Netns::create(format!("{}{role}", net.prefix), role)?;
            net.namespaces.push(ns);
        }
        net.wire().context("building the benchmark's links")?;
        Ok(net)
    }

    pub fn lan(&self, n: usize) -> &Netns {
        &self.namespaces[n - 1]
    }

    pub fn cpe(&self) -> &Netns {
        &self.namespaces[2]
    }

    pub fn cgn(&self) -> &Netns {
        &self.namespaces[3]
    }

    fn wire(&mut self) -> Result<()> {
        let cpe = self.cpe();
        crate::topology::wire_lan(cpe, [self.lan(1), self.lan(2)])?;
        let cgn = self.cgn();
        let pipe = match self.softwire {
            Softwire::L2 => {
                cpe.ip(&format!(
                    "link add softwire type veth peer name softwire netns {}",
                    cgn.name()
                ))?;
                cpe.ip(&format!("addr add {CPE_SOFTWIRE_IP}/29 dev softwire"))?;
                cgn.ip(&format!("addr add {CGN_SOFTWIRE_IP}/29 dev softwire"))?;
                None
            }
            Softwire::L3 => {
                let cpe_end = open_tun(cpe, "softwire")?;
                let cgn_end = open_tun(cgn, "softwire")?;
                cpe.ip(&format!(
                    "addr add {CPE_SOFTWIRE_IP} peer {CGN_SOFTWIRE_IP} dev softwire"
                ))?;
                cgn.ip(&format!(
                    "addr add {CGN_SOFTWIRE_IP} peer {CPE_SOFTWIRE_IP} dev softwire"
                ))?;
                Some(TunPipe::start(cpe_end, cgn_end)?)
            }
        };
        let has_pipe = pipe.is_some();
        cpe.ip("link set softwire up")?;
        cgn.ip("link set softwire up")?;
        cpe.ip(&match self.softwire {
            Softwire::L2 => format!("route replace default via {CGN_SOFTWIRE_IP} dev softwire"),
            Softwire::L3 => "route replace default dev softwire".to_owned(),
        })?;
        cgn.ip(&format!(
            "route add 192.168.1.0/24 via {CPE_SOFTWIRE_IP} dev softwire"
        ))?;
        debug_assert_eq!(has_pipe, self.softwire == Softwire::L3);
        self.pipe = pipe;
        Ok(())
    }

    /// Mode (d): what an admin would configure by hand. Conntrack un-NATs the replies.
    pub fn nft_dnat(&self, on: bool) -> Result<()> {
        let script = if on {
            format!(
                "table ip ppbench {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  \
                 ip daddr {LAN_GATEWAY} udp dport 5351 dnat to {CGN_SOFTWIRE_IP}:5351\n }}\n}}\n"
            )
        } else {
            "delete table ip ppbench\n".to_owned()
        };
        let path = self.dir.join("dnat.nft");
        std::fs::write(&path, script).with_context(|| format!("writing {path:?}"))?;
        let path = path.to_string_lossy().into_owned();
        self.cpe().run("nft", &["-f", &path])?;
        Ok(())
    }

    /// Removes the daemon's reply-capture rule if a daemon that was killed left it behind
    /// (it would hand routed replies to the CPE itself). Returns whether there was one.
    pub fn remove_leftover_capture_rule(&self) -> Result<bool> {
        let out = self.cpe().run("ip", &["rule", "show", "pref", "5351"])?;
        if out.stdout.is_empty() {
            return Ok(false);
        }
        self.cpe().ip("rule del pref 5351")?;
        Ok(true)
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        self.pipe = None;
        self.namespaces.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the namespaces and directories of benchmark runs whose process is gone.
fn remove_stale() {
    let stale = |name: &str| {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            return false;
        };
        pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists()
    };
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            drop(Netns::stale(name));
        }
    }
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if stale(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes whatever namespaces the benchmark process `pid` left (for a test that ran the
/// benchmark binary and saw it die). Returns their names.
pub fn remove_namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("{PREFIX}{pid}x");
    let mut removed = Vec::new();
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            removed.push(name.clone());
            drop(Netns::stale(name));
        }
    }
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    removed
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the syscall reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning a thread to CPU {cpu}"));
        }
    }
    Ok(())
}

/// The calling thread's id (for its CPU time in /proc/self/task).
pub fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Starts a thread inside namespace `ns`, pinned to `cpu`.
pub fn spawn_in<T: Send + 'static>(
    ns: &Netns,
    name: &str,
    cpu: usize,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let path = PathBuf::from("/run/netns").join(ns.name());
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {path:?}"))?;
            // SAFETY: plain syscall on a valid fd; changes only this thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into {path:?}"));
            }
            pin_to(cpu)?;
            f()
        })
        .with_context(|| format!("starting thread {name}"))
}

/// Waits for a thread started by [`spawn_in`], at most `timeout`.
pub fn join_within<T>(handle: JoinHandle<Result<T>>, timeout: Duration, what: &str) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    while !handle.is_finished() {
        if std::time::Instant::now() > deadline {
            bail!("{what} did not stop within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    match handle.join() {
        Ok(result) => result.with_context(|| what.to_owned()),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
