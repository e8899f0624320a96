//! A PCP client for the tests: crab_nat's, run from inside a namespace.

use std::{
    net::{IpAddr, Ipv4Addr},
    num::NonZeroU16,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use crab_nat::{InternetProtocol, PortMappingOptions, PortMappingType, TimeoutConfig, pcp};

use crate::Netns;

/// What the PCP server granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcpMapping {
    pub external_ip: IpAddr,
    pub external_port: u16,
    pub lifetime: u32,
    pub epoch: u32,
}

/// Sends a PCP MAP for TCP `internal_port` of `client` (the PCP client-IP field, normally
/// the sending host's own address) to `gateway`:5351 from a socket in `ns`, suggesting
/// `external_port`. crab_nat accepts only a response from `gateway`:5351 carrying its nonce.
/// Four tries, about 4 s in all.
pub fn pcp_map_tcp(
    ns: &Netns,
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    internal_port: u16,
    external_port: u16,
    lifetime: u32,
) -> Result<PcpMapping> {
    let what = || {
        format!(
            "PCP MAP TCP {client}:{internal_port} (external {external_port}) from {} to {gateway}",
            ns.role()
        )
    };
    let base = pcp::BaseMapRequest::new(
        gateway.into(),
        client.into(),
        InternetProtocol::Tcp,
        NonZeroU16::new(internal_port).context("internal port 0")?,
    );
    let options = PortMappingOptions {
        external_port: NonZeroU16::new(external_port),
        lifetime_seconds: Some(lifetime),
        timeout_config: Some(TimeoutConfig {
            initial_timeout: Duration::from_millis(250),
            max_retries: 3,
            max_retry_timeout: Some(Duration::from_secs(2)),
        }),
    };
    let mapping = ns
        .enter(|| {
            // The runtime's sockets are created on this thread, inside the namespace.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(pcp::port_mapping(base, None, None, options))
                .map_err(|failure| anyhow!("{failure}"))
        })?
        .with_context(what)?;
    let PortMappingType::Pcp { external_ip, .. } = mapping.mapping_type() else {
        unreachable!("pcp::port_mapping makes PCP mappings");
    };
    Ok(PcpMapping {
        external_ip,
        external_port: mapping.external_port().get(),
        lifetime: mapping.lifetime(),
        epoch: mapping.gateway_epoch(),
    })
}
