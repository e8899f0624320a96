//! Loading, attaching, pinning and detaching the fast path.
//!
//! Attachments: TC ingress of the WAN device (`tc_wan_ingress`) and of the LAN device
//! (`tc_lan_ingress`), through aya's `SchedClassifier::attach`: TCX links on Linux >= 6.6,
//! `cls_bpf` filters on a `clsact` qdisc before. TCX links belong to this process's file
//! descriptors, so a run killed by SIGKILL leaves nothing attached; `cls_bpf` filters outlive
//! the process, so filters with our program names are removed before attaching.
//!
//! Pins: `CLIENTS`, `STATS` and `CONFIG` under the pin directory (bpffs), replaced if a
//! previous run left them, removed on drop. They are for inspection (`bpftool map dump
//! pinned`, `portproxy stats`); a new run starts with fresh maps.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, SchedClassifierLinkId, TcError},
    },
};
use log::{debug, info, warn};

use super::{EBPF_OBJECT, PROGRAMS, boot_time, load_program, maps, raise_memlock_limit};
use crate::config::Config;

/// Maps pinned for inspection.
const PINNED_MAPS: [&str; 3] = ["CLIENTS", "STATS", "CONFIG"];
/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A running fast path. Dropping it detaches the programs and removes the pins.
pub struct FastPath {
    ebpf: Ebpf,
    links: Vec<(&'static str, String, SchedClassifierLinkId)>,
    pins: Vec<PathBuf>,
}

impl FastPath {
    /// Loads the programs, configures them for `cfg`, attaches them and pins the maps under
    /// `pin_dir`. Every error names the step, interface and program, so the caller can fall
    /// back to the socket relay with one line.
    pub fn start(cfg: &Config, pin_dir: &Path) -> anyhow::Result<FastPath> {
        raise_memlock_limit();
        let map_config = maps::map_config(cfg)?;
        let mut ebpf = Ebpf::load(EBPF_OBJECT).context(
            "loading the embedded eBPF object (creating its maps needs root or CAP_BPF)",
        )?;
        for name in PROGRAMS {
            load_program(&mut ebpf, name)?;
        }
        maps::write_config(
            ebpf.map_mut("CONFIG")
                .context("map CONFIG missing from the eBPF object")?,
            map_config,
        )?;
        let mut fast_path = FastPath {
            ebpf,
            links: Vec::new(),
            pins: Vec::new(),
        };
        fast_path.pin_maps(pin_dir)?;
        for (name, iface) in [(PROGRAMS[0], &cfg.wan.iface), (PROGRAMS[1], &cfg.lan.iface)] {
            fast_path
                .attach(name, iface)
                .with_context(|| format!("attaching {name} to {iface}"))?;
        }
        info!(
            "fast path: tc_lan_ingress on {} and tc_wan_ingress on {} ({} WAN), maps pinned in {}",
            cfg.lan.iface,
            cfg.wan.iface,
            if map_config.wan_is_l3 != 0 {
                "L3"
            } else {
                "Ethernet"
            },
            pin_dir.display()
        );
        Ok(fast_path)
    }

    fn attach(&mut self, name: &'static str, iface: &str) -> anyhow::Result<()> {
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).context("adding the clsact qdisc"),
        }
        remove_stale_filters(iface, name);
        refuse_if_attached(iface, name)?;
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        let link = program.attach(iface, TcAttachType::Ingress)?;
        self.links.push((name, iface.to_string(), link));
        Ok(())
    }

    fn pin_maps(&mut self, pin_dir: &Path) -> anyhow::Result<()> {
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
        for name in PINNED_MAPS {
            let path = pin_dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => warn!(
                    "replaced a stale pin {} (a previous run did not stop cleanly)",
                    path.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing the stale pin {}", path.display()));
                }
            }
            let map = self
                .ebpf
                .map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))?;
            map.pin(&path)
                .with_context(|| format!("pinning {name} at {}", path.display()))?;
            self.pins.push(path);
        }
        Ok(())
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> anyhow::Result<maps::Counters> {
        maps::Counters::read(self.ebpf.map("STATS").context("map STATS missing")?)
    }

    /// Removes `CLIENTS` entries idle for longer than `max_idle` (e.g. the pending timeout);
    /// call it periodically. Returns how many were removed.
    pub fn expire_idle_clients(&mut self, max_idle: Duration) -> anyhow::Result<usize> {
        let map = self
            .ebpf
            .map_mut("CLIENTS")
            .context("map CLIENTS missing")?;
        let removed = maps::expire_clients(map, boot_time(), max_idle)?;
        if removed > 0 {
            debug!(
                "fast path: {removed} idle client entr{} removed",
                if removed == 1 { "y" } else { "ies" }
            );
        }
        Ok(removed)
    }

    /// Rewrites `CONFIG` after an address or interface change (the attachments stay: a
    /// changed interface *index* needs a restart of the fast path).
    pub fn update_config(&mut self, cfg: &Config) -> anyhow::Result<()> {
        let value = maps::map_config(cfg)?;
        maps::write_config(
            self.ebpf.map_mut("CONFIG").context("map CONFIG missing")?,
            value,
        )
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        // LAN first: no request leaves whose reply would then miss the WAN program.
        for (name, iface, link) in self.links.drain(..).rev() {
            let detached = self
                .ebpf
                .program_mut(name)
                .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
                .map(|p| p.detach(link));
            match detached {
                Some(Ok(())) => debug!("detached {name} from {iface}"),
                Some(Err(e)) => warn!("detaching {name} from {iface}: {e}"),
                None => warn!("detaching {name} from {iface}: program not found"),
            }
        }
        for pin in self.pins.drain(..) {
            if let Err(e) = fs::remove_file(&pin) {
                warn!("removing the pin {}: {e}", pin.display());
            }
        }
    }
}

