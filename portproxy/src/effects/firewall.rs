//! Firewall holes for granted mappings, in an nftables table of portproxy's own.
//!
//! With DS-Lite the CPE does no NAT, so a connection the CGN forwards down the
//! softwire to a mapped LAN host meets the CPE's forward filter as a new
//! WAN-to-LAN connection, which OpenWrt's fw4 rejects and a Debian `policy drop`
//! forward chain drops.
//!
//! nftables runs every base chain on a hook, table after table, by priority: an
//! `accept` ends only its own base chain, while a `drop` anywhere is final. So no
//! table of portproxy's own can overrule another table's drop; only a rule in the
//! dropping chain can let a packet through. The design therefore splits the work:
//!
//! - portproxy owns `table inet portproxy`: the set `holes` of
//!   `ip daddr . meta l4proto . th dport` elements, each with a timeout equal to
//!   the mapping's remaining lifetime (so holes close by themselves, even if the
//!   daemon dies), and a forward chain at priority `filter - 1` (before fw4's and
//!   Debian's filter chains) that sets the mark bit [`HOLE_MARK`] on new
//!   connections from the WAN interface to a hole, and clears it on everything
//!   else from the WAN interface (so nothing arrives pre-marked).
//! - the router's firewall accepts that mark with one rule of its own, e.g.
//!   `meta mark & 0x01000000 == 0x01000000 accept` at the top of fw4's forward
//!   chain (OpenWrt: an include in `/usr/share/nftables.d/chain-pre/forward/`),
//!   or in the Debian forward chain. portproxy checks for such a rule at start
//!   and says so when it is missing.
//!
//! The table is driven through the `nftables` crate, as `effects` says.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{Context, Result};
use log::{info, warn};
use nftables::batch::Batch;
use nftables::expr::{CT, Expression, MetaKey, NamedExpression};
use nftables::schema::{
    Element, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue,
};
use nftables::stmt::{Mangle, Match, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};

use super::{
    apply, base_chain, current_ruleset, meta, objects, payload, remove_table, slots, table_object,
    timed, timeout_secs,
};
use crate::cli::FirewallMode;
use crate::mapping::Key;

/// portproxy's table (`nft list table inet portproxy`).
pub const TABLE: &str = "portproxy";
const SET: &str = "holes";
const CHAIN: &str = "forward";
/// One bit of the packet mark, set on a new connection to a hole. Outside the
/// bits OpenWrt's mwan3 (0x3f00) and pbr (0x00ff0000) use by default.
pub const HOLE_MARK: u32 = 0x0100_0000;
/// fw4's and Debian's filter chains run at priority 0 (`filter`).
const PRIORITY: i32 = -1;

/// portproxy's nftables table, installed for as long as the daemon runs.
pub struct Firewall {
    wan_iface: String,
}

impl Firewall {
    /// Installs the table for `mode`, replacing one a previous run left behind;
    /// `None` when holes are off (`off`, or `auto` with a forward path that drops nothing).
    pub async fn install(
        mode: FirewallMode,
        wan_iface: &str,
        max_holes: usize,
    ) -> Result<Option<Firewall>> {
        if mode == FirewallMode::Off {
            remove_table(TABLE).await;
            return Ok(None);
        }
        let ruleset = match current_ruleset().await {
            Ok(ruleset) => ruleset,
            Err(e) if mode == FirewallMode::Auto => {
                warn!("firewall: cannot read the nftables ruleset ({e}); no holes");
                return Ok(None);
            }
            Err(e) => {
                return Err(anyhow::anyhow!("{e}"))
                    .context("reading the nftables ruleset (--firewall off runs without holes)");
            }
        };
        let dropping = forward_chains_that_drop(&ruleset);
        if mode == FirewallMode::Auto && dropping.is_empty() {
            info!(
                "firewall: no forward chain drops by default; no holes needed (--firewall nft opens them anyway)"
            );
            remove_table(TABLE).await;
            return Ok(None);
        }
        let firewall = Firewall {
            wan_iface: wan_iface.to_string(),
        };
        remove_table(TABLE).await;
        apply(&firewall.table(max_holes))
            .await
            .context("creating nftables table inet portproxy")?;
        if !dropping.is_empty() && !accepts_hole_mark(&ruleset) {
            warn!(
                "firewall: the forward chain(s) {} drop new connections and none accepts portproxy's mark: \
                 add `meta mark & {HOLE_MARK:#010x} == {HOLE_MARK:#010x} accept` to the top of the forward chain \
                 (OpenWrt fw4: a file in /usr/share/nftables.d/chain-pre/forward/), or the holes stay shut",
                dropping.join(", ")
            );
        }
        info!(
            "firewall: holes in nftables table inet {TABLE}, marked {HOLE_MARK:#010x} for the forward chain"
        );
        Ok(Some(firewall))
    }

