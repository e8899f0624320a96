//! Loading, attaching, pinning and detaching the fast path.
//!
//! # Hook layout
//!
//! | direction (packets)                   | Ethernet WAN (veth, eth0.1)                                  | L3 softwire (ipip6, TUN)       |
//! |---------------------------------------|--------------------------------------------------------------|--------------------------------|
//! | LAN -> WAN (requests, M-SEARCH)       | `xdp_lan` on the LAN bridge, skb mode; `tc_lan_ingress` (TCX) behind it | `tc_lan_ingress` (TCX) only |
//! | WAN -> LAN (replies, NOTIFY)          | `xdp_wan` on the WAN, native (skb if the driver has none); `tc_wan_ingress` (TCX) behind it | `tc_wan_ingress` (TCX) only |
//!
//! Why:
//! - A bridge has only generic (skb) XDP, so `xdp_lan` runs in skb mode on `br-lan`. Native
//!   XDP on the bridge's ports was not chosen: an M-SEARCH is multicast and must still be
//!   flooded to the other LAN hosts, which a redirect at the port would swallow (XDP cannot
//!   clone); the port set changes at run time; and a native redirect into a veth WAN needs an
//!   XDP program or GRO on its peer, which the CPE does not own. In skb mode a redirect goes
//!   out through the WAN's normal transmit path: it works into any Ethernet device.
//! - `xdp_lan` gets the CGN's MAC from `bpf_fib_lookup`; while the neighbour is unresolved
//!   (or the route does not leave through the WAN) it defers to `tc_lan_ingress`, whose
//!   `bpf_redirect_neigh` resolves it. TC stays attached behind every XDP program and takes
//!   whatever XDP passes, so XDP can only make things faster, never break them.
//! - `xdp_wan` runs natively on an Ethernet WAN (veth and most NICs have it). A native
//!   redirect into the bridge fails (a bridge has no `ndo_xdp_xmit`; observed: tracepoint
//!   `xdp:xdp_redirect_err` with err=-95 EOPNOTSUPP, the client gets no answer), so native
//!   `xdp_wan` does what needs no redirect: it drops unsolicited, spoofed and malformed
//!   replies before an skb exists, and hands the replies to relay to
//!   `tc_wan_ingress` (`STAT_XDP_DEFERRED`). Where native XDP is refused (e.g. a VLAN WAN such
//!   as eth0.1) it runs in skb mode, where a redirect into the bridge works, and relays
//!   itself (`FLAG_XDP_WAN_REDIRECT`).
//! - Nothing XDP on an L3 softwire: XDP_REDIRECT into an L3 device does not work, generic
//!   XDP on one sees no Ethernet header and must not rewrite, and a packet from it needs a
//!   MAC header pushed (`bpf_skb_change_head`), which only TC can do.
//! - Cost and gain, observed in the lab (veth, 2 shared cores): generic XDP is skb-based like
//!   TC, so `xdp_lan` saves little per relayed packet; it sees every packet the bridge
//!   delivers upwards, including routed LAN traffic. TCP through the CPE with and without
//!   `xdp_lan` (9 runs each, 3 s): 9.5 vs 9.7 Gbit/s, within the noise of the machine. Native
//!   `xdp_wan` is where XDP gains: it drops unwanted replies before an skb is allocated.
//!
//! Attaching XDP tries native mode first and falls back to skb mode with one log line naming
//! the interface and the reason. XDP links die with their file descriptor, but an XDP
//! program attached through netlink (older aya fallback, `ip link set ... xdp`) outlives a
//! killed run: one of ours found attached is removed (netlink) and replaced; a foreign one,
//! or ours held by a live process's link, is reported and XDP is skipped on that device
//! (TC still carries everything). An XDP failure is never fatal for the same reason.
//!
//! TC: aya's `SchedClassifier::attach` uses TCX links on Linux >= 6.6, `cls_bpf` filters on
//! a `clsact` qdisc before. TCX links belong to this process's file descriptors, so a run
//! killed by SIGKILL leaves nothing attached; `cls_bpf` filters outlive the process, so
//! filters with our program names are removed before attaching.
//!
//! Pins: `CLIENTS`, `STATS`, `CONFIG` and `RATE` (BTF-typed: `bpftool map dump` prints field
//! names) under the pin directory (bpffs), replaced if a previous run left them, removed on
//! drop.
//! They are for inspection (`bpftool map dump pinned`, `portproxy stats`); a new run starts
//! with fresh maps.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, SchedClassifierLinkId, TcError},
        xdp::XdpLinkId,
    },
};
use log::{debug, info, warn};
use portproxy_common::FLAG_XDP_WAN_REDIRECT;