/// `cls_bpf` filters named like our programs: a run killed before it could detach them
/// (kernels without TCX). Nothing to remove is the normal case.
fn remove_stale_filters(iface: &str, name: &str) {
    match tc::qdisc_detach_program(iface, TcAttachType::Ingress, name) {
        Ok(()) => {
            warn!("removed a stale {name} tc filter from {iface} (a previous run was killed)")
        }
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => debug!("looking for stale {name} tc filters on {iface}: {e}"),
    }
}

/// A TCX attachment of a program with our name belongs to a live process (TCX links die
/// with their owner): another portproxy. Two would relay every packet twice.
fn refuse_if_attached(iface: &str, name: &str) -> anyhow::Result<()> {
    let Ok((_, programs)) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress) else {
        return Ok(()); // no TCX on this kernel: the netlink filters were handled above
    };
    for program in programs {
        if program.name_as_str() == Some(name) {
            bail!(
                "{name} (program id {}) is already attached to {iface} by another process, \
                 probably another portproxy: stop it first",
                program.id()
            );
        }
    }
    Ok(())
}

/// Mounts bpffs on /sys/fs/bpf when the pin directory is below it and nothing is mounted
/// there yet (a fresh machine); any other pin directory must already be on a bpffs.
fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    let sys_fs_bpf = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(sys_fs_bpf) && !is_bpffs(sys_fs_bpf) {
        let target = CString::new("/sys/fs/bpf").expect("no NUL");
        let fstype = CString::new("bpf").expect("no NUL");
        let options = CString::new("mode=0700").expect("no NUL");
        // SAFETY: valid NUL-terminated strings; mount(2) does not keep the pointers.
        let ret = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
        }
        info!("mounted bpffs on /sys/fs/bpf");
    }
    let mut existing = pin_dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if !is_bpffs(existing) {
        bail!(
            "{} is not on a BPF filesystem (mount -t bpf bpf {})",
            pin_dir.display(),
            existing.display()
        );
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-parameter; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    ret == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::Side;

    fn env<T: std::str::FromStr>(name: &str, default: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .parse()
            .unwrap()
    }

    fn ifindex(name: &str) -> u32 {
        let c = CString::new(name).unwrap();
        // SAFETY: NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(index, 0, "no interface {name}");
        index
    }

    /// Manual lab harness: run inside the CPE's namespace, e.g.
    /// `ip netns exec fp-cpe cargo test -p portproxy fastpath::loader::tests::lab -- --ignored --nocapture`
    /// with FP_LAN / FP_WAN / FP_LAN_ADDR / FP_WAN_ADDR / FP_CGN / FP_SECONDS / FP_PIN_DIR.
    /// Starts the fast path, prints the counters every second, ages entries, stops.
    #[test]
    #[ignore = "manual: needs root and a lab topology"]
    fn lab() {
        let lan: String = env("FP_LAN", "br-lan");
        let wan: String = env("FP_WAN", "softwire");
        let cfg = Config {
            lan: Side {
                index: ifindex(&lan),
                iface: lan,
                addr: env("FP_LAN_ADDR", "192.168.1.1"),
            },
            wan: Side {
                index: ifindex(&wan),
                iface: wan,
                addr: env("FP_WAN_ADDR", "192.0.0.2"),
            },
            cgn: env::<Ipv4Addr>("FP_CGN", "192.0.0.1"),
            nat_pmp: true,
            upnp_udp: true,
            upnp_tcp: false,
            nat_pmp_port: 5351,
            ssdp_port: 1900,
            http_ports: [0, 0],
            pending_timeout: Duration::from_secs(env("FP_IDLE", "30")),
        };
        let pin_dir = PathBuf::from(env::<String>("FP_PIN_DIR", super::super::DEFAULT_PIN_DIR));
        let seconds: u64 = env("FP_SECONDS", "20");
        let mut fast_path = FastPath::start(&cfg, &pin_dir).unwrap_or_else(|e| panic!("{e:#}"));
        for name in PINNED_MAPS {
            assert!(pin_dir.join(name).exists(), "{name} pinned");
        }
        println!("started; pins in {}", pin_dir.display());
        for _ in 0..seconds {
            std::thread::sleep(Duration::from_secs(1));
            let expired = fast_path.expire_idle_clients(cfg.pending_timeout).unwrap();
            let counters = fast_path.stats().unwrap();
            let moved: Vec<String> = counters
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            println!(
                "[{:?}] {} (expired {expired})",
                boot_time(),
                moved.join(", ")
            );
        }
        drop(fast_path);
        for name in PINNED_MAPS {
            assert!(!pin_dir.join(name).exists(), "{name} unpinned on drop");
        }
        println!("stopped; pins removed");
    }
}
