//! The local half of a mapping in double NAT: a DNAT on this router from its WAN address
//! and a local port to the LAN host, in an nftables table of portproxy's own.
//!
//! When the router translates the LAN itself (NAT444 with a 100.64/10 WAN address, or an
//! own router behind the provider's), the CGN never sees a LAN address: a mapping there
//! can only point at this router's WAN address. So each mapping is two halves, kept
//! together by the mapping table: upstream, the CGN maps its external port to
//! `WAN address:local port`; here, `table inet portproxy_nat` forwards that local port to
//! `LAN host:internal port`:
//!
//! ```text
//! table inet portproxy_nat {
//!     map hosts {
//!         type inet_proto . inet_service : ipv4_addr
//!         flags timeout
//!         elements = { tcp . 9201 timeout 10m : 192.168.1.2 }
//!     }
//!     map ports {
//!         type inet_proto . inet_service : inet_service
//!         flags timeout
//!         elements = { tcp . 9201 timeout 10m : 8201 }
//!     }
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat - 1; policy accept;
//!         iifname "wan" fib daddr type local
//!             dnat ip to meta l4proto . th dport map @hosts : meta l4proto . th dport map @ports
//!     }
//! }
//! ```
//!
//! Two maps, not one to `ipv4_addr . inet_service`: nftables 1.0.6 (Debian 12; OpenWrt
//! ships 1.0.x too) cannot declare a map to a concatenation through its JSON API (an array
//! crashes `nft`, the string form is refused). Both are changed in one transaction.
//!
//! Only what arrives on the WAN interface for one of the router's own addresses is
//! translated, before the router's own DNAT rules (fw4's `dstnat` runs at priority
//! `dstnat`). The forward filter then sees the LAN host and port, so the firewall's hole
//! for the mapping (`firewall`) lets it in, as it does without double NAT. Elements time
//! out with their mapping, the table is replaced at start and removed at exit: a crash and
//! a restart leave no stale forward.

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use log::{info, warn};
use nftables::batch::Batch;
use nftables::expr::{Expression, Fib, FibFlag, FibResult, MetaKey, NamedExpression};
use nftables::schema::{
    Element, Map, NfListObject, Nftables, Rule, SetFlag, SetType, SetTypeValue,
};
use nftables::stmt::{Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};

use super::{
    apply, base_chain, current_ruleset, meta, objects, payload, remove_table, slots, table_object,
    timed, timeout_secs,
};
use crate::cli::DoubleNat;
use crate::mapping::Key;
use crate::proto::Transport;

/// portproxy's NAT table (`nft list table inet portproxy_nat`).
pub const TABLE: &str = "portproxy_nat";
/// Local port to LAN host, and local port to internal port.
const HOSTS: &str = "hosts";
const PORTS: &str = "ports";
const CHAIN: &str = "prerouting";
/// `dstnat - 1`: before the router's own port forwards (fw4's `dstnat` chain).
const PRIORITY: i32 = -101;
/// Local ports below this are the router's own services' (ssh, DNS, the web interface):
/// never used for a forward, even when nothing listens there right now.
pub const FIRST_LOCAL_PORT: u16 = 1024;

/// portproxy's DNAT table, installed for as long as the daemon runs in double NAT.
pub struct LocalNat {
    wan_iface: String,
}

impl LocalNat {
    /// Decides whether the router translates the LAN (`mode`, and for `auto` the ruleset)
    /// and installs the table if so, replacing one a previous run left behind; `None`
    /// without double NAT (then the table of an earlier run is removed).
    pub async fn install(
        mode: DoubleNat,
        wan_iface: &str,
        max_forwards: usize,
    ) -> Result<Option<LocalNat>> {
        let why = match mode {
            DoubleNat::Off => None,
            DoubleNat::On => Some("--double-nat on".to_string()),
            DoubleNat::Auto => match current_ruleset().await {
                Ok(ruleset) => translating_chain(&ruleset, wan_iface).map(|chain| {
                    format!("the nftables chain {chain} translates traffic leaving {wan_iface}")
                }),
                Err(e) => {
                    warn!(
                        "double NAT: cannot read the nftables ruleset ({e}); assuming this router \
                         does not translate the LAN (--double-nat on says it does)"
                    );
                    None
                }
            },
        };
        remove_table(TABLE).await;
        let Some(why) = why else {
            return Ok(None);
        };
        let nat = LocalNat {
            wan_iface: wan_iface.to_string(),
        };
        apply(&nat.table(max_forwards)).await.context(
            "creating nftables table inet portproxy_nat (--double-nat off runs without it)",
        )?;
        info!(
            "double NAT ({why}): the CGN never sees LAN addresses, so requests cannot be relayed; \
             NAT-PMP, PCP and UPnP are answered here (proxy mode), each mapping made at the CGN for \
             {wan_iface}'s address and forwarded here to the LAN host (nftables table inet {TABLE})"
        );
        Ok(Some(nat))
    }