    /// Opens (or re-times) the hole for `key` for `remaining` (`None`: until
    /// closed). The element is added, deleted and added again with its new
    /// timeout in one transaction: an `add` alone leaves an existing element's
    /// timeout as it was.
    pub async fn open(&self, key: &Key, remaining: Option<Duration>) -> Result<()> {
        let timeout = timeout_secs(remaining);
        let mut batch = Batch::new();
        batch.add(element(key, None));
        batch.delete(element(key, None));
        batch.add(element(key, timeout));
        apply(&batch.to_nftables())
            .await
            .with_context(|| format!("opening the firewall for {}", describe(key)))
    }

    /// Closes the hole for `key` now (a delete). One that has timed out already is no error.
    pub async fn close(&self, key: &Key) -> Result<()> {
        let mut batch = Batch::new();
        batch.add(element(key, Some(1)));
        batch.delete(element(key, None));
        apply(&batch.to_nftables())
            .await
            .with_context(|| format!("closing the firewall for {}", describe(key)))
    }

    /// Removes the table, and every hole with it (at exit).
    pub async fn remove(self) {
        remove_table(TABLE).await;
    }

    fn table(&self, max_holes: usize) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(table_object(TABLE));
        batch.add(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: SET.into(),
            set_type: SetTypeValue::Concatenated(Cow::Owned(vec![
                SetType::Ipv4Addr,
                SetType::InetProto,
                SetType::InetService,
            ])),
            flags: Some([SetFlag::Timeout].into_iter().collect()),
            size: slots(max_holes),
            ..Set::default()
        })));
        batch.add(base_chain(
            TABLE,
            CHAIN,
            NfChainType::Filter,
            NfHook::Forward,
            PRIORITY,
        ));
        let from_wan = || {
            Statement::Match(Match {
                left: meta(MetaKey::Iifname),
                right: Expression::String(self.wan_iface.clone().into()),
                op: Operator::EQ,
            })
        };
        // meta mark set meta mark & ~HOLE_MARK: nothing from the WAN arrives marked.
        batch.add(rule(vec![
            from_wan(),
            set_mark(Expression::BinaryOperation(Box::new(
                nftables::expr::BinaryOperation::AND(
                    meta(MetaKey::Mark),
                    Expression::Number(!HOLE_MARK),
                ),
            ))),
        ]));
        // ct state new ip daddr . meta l4proto . th dport @holes meta mark set meta mark | HOLE_MARK
        batch.add(rule(vec![
            from_wan(),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::CT(CT {
                    key: "state".into(),
                    family: None,
                    dir: None,
                })),
                right: Expression::String("new".into()),
                op: Operator::IN,
            }),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Concat(vec![
                    payload("ip", "daddr"),
                    meta(MetaKey::L4proto),
                    payload("th", "dport"),
                ])),
                right: Expression::String(format!("@{SET}").into()),
                op: Operator::EQ,
            }),
            set_mark(Expression::BinaryOperation(Box::new(
                nftables::expr::BinaryOperation::OR(vec![
                    meta(MetaKey::Mark),
                    Expression::Number(HOLE_MARK),
                ]),
            ))),
        ]));
        batch.to_nftables()
    }
}