use super::{PROGRAMS, iface, load_program, maps, object, raise_memlock_limit};
use crate::cli::Hooks;
use crate::clock::boot_time;
use crate::config::Config;
use crate::datapath::ToDaemon;

/// Maps pinned for inspection.
const PINNED_MAPS: [&str; 4] = ["CLIENTS", "STATS", "CONFIG", "RATE"];
/// XDP programs: (LAN side, WAN side).
pub const XDP_PROGRAMS: [&str; 2] = ["xdp_lan", "xdp_wan"];
/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// One attached program.
struct Attachment {
    program: &'static str,
    iface: String,
    /// "tcx", "tc clsact", "native", "generic".
    mode: &'static str,
    link: Link,
}

enum Link {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

/// A running fast path. Dropping it detaches the programs and removes the pins.
pub struct FastPath {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    pins: Vec<PathBuf>,
    /// The programs' per-packet log (`-vv`), until `take_kernel_log`.
    kernel_log: Option<KernelLog>,
}

/// Where the programs' log records arrive (aya-log's ring buffer).
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Why an XDP attach in one mode failed.
enum XdpAttachError {
    /// This mode is not possible here (e.g. no native XDP in the driver): try another.
    Mode(String),
    /// Something else holds the hook: do not try another mode.
    Occupied(anyhow::Error),
}

impl FastPath {
    /// Loads the programs, configures them for `cfg`, attaches them (layout in the module
    /// doc) and pins the maps under `pin_dir`. Every error names the step, interface and
    /// program, so the caller can fall back to the socket relay with one line.
    /// `to_daemon`: what the programs leave to userspace.
    pub fn start(
        cfg: &Config,
        pin_dir: &Path,
        kernel_log: bool,
        to_daemon: ToDaemon,
    ) -> anyhow::Result<FastPath> {
        raise_memlock_limit();
        let mut map_config = maps::map_config(cfg, to_daemon)?;
        let mut ebpf = object::load(cfg.max_clients, kernel_log)?;
        let kernel_log = match kernel_log {
            true => Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .context("opening the programs' log (aya-log ring buffer)")?,
            ),
            false => None,
        };
        for name in PROGRAMS {
            load_program(&mut ebpf, name)?;
        }
        for name in XDP_PROGRAMS {
            load_xdp_program(&mut ebpf, name)?;
        }
        maps::write_config(
            ebpf.map_mut("CONFIG")
                .context("map CONFIG missing from the eBPF object")?,
            map_config,
        )?;
        let mut fast_path = FastPath {
            ebpf,
            attachments: Vec::new(),
            pins: Vec::new(),
            kernel_log,
        };
        fast_path.pin_maps(pin_dir)?;
        // TC first, WAN first: replies must be handled before requests leave, and whatever
        // XDP hands on must find TC there.
        for (name, iface) in [(PROGRAMS[0], &cfg.wan.iface), (PROGRAMS[1], &cfg.lan.iface)] {
            fast_path
                .attach_tc(name, iface)
                .with_context(|| format!("attaching {name} to {iface}"))?;
        }
        if cfg.hooks == Hooks::Tc {
            info!("fast path: TC only (--hooks tc)");
        } else if map_config.wan_is_l3 != 0 {
            info!(
                "fast path: no XDP on {}: it is an L3 device (XDP cannot redirect into it or \
                 rewrite on it); TC carries both directions",
                cfg.wan.iface
            );
        } else {
            let [xdp_lan, xdp_wan] = XDP_PROGRAMS;
            let native_first = cfg.hooks == Hooks::Auto;
            if let Some(mode) =
                fast_path.attach_xdp(xdp_wan, &cfg.wan.iface, cfg.wan.index, native_first)
            {
                if mode == "generic" {
                    // A redirect into the bridge works from skb mode: relay in XDP.
                    map_config.flags |= FLAG_XDP_WAN_REDIRECT;
                    maps::write_config(
                        fast_path
                            .ebpf
                            .map_mut("CONFIG")
                            .context("map CONFIG missing")?,
                        map_config,
                    )?;
                }
            }
            fast_path.attach_xdp(xdp_lan, &cfg.lan.iface, cfg.lan.index, native_first);
        }
        info!(
            "fast path: {} ({} WAN); maps pinned in {}",
            fast_path.hooks().join(", "),
            if map_config.wan_is_l3 != 0 {
                "L3"
            } else {
                "Ethernet"
            },
            pin_dir.display()
        );
        Ok(fast_path)
    }