    /// Forwards `proto` port `local_port` of the WAN address to `key`'s host and internal
    /// port for `remaining` (`None`: until removed); replaces the element's timeout and
    /// target in one transaction.
    pub async fn forward(
        &self,
        local_port: u16,
        key: &Key,
        remaining: Option<Duration>,
    ) -> Result<()> {
        let target = (key.host, key.internal_port);
        let mut batch = Batch::new();
        // A map element cannot be added without its target: add (a no-op if there), delete,
        // add with the new timeout.
        for map in [HOSTS, PORTS] {
            batch.add(element(map, key.proto, local_port, Some((target, None))));
            batch.delete(element(map, key.proto, local_port, None));
            let timeout = timeout_secs(remaining);
            batch.add(element(map, key.proto, local_port, Some((target, timeout))));
        }
        apply(&batch.to_nftables())
            .await
            .with_context(|| format!("forwarding {} port {local_port} to {key}", self.wan_iface))
    }

    /// Removes the forward of `local_port` to `key` now; one that timed out already is no
    /// error.
    pub async fn unforward(&self, local_port: u16, key: &Key) -> Result<()> {
        let target = (key.host, key.internal_port);
        let mut batch = Batch::new();
        // Added first (a no-op if it is there: the same target), so that the delete succeeds
        // whether or not it timed out.
        for map in [HOSTS, PORTS] {
            batch.add(element(map, key.proto, local_port, Some((target, Some(1)))));
            batch.delete(element(map, key.proto, local_port, None));
        }
        apply(&batch.to_nftables()).await.with_context(|| {
            format!(
                "removing the forward of {} port {local_port} to {key}",
                self.wan_iface
            )
        })
    }

    /// Removes the table, and every forward with it (at exit).
    pub async fn remove(self) {
        remove_table(TABLE).await;
    }

    fn table(&self, max_forwards: usize) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(table_object(TABLE));
        for (name, target) in [(HOSTS, SetType::Ipv4Addr), (PORTS, SetType::InetService)] {
            batch.add(NfListObject::Map(Box::new(Map {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: name.into(),
                set_type: SetTypeValue::Concatenated(Cow::Owned(vec![
                    SetType::InetProto,
                    SetType::InetService,
                ])),
                map: SetTypeValue::Single(target),
                flags: Some([SetFlag::Timeout].into_iter().collect()),
                size: slots(max_forwards),
                ..Map::default()
            })));
        }
        batch.add(base_chain(
            TABLE,
            CHAIN,
            NfChainType::NAT,
            NfHook::Prerouting,
            PRIORITY,
        ));
        // iifname WAN fib daddr type local
        //     dnat ip to meta l4proto . th dport map @hosts : meta l4proto . th dport map @ports
        let lookup = |map: &str| {
            Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
                key: Expression::Named(NamedExpression::Concat(vec![
                    meta(MetaKey::L4proto),
                    payload("th", "dport"),
                ])),
                data: Expression::String(format!("@{map}").into()),
            })))
        };
        let expr = vec![
            Statement::Match(Match {
                left: meta(MetaKey::Iifname),
                right: Expression::String(self.wan_iface.clone().into()),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: [FibFlag::Daddr].into_iter().collect(),
                })),
                right: Expression::String("local".into()),
                op: Operator::EQ,
            }),
            Statement::DNAT(Some(NAT {
                addr: Some(lookup(HOSTS)),
                family: Some(NATFamily::IP),
                port: Some(lookup(PORTS)),
                flags: None,
            })),
        ];
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: CHAIN.into(),
            expr: expr.into(),
            ..Rule::default()
        }));
        batch.to_nftables()
    }
}

/// The element `proto . local_port` of `map`, with its target (host and internal port: the
/// host in `HOSTS`, the port in `PORTS`) and timeout when adding.
fn element(
    map: &'static str,
    proto: Transport,
    local_port: u16,
    target: Option<((Ipv4Addr, u16), Option<u32>)>,
) -> NfListObject<'static> {
    let local = Expression::Named(NamedExpression::Concat(vec![
        Expression::String(proto.name().into()),
        Expression::Number(u32::from(local_port)),
    ]));
    let elem = match target {
        None => local,
        Some(((host, internal_port), timeout)) => {
            let local = timed(local, timeout);
            let lan = match map {
                HOSTS => Expression::String(host.to_string().into()),
                _ => Expression::Number(u32::from(internal_port)),
            };
            Expression::List(vec![local, lan])
        }
    };
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: map.into(),
        elem: Cow::Owned(vec![elem]),
    })
}

