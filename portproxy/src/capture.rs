//! Reply capture for the source-preserving NAT-PMP/PCP relay.
//!
//! Requests leave for the CGN with the LAN client's own source address (sent
//! from a transparent socket, see `sockets::transparent_udp`), so the CGN
//! maps to that client and answers it directly. Those answers would be
//! forwarded to the client from the CGN's address, which libnatpmp rejects:
//! replies must come from the gateway the client asked. This policy-routing
//! rule makes UDP from the CGN's port 5351 arriving on the WAN interface
//! *local*, so the kernel delivers it to the transparent socket bound to the
//! client's address, and the relay re-sends it from the LAN address.
//!
//! It is installed on both data paths whenever NAT-PMP/PCP runs: the proxy and
//! the keeper ask the CGN as LAN hosts too, and on the fast path the programs
//! pass up whatever they find no client for; this rule keeps all of that on
//! the CPE, never forwarded to the LAN.
//!
//! Equivalent to:
//!   ip route replace local 0.0.0.0/0 dev lo table 5351
//!   ip rule add pref 5351 iif WAN from CGN ipproto udp sport 5351 lookup 5351

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use netlink_packet_route::IpProtocol;
use netlink_packet_route::route::{RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RulePortRange};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::config::Config;

/// Routing table and rule priority owned by portproxy.
pub const TABLE: u32 = 5351;
pub const PRIORITY: u32 = 5351;

/// The installed rule and route; `remove` takes them away again.
pub struct ReplyCapture {
    handle: Handle,
}

impl ReplyCapture {
    pub async fn install(handle: &Handle, cfg: &Config) -> Result<ReplyCapture> {
        // A previous run killed with SIGKILL leaves its rule behind: replace it.
        remove_rules(handle).await?;
        let lo = crate::netif::iface(handle, "lo")
            .await?
            .context("the loopback interface 'lo' is missing")?
            .index;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(lo)
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding 'local default dev lo table {TABLE}'"))?;
        let mut rule = handle
            .rule()
            .add()
            .v4()
            .priority(PRIORITY)
            .table_id(TABLE)
            .action(RuleAction::ToTable)
            .input_interface(cfg.wan.iface.clone())
            .source_prefix(cfg.cgn, 32);
        let port = RulePortRange {
            start: cfg.nat_pmp_port,
            end: cfg.nat_pmp_port,
        };
        rule.message_mut()
            .attributes
            .push(RuleAttribute::IpProtocol(IpProtocol::Udp));
        rule.message_mut()
            .attributes
            .push(RuleAttribute::SourcePortRange(port));
        rule.execute().await.with_context(|| {
            format!(
                "adding the policy-routing rule for the CGN's replies (needs a kernel with \
                 CONFIG_IP_MULTIPLE_TABLES, 4.17 or newer); 'ip rule add pref {PRIORITY} iif {} from {} \
                 ipproto udp sport {} lookup {TABLE}' shows the kernel's own error",
                cfg.wan.iface, cfg.cgn, cfg.nat_pmp_port
            )
        })?;
        Ok(ReplyCapture {
            handle: handle.clone(),
        })
    }

    pub async fn remove(self) -> Result<()> {
        remove_rules(&self.handle).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .build();
        // Already gone is fine: someone may have flushed the table.
        let _ = self.handle.route().del(route).execute().await;
        Ok(())
    }
}

async fn remove_rules(handle: &Handle) -> Result<()> {
    let rules: Vec<_> = handle
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .context("listing policy-routing rules")?;
    for rule in rules {
        if rule.attributes.contains(&RuleAttribute::Priority(PRIORITY)) {
            handle
                .rule()
                .del(rule)
                .execute()
                .await
                .context("removing a stale portproxy rule")?;
        }
    }
    Ok(())
}