fn set_mark(value: Expression<'static>) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value,
    })
}

fn rule(expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: CHAIN.into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

/// The set element `host . proto . port`, with a timeout in seconds when adding.
fn element(key: &Key, timeout: Option<u32>) -> NfListObject<'static> {
    let val = Expression::Named(NamedExpression::Concat(vec![
        Expression::String(key.host.to_string().into()),
        Expression::String(key.proto.name().into()),
        Expression::Number(u32::from(key.internal_port)),
    ]));
    let elem = timed(val, timeout);
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: SET.into(),
        elem: Cow::Owned(vec![elem]),
    })
}

fn describe(key: &Key) -> String {
    format!("{}:{} {}", key.host, key.internal_port, key.proto.name())
}

/// `family table chain` of every IPv4-capable forward base chain whose policy is drop.
fn forward_chains_that_drop(ruleset: &serde_json::Value) -> Vec<String> {
    objects(ruleset, "chain")
        .filter(|c| {
            c["hook"] == "forward"
                && c["policy"] == "drop"
                && (c["family"] == "ip" || c["family"] == "inet")
        })
        .map(|c| {
            let field = |name: &str| c[name].as_str().unwrap_or_default().to_string();
            format!("{} {} {}", field("family"), field("table"), field("name"))
        })
        .collect()
}

/// Whether a rule outside portproxy's table tests the hole mark and accepts.
fn accepts_hole_mark(ruleset: &serde_json::Value) -> bool {
    objects(ruleset, "rule").any(|r| {
        let expr = &r["expr"];
        r["table"] != TABLE
            && expr.to_string().contains(&HOLE_MARK.to_string())
            && expr
                .as_array()
                .is_some_and(|statements| statements.iter().any(|s| s.get("accept").is_some()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list ruleset` (nftables 1.0.6) of an fw4-like forward chain that drops and
    /// accepts the hole mark, an input chain and a forward chain that accepts.
    const RULESET: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "fw4", "handle": 1}}, {"chain": {"family": "inet", "table": "fw4", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"chain": {"family": "inet", "table": "fw4", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "fw4", "chain": "forward", "handle": 3, "expr": [{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16777216]}, "right": 16777216}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "fw4", "chain": "forward", "handle": 4, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "established"}}, {"accept": null}]}}, {"table": {"family": "ip", "name": "filter", "handle": 2}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}]}"#;

    fn ruleset(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn finds_forward_chains_that_drop() {
        assert_eq!(
            forward_chains_that_drop(&ruleset(RULESET)),
            ["inet fw4 forward"]
        );
        let accepting = RULESET.replace(r#""policy": "drop""#, r#""policy": "accept""#);
        assert!(forward_chains_that_drop(&ruleset(&accepting)).is_empty());
        let bridge = RULESET.replace(r#""family": "inet""#, r#""family": "bridge""#);
        assert!(forward_chains_that_drop(&ruleset(&bridge)).is_empty());
    }

    #[test]
    fn finds_the_rule_that_accepts_the_hole_mark() {
        assert!(accepts_hole_mark(&ruleset(RULESET)));
        let other_mark = RULESET.replace("16777216", "256");
        assert!(!accepts_hole_mark(&ruleset(&other_mark)));
        let drops = RULESET.replace(r#"{"accept": null}"#, r#"{"drop": null}"#);
        assert!(!accepts_hole_mark(&ruleset(&drops)));
        // portproxy's own table marks; that is not the router's firewall accepting.
        let own = RULESET.replace(r#""table": "fw4""#, r#""table": "portproxy""#);
        assert!(!accepts_hole_mark(&ruleset(&own)));
        assert!(!accepts_hole_mark(&ruleset(r#"{"nftables": []}"#)));
    }
}
