//! iroh's port mapper (n0-computer's `portmapper` crate, what an iroh endpoint maps its UDP
//! socket with) as a client, run from inside a namespace with one protocol enabled.

use std::{
    fmt,
    net::{IpAddr, SocketAddrV4},
    num::NonZeroU16,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use netwatch::interfaces::HomeRouter;
use portmapper::{Client, Config, ProbeOutput, Protocol};

use crate::Netns;

/// The one protocol the mapper may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrohProtocol {
    Upnp,
    Pcp,
    NatPmp,
}

impl fmt::Display for IrohProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IrohProtocol::Upnp => "UPnP",
            IrohProtocol::Pcp => "PCP",
            IrohProtocol::NatPmp => "NAT-PMP",
        })
    }
}

/// What the mapper found and got.
#[derive(Clone, Debug)]
pub struct IrohMapping {
    /// The gateway it asks (netwatch's `HomeRouter`, from the namespace's routes).
    pub gateway: IpAddr,
    /// The address it maps for.
    pub local_ip: Option<IpAddr>,
    /// Its probe of the three protocols (only the enabled one is probed).
    pub probe: ProbeOutput,
    /// The external address it reports.
    pub external: SocketAddrV4,
}

/// Has iroh's port mapper, in `ns` and with only `protocol` enabled, map UDP `local_port`
/// the way an iroh endpoint does: a probe, then the local port, then a wait (at most
/// `within` in all) for the external address it reports. The mapping is left in place (the
/// client's release on drop is not awaited).
pub fn iroh_map_udp(
    ns: &Netns,
    protocol: IrohProtocol,
    local_port: u16,
    within: Duration,
) -> Result<IrohMapping> {
    let what = || format!("iroh's port mapper ({protocol}) in {}", ns.role());
    let local_port = NonZeroU16::new(local_port).context("local port 0")?;
    ns.enter(|| {
        // The runtime, its tasks and their sockets stay on this thread, inside the namespace.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(map(protocol, local_port, within))
    })?
    .with_context(what)
}

async fn map(
    protocol: IrohProtocol,
    local_port: NonZeroU16,
    within: Duration,
) -> Result<IrohMapping> {
    let start = Instant::now();
    // What portmapper asks too (its `ip_and_gateway`).
    let home = HomeRouter::new().context("netwatch finds no default gateway")?;
    let client = Client::new(Config {
        enable_upnp: protocol == IrohProtocol::Upnp,
        enable_pcp: protocol == IrohProtocol::Pcp,
        enable_nat_pmp: protocol == IrohProtocol::NatPmp,
        protocol: Protocol::Udp,
    });
    // Without a probe the service trusts its (empty) last one for 5 s and, with UPnP off,
    // does not try at all: iroh's net_report probes first.
    let probe = tokio::time::timeout(within, client.probe())
        .await
        .map_err(|_| anyhow!("no probe result within {within:?}"))?
        .context("the port mapping service is gone")?
        .map_err(|e| anyhow!("probe failed: {e}"))?;
    let found = match protocol {
        IrohProtocol::Upnp => probe.upnp,
        IrohProtocol::Pcp => probe.pcp,
        IrohProtocol::NatPmp => probe.nat_pmp,
    };
    ensure!(
        found,
        "its probe did not find {protocol} at {} ({probe:?})",
        home.gateway
    );
    let mut external = client.watch_external_address();
    client.update_local_port(local_port);
    let left = within.saturating_sub(start.elapsed());
    let external = tokio::time::timeout(left, external.wait_for(Option::is_some))
        .await
        .map_err(|_| {
            anyhow!(
                "no external address within {within:?} (gateway {}, probe {probe:?})",
                home.gateway
            )
        })?
        .map(|address| address.expect("waited for Some"))
        .context("the port mapping service is gone")?;
    Ok(IrohMapping {
        gateway: home.gateway,
        local_ip: home.my_ip,
        probe,
        external,
    })
}
