//! What a mapping changes on the router itself, in nftables tables of portproxy's own:
//! the forward filter's holes (`firewall`) and, when the router translates the LAN too
//! (double NAT), the DNAT from its WAN address to the LAN host (`local_nat`). Both tables
//! are replaced at start (after a crash) and removed at exit; their elements time out with
//! the mappings, so nothing outlives what the CGN holds even if the daemon dies.
//!
//! Driven through the `nftables` crate (MIT/Apache, the JSON API of `nft -j`, also used by
//! podman's netavark): one `nft` run per grant, delete or start, never per packet.
//! `rustables` (netlink, no `nft` needed) is GPL-3.0, which this MIT/Apache project cannot
//! take.

pub mod firewall;
pub mod local_nat;

use std::time::Duration;

use anyhow::Result;
use log::warn;
use nftables::batch::Batch;
use nftables::expr::{Elem, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::helper;
use nftables::schema::{Chain, NfListObject, Nftables, Table};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

async fn apply(nftables: &Nftables<'_>) -> Result<()> {
    helper::apply_ruleset_async(nftables)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `table inet NAME`.
fn table_object(name: &'static str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: name.into(),
        ..Table::default()
    })
}

/// A base chain `NAME` of `table inet TABLE` on `hook` at `prio`, policy accept.
fn base_chain(
    table: &'static str,
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: table.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

/// The size of a set or map for `max` mappings: twice that, since an expired element holds
/// its slot until the kernel's garbage collection, while the table may already take a new
/// mapping.
fn slots(max: usize) -> Option<u32> {
    Some(u32::try_from(max.saturating_mul(2)).unwrap_or(u32::MAX))
}

/// A set or map key `val`, with a timeout in seconds when one is given.
fn timed(val: Expression<'static>, timeout: Option<u32>) -> Expression<'static> {
    match timeout {
        Some(timeout) => Expression::Named(NamedExpression::Elem(Elem {
            val: Box::new(val),
            timeout: Some(timeout),
            expires: None,
            comment: None,
            counter: None,
        })),
        None => val,
    }
}

/// Deletes `table inet NAME` if it exists (stale from a killed run, or at exit).
async fn remove_table(name: &'static str) {
    let mut batch = Batch::new();
    // Adding first makes the delete succeed whether or not the table existed.
    batch.add(table_object(name));
    batch.delete(table_object(name));
    if let Err(e) = apply(&batch.to_nftables()).await {
        warn!("removing nftables table inet {name}: {e:#}");
    }
}

/// The ruleset as `nft -j list ruleset` prints it, read as plain JSON. The crate's typed
/// schema would fail on any expression it does not know, and its deserializers were 270 KB
/// of a 2.7 MiB MIPS build; the questions asked of it need a few fields of chains and rules.
pub async fn current_ruleset() -> Result<serde_json::Value, String> {
    let text = helper::get_current_ruleset_raw_async(helper::DEFAULT_NFT, helper::DEFAULT_ARGS)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("nft printed invalid JSON: {e}"))
}

/// The `kind` objects (`chain`, `rule`) of a ruleset listing.
fn objects<'a>(
    ruleset: &'a serde_json::Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |object| object.get(kind))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

/// An element's timeout in whole seconds, as nft takes it: rounded up, so that it never
/// ends before the mapping; `None` (until deleted) stays `None`.
fn timeout_secs(remaining: Option<Duration>) -> Option<u32> {
    remaining.map(|r| {
        let secs = r
            .as_secs()
            .saturating_add(u64::from(r.subsec_nanos() > 0))
            .max(1);
        u32::try_from(secs).unwrap_or(u32::MAX)
    })
}