    /// The grants the programs report, to be read by `forward_grants`.
    pub fn take_grants(&mut self) -> anyhow::Result<super::Grants> {
        let map = self
            .ebpf
            .take_map("GRANTS")
            .context("map GRANTS missing from the eBPF object")?;
        super::Grants::try_from(map).context("GRANTS is not a ring buffer")
    }

    /// The programs' log, to be read by `forward_kernel_log` (with `-vv` only).
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        self.kernel_log.take()
    }

    /// The hooks in use, e.g. "xdp_lan on br-lan (generic)", "tc_wan_ingress on softwire
    /// (tcx)", in the order they were attached.
    pub fn hooks(&self) -> Vec<String> {
        self.attachments
            .iter()
            .map(|a| format!("{} on {} ({})", a.program, a.iface, a.mode))
            .collect()
    }

    fn attach_tc(&mut self, name: &'static str, iface: &str) -> anyhow::Result<()> {
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
        let mode = if SchedClassifier::query_tcx(iface, TcAttachType::Ingress).is_ok() {
            "tcx"
        } else {
            "tc clsact"
        };
        self.attachments.push(Attachment {
            program: name,
            iface: iface.to_string(),
            mode,
            link: Link::Tc(link),
        });
        Ok(())
    }

    /// Attaches XDP program `name` to `iface`: native (if `native_first`), else skb mode.
    /// Returns the mode, or `None` (logged) when XDP cannot be used there: TC behind it
    /// carries the traffic.
    fn attach_xdp(
        &mut self,
        name: &'static str,
        iface: &str,
        ifindex: u32,
        native_first: bool,
    ) -> Option<&'static str> {
        let first = if native_first {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        let result = match self.attach_xdp_mode(name, iface, ifindex, first) {
            Ok(link) if native_first => Ok((link, "native")),
            Ok(link) => Ok((link, "generic")),
            Err(XdpAttachError::Mode(why)) if !native_first => Err(anyhow!("skb mode: {why}")),
            Err(XdpAttachError::Mode(why)) => {
                info!(
                    "XDP native mode unsupported on {iface} ({why}); falling back to skb (generic) mode for {name}"
                );
                match self.attach_xdp_mode(name, iface, ifindex, XdpMode::Skb) {
                    Ok(link) => Ok((link, "generic")),
                    Err(XdpAttachError::Mode(why)) => Err(anyhow!("skb mode: {why}")),
                    Err(XdpAttachError::Occupied(e)) => Err(e),
                }
            }
            Err(XdpAttachError::Occupied(e)) => Err(e),
        };
        match result {
            Ok((link, mode)) => {
                self.attachments.push(Attachment {
                    program: name,
                    iface: iface.to_string(),
                    mode,
                    link: Link::Xdp(link),
                });
                Some(mode)
            }
            Err(e) => {
                warn!("{name} not attached to {iface}: {e:#}; TC carries that direction alone");
                None
            }
        }
    }

    /// One attach attempt in `mode`; a leftover of ours (netlink-attached, outliving a killed
    /// run) is removed and the attach retried once.
    fn attach_xdp_mode(
        &mut self,
        name: &'static str,
        iface: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<XdpLinkId, XdpAttachError> {
        for attempt in 0..2 {
            let program: &mut Xdp = self
                .ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| XdpAttachError::Occupied(anyhow!("program {name} missing")))?;
            let err = match program.attach_to_if_index(ifindex, mode) {
                Ok(link) => return Ok(link),
                Err(e) => e,
            };
            let errno = match &err {
                ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
                _ => None,
            };
            // EBUSY: a program is attached in this mode; EEXIST: one in the other mode.
            if attempt == 0 && matches!(errno, Some(libc::EBUSY | libc::EEXIST)) {
                remove_stale_xdp(iface, ifindex).map_err(XdpAttachError::Occupied)?;
                continue;
            }
            return Err(XdpAttachError::Mode(error_chain(&err)));
        }
        Err(XdpAttachError::Occupied(anyhow!(
            "the XDP hook of {iface} stays busy after removing a stale program"
        )))
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

    /// Removes `CLIENTS` entries idle for longer than `max_idle` (e.g. the pending timeout),
    /// recounts each client address's entries in `RATE` and counts the entries the LRU
    /// evicted (`STAT_EVICTED`); call it periodically. Returns how many were removed.
    pub fn expire_idle_clients(&mut self, max_idle: Duration) -> anyhow::Result<usize> {
        let sweep = maps::expire_clients(&mut self.ebpf, boot_time(), max_idle)?;
        if sweep.removed > 0 {
            debug!(
                "fast path: {} idle client entr{} removed",
                sweep.removed,
                if sweep.removed == 1 { "y" } else { "ies" }
            );
        }
        if sweep.evicted > 0 {
            warn!(
                "fast path: the client table was full: the kernel evicted {} entr{} of clients \
                 waiting for a reply (raise --max-clients; one address holds at most {})",
                sweep.evicted,
                if sweep.evicted == 1 { "y" } else { "ies" },
                portproxy_common::CLIENT_QUOTA
            );
        }
        Ok(sweep.removed)
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        // Reverse order: XDP first (its deferrals need TC), then LAN before WAN (no request
        // leaves whose reply would then miss the WAN program).
        for Attachment {
            program: name,
            iface,
            link,
            ..
        } in self.attachments.drain(..).rev()
        {
            let program = self.ebpf.program_mut(name);
            let detached = match link {
                Link::Tc(link) => program
                    .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
                    .map(|p| p.detach(link)),
                Link::Xdp(link) => program
                    .and_then(|p| <&mut Xdp>::try_from(p).ok())
                    .map(|p| p.detach(link)),
            };
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

/// Loads one XDP program (runs the verifier).
pub fn load_xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    program
        .load()
        .with_context(|| format!("loading program {name} into the kernel (verifier)"))?;
    Ok(program)
}

/// `err` and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The name of loaded program `id`, if it can be found.
fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

/// Removes XDP programs of ours (by name) that a previous run left attached to `ifindex`
/// through netlink. A foreign program, or ours held by a live process's BPF link, is an
/// error naming it.
fn remove_stale_xdp(iface: &str, ifindex: u32) -> anyhow::Result<()> {
    let attached = iface::xdp_attached(ifindex)
        .with_context(|| format!("querying the XDP programs attached to {iface}"))?;
    for found in attached {
        let mode = if found.mode == iface::XDP_FLAGS_SKB_MODE {
            "generic"
        } else {
            "native"
        };
        let name = program_name(found.prog_id).unwrap_or_else(|| "?".into());
        if !XDP_PROGRAMS.contains(&name.as_str()) {
            bail!(
                "{iface} already has another XDP program ({name}, id {}, {mode} mode); \
                 remove it (ip link set dev {iface} xdp off) to use XDP here",
                found.prog_id
            );
        }
        match iface::xdp_detach_netlink(ifindex, found.mode) {
            Ok(()) => warn!(
                "removed a stale {name} (program id {}, {mode} mode) from {iface}: a previous \
                 run left it attached; replacing it",
                found.prog_id
            ),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => bail!(
                "{name} (program id {}) is attached to {iface} through a link of a live \
                 process, probably another portproxy: stop it first",
                found.prog_id
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "removing the stale {name} (program id {}) from {iface}",
                        found.prog_id
                    )
                });
            }
        }
    }
    Ok(())
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
