//! Carrying out a `Verdict` in TC: checksum helpers (`csum`), `bpf_redirect` /
//! `bpf_redirect_neigh` / `bpf_skb_change_head` (`redirect`). TC is the hook that works on
//! every device: it is the whole data path on an L3 softwire, and behind the XDP programs it
//! takes whatever they leave (`STAT_XDP_DEFERRED`), uncharged by them: the rate limit and
//! quota (`limit`) apply here to what TC relays.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use portproxy_common::{
    Config, SSDP_GROUP_BE, SSDP_GROUP_MAC, STAT_DROP_TTL, STAT_NOTIFY_IN, STAT_PASSED,
    STAT_SEARCH_OUT,
};

use crate::{
    csum,
    dispatch::{self, Verdict},
    grants, maps,
    packet::{IP_DST, IP_SRC},
    port_control, redirect, ssdp,
    stats::count,
    trace,
};

/// `tc_lan_ingress`.
#[inline(always)]
pub fn lan_ingress(ctx: &TcContext) -> Result<i32, i64> {
    let Some(cfg) = maps::config() else {
        return Ok(pass());
    };
    act(ctx, cfg, dispatch::lan(ctx, cfg)?)
}

/// `tc_wan_ingress`.
#[inline(always)]
pub fn wan_ingress(ctx: &TcContext) -> Result<i32, i64> {
    let Some(cfg) = maps::config() else {
        return Ok(pass());
    };
    act(ctx, cfg, dispatch::wan(ctx, cfg)?)
}

#[inline(always)]
fn pass() -> i32 {
    count(STAT_PASSED);
    TC_ACT_OK as i32
}

#[inline(always)]
fn act(ctx: &TcContext, cfg: &Config, verdict: Verdict) -> Result<i32, i64> {
    match verdict {
        Verdict::Pass => Ok(pass()),
        Verdict::PassAs(stat) => {
            count(stat);
            Ok(TC_ACT_OK as i32)
        }
        Verdict::Drop(stat) => {
            count(stat);
            Ok(TC_ACT_SHOT as i32)
        }
        Verdict::Request(pkt, _)
        | Verdict::Search(pkt)
        | Verdict::Reply(pkt, ..)
        | Verdict::Notify(pkt)
            if !dispatch::hop_left(&pkt) =>
        {
            count(STAT_DROP_TTL);
            Ok(TC_ACT_SHOT as i32)
        }
        Verdict::Request(pkt, stat) => {
            if let Some(dropped) = port_control::admit(ctx, cfg, &pkt)? {
                count(dropped);
                return Ok(TC_ACT_SHOT as i32);
            }
            csum::set_addr(ctx, &pkt, IP_DST, pkt.dst_be, cfg.cgn_addr_be)?;
            csum::hop(ctx, &pkt)?;
            let action = redirect::to_wan_unicast(cfg)?;
            count(stat);
            trace::request(ctx, stat, &pkt, cfg.cgn_addr_be);
            Ok(action)
        }
        Verdict::Search(pkt) => {
            if let Some(dropped) = ssdp::admit(cfg, &pkt)? {
                count(dropped);
                return Ok(TC_ACT_SHOT as i32);
            }
            if pkt.dst_be != SSDP_GROUP_BE {
                csum::set_addr(ctx, &pkt, IP_DST, pkt.dst_be, SSDP_GROUP_BE)?;
            }
            csum::hop(ctx, &pkt)?;
            let action = redirect::to_wan_multicast(ctx, cfg, SSDP_GROUP_MAC)?;
            count(STAT_SEARCH_OUT);
            trace::search(ctx, &pkt);
            Ok(action)
        }
        Verdict::Reply(pkt, stat, entry) => {
            let kind = grants::kind(ctx, cfg, &pkt);
            if kind != grants::Kind::Other && grants::report(ctx, cfg, &pkt, kind, entry)? {
                // Held: userspace delivers it once the firewall hole is open.
                port_control::touch(entry);
                return Ok(TC_ACT_SHOT as i32);
            }
            let mac = port_control::touch(entry);
            csum::set_addr(ctx, &pkt, IP_SRC, pkt.src_be, cfg.lan_addr_be)?;
            csum::hop(ctx, &pkt)?;
            let action = redirect::to_lan(ctx, cfg, mac)?;
            count(stat);
            trace::reply(ctx, stat, &pkt);
            Ok(action)
        }
        Verdict::Notify(pkt) => {
            csum::set_addr(ctx, &pkt, IP_SRC, pkt.src_be, cfg.lan_addr_be)?;
            csum::hop(ctx, &pkt)?;
            let action = redirect::to_lan(ctx, cfg, SSDP_GROUP_MAC)?;
            count(STAT_NOTIFY_IN);
            trace::notify(ctx, &pkt);
            Ok(action)
        }
    }
}