/// Whether a socket of this router holds `proto` port `port` where traffic to the WAN
/// address `wan` would reach it (bound to it or to any address; TCP: listening), so that a
/// forward of that port would take its traffic away. Read from `/proc/net` of the daemon's
/// own network namespace.
pub fn port_in_use(proto: Transport, port: u16, wan: Ipv4Addr) -> bool {
    let tables: [&str; 2] = match proto {
        Transport::Tcp => ["tcp", "tcp6"],
        Transport::Udp => ["udp", "udp6"],
    };
    tables.iter().any(|table| {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        holds_port(&text, proto, port, wan)
    })
}

/// `port_in_use` over the text of one `/proc/net/{tcp,udp}[6]` table.
fn holds_port(table: &str, proto: Transport, port: u16, wan: Ipv4Addr) -> bool {
    // /proc/net shows addresses as the bytes in memory, in hex: an IPv4 address in network
    // order read as a little-endian u32; IPv6 as four such words.
    let wan_v4 = format!("{:08X}", u32::from_le_bytes(wan.octets()));
    let wan_mapped = format!("0000000000000000FFFF0000{wan_v4}");
    let wanted = format!("{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            return false;
        };
        let Some((addr, local_port)) = local.rsplit_once(':') else {
            return false;
        };
        let reachable = addr.bytes().all(|b| b == b'0') || addr == wan_v4 || addr == wan_mapped;
        // TCP_LISTEN is 0A; any bound UDP socket receives.
        let serving = proto == Transport::Udp || *state == "0A";
        local_port == wanted && reachable && serving
    })
}

/// `family table chain` of a chain that masquerades or SNATs IPv4 traffic leaving
/// `wan_iface`: a rule reachable from a NAT postrouting base chain (through jumps and gotos,
/// as fw4's `srcnat` jumps to `srcnat_wan`) whose `oifname` conditions let `wan_iface`
/// through. Source address conditions are taken to cover the LAN.
pub fn translating_chain(ruleset: &serde_json::Value, wan_iface: &str) -> Option<String> {
    objects(ruleset, "chain")
        .filter(|c| {
            c["type"] == "nat"
                && c["hook"] == "postrouting"
                && (c["family"] == "ip" || c["family"] == "inet")
        })
        .find_map(|c| {
            let (family, table, name) = (
                c["family"].as_str()?,
                c["table"].as_str()?,
                c["name"].as_str()?,
            );
            translates_in(ruleset, family, table, name, wan_iface, 0)
        })
}

/// Chains deeper than this under a base chain are not followed (a loop, or nothing a
/// router's firewall writes).
const MAX_JUMPS: usize = 8;

fn translates_in(
    ruleset: &serde_json::Value,
    family: &str,
    table: &str,
    chain: &str,
    wan_iface: &str,
    depth: usize,
) -> Option<String> {
    if depth > MAX_JUMPS {
        return None;
    }
    objects(ruleset, "rule")
        .filter(|r| r["family"] == family && r["table"] == table && r["chain"] == chain)
        .filter_map(|r| r["expr"].as_array())
        .filter(|statements| statements.iter().all(|s| lets_through(s, wan_iface)))
        .find_map(|statements| {
            statements.iter().find_map(|s| {
                if ["masquerade", "snat"]
                    .iter()
                    .any(|nat| s.get(*nat).is_some())
                {
                    return Some(format!("{family} {table} {chain}"));
                }
                let target = s
                    .get("jump")
                    .or_else(|| s.get("goto"))
                    .and_then(|j| j["target"].as_str())?;
                translates_in(ruleset, family, table, target, wan_iface, depth + 1)
            })
        })
}

/// Whether a statement (a match, or anything else) lets IPv4 traffic out of `wan_iface`
/// pass: `oifname` matching it, or anything that is no `oifname` or `nfproto` match.
fn lets_through(statement: &serde_json::Value, wan_iface: &str) -> bool {
    let Some(m) = statement.get("match") else {
        return true;
    };
    let (op, right) = (m["op"].as_str().unwrap_or("=="), &m["right"]);
    let names = |v: &serde_json::Value| -> Vec<String> {
        match (v.as_str(), v["set"].as_array()) {
            (Some(one), _) => vec![one.to_string()],
            (None, Some(set)) => set
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
            (None, None) => Vec::new(),
        }
    };
    let is = match m["left"]["meta"]["key"].as_str() {
        Some("oifname") => names(right).iter().any(|name| name == wan_iface),
        Some("nfproto") => names(right).iter().any(|p| p == "ipv4"),
        _ => return true,
    };
    match op {
        "!=" => !is,
        _ => is,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list ruleset` (nftables 1.0.6) of fw4's source NAT for a WAN device
    /// `softwire`, and of an iptables-style table with a set of devices and a negation.
    const FW4: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "fw4", "handle": 1}}, {"chain": {"family": "inet", "table": "fw4", "name": "srcnat", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "inet", "table": "fw4", "name": "srcnat_wan", "handle": 2}}, {"rule": {"family": "inet", "table": "fw4", "chain": "srcnat", "handle": 3, "comment": "!fw4: Handle wan IPv4/IPv6 srcnat traffic", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "softwire"}}, {"jump": {"target": "srcnat_wan"}}]}}, {"rule": {"family": "inet", "table": "fw4", "chain": "srcnat_wan", "handle": 4, "comment": "!fw4: Masquerade IPv4 wan traffic", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}, {"masquerade": null}]}}]}"#;
    const IPTABLES: &str = r#"{"nftables": [{"table": {"family": "ip", "name": "nat", "handle": 2}}, {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "handle": 3, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["wan", "eth1"]}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"snat": {"addr": "1.2.3.4"}}]}}, {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "handle": 4, "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "lo"}}, {"masquerade": null}]}}]}"#;

    fn ruleset(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn finds_fw4s_masquerade_through_its_jump() {
        assert_eq!(
            translating_chain(&ruleset(FW4), "softwire").as_deref(),
            Some("inet fw4 srcnat_wan")
        );
        assert_eq!(translating_chain(&ruleset(FW4), "ds-wan"), None);
        let ipv6_only = FW4.replace(r#""right": "ipv4""#, r#""right": "ipv6""#);
        assert_eq!(translating_chain(&ruleset(&ipv6_only), "softwire"), None);
        // The same rules in a filter chain translate nothing.
        let filter = FW4.replace(r#""type": "nat""#, r#""type": "filter""#);
        assert_eq!(translating_chain(&ruleset(&filter), "softwire"), None);
        assert_eq!(
            translating_chain(&ruleset(r#"{"nftables": []}"#), "softwire"),
            None
        );
    }

    #[test]
    fn device_sets_and_negations() {
        let rules = ruleset(IPTABLES);
        assert!(translating_chain(&rules, "wan").is_some());
        // `oifname != "lo" masquerade` translates whatever leaves by any other device.
        assert!(translating_chain(&rules, "softwire").is_some());
        assert_eq!(translating_chain(&rules, "lo"), None);
    }

    #[test]
    fn a_jump_loop_ends() {
        let looped = FW4.replace(
            r#"{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}, {"masquerade": null}"#,
            r#"{"jump": {"target": "srcnat"}}"#,
        );
        assert_eq!(translating_chain(&ruleset(&looped), "softwire"), None);
    }

    #[test]
    fn ports_the_router_serves_on_its_wan_address() {
        let wan = Ipv4Addr::new(192, 0, 0, 2);
        // 0.0.0.0:22 listening, 192.0.0.2:8080 listening, 192.168.1.1:53 listening (LAN
        // only), 192.0.0.2:9000 an outgoing connection (established).
        let tcp = "  sl  local_address rem_address   st\n\
             0: 00000000:0016 00000000:0000 0A\n\
             1: 020000C0:1F90 00000000:0000 0A\n\
             2: 0101A8C0:0035 00000000:0000 0A\n\
             3: 020000C0:2328 010000C0:1F90 01\n";
        assert!(holds_port(tcp, Transport::Tcp, 22, wan));
        assert!(holds_port(tcp, Transport::Tcp, 8080, wan));
        assert!(!holds_port(tcp, Transport::Tcp, 53, wan));
        assert!(!holds_port(tcp, Transport::Tcp, 9000, wan));
        let udp6 = "  sl  local_address rem_address   st\n\
             0: 0000000000000000FFFF0000020000C0:14EB 00000000000000000000000000000000:0000 07\n";
        assert!(holds_port(udp6, Transport::Udp, 5355, wan));
        assert!(!holds_port(udp6, Transport::Udp, 5356, wan));
    }
}
