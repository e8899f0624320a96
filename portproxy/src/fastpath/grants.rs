//! The fast path's grants (`GRANTS`, see `portproxy-ebpf/src/grants.rs`): each success
//! response to a mapping request the programs matched to a client is learned into the
//! mapping table here, through the same code as on sockets. A held one (firewall holes on)
//! was not relayed by the program: it goes to the client from here, from the LAN address
//! and port 5351 as the program would have sent it, once its hole is open.

use std::mem::offset_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use log::{debug, warn};
use portproxy_common::{GRANT_MSG_LEN, GrantEvent};
use tokio::io::{Interest, unix::AsyncFd};
use tokio::net::UdpSocket;

use crate::config::Config;
use crate::mapping::Mappings;
use crate::proto::port_control::{self, Protocol};
use crate::relay::port_control::learn;
use crate::stats::{Counter, Stats};

pub type Grants = RingBuf<MapData>;

/// Reads `GRANTS` until cancelled. `lan`: the socket held grants are delivered from
/// (LAN address, port 5351); `None` when the programs relay every grant themselves.
pub async fn forward(
    grants: Grants,
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    mappings: Arc<Mappings>,
    lan: Option<Arc<UdpSocket>>,
) {
    // SAFETY: the fd is the ring buffer map's, owned by `grants` for as long as the AsyncFd
    // holds it, and `as_raw_fd` always returns that one.
    let mut grants = match unsafe { AsyncFd::register_with_interest(grants, Interest::READABLE) } {
        Ok(grants) => grants,
        Err(e) => {
            warn!("the fast path's grants cannot be read ({e}); the mapping table misses them");
            return;
        }
    };
    while let Ok(mut ready) = grants.readable_mut().await {
        // Copied out first: an item borrows the ring buffer until dropped.
        let mut events = Vec::new();
        while let Some(item) = ready.get_inner_mut().next() {
            events.push(item.to_vec());
        }
        ready.clear_ready();
        for event in events {
            deliver(&event, &cfg, &stats, &mappings, lan.as_deref()).await;
        }
    }
}

async fn deliver(
    event: &[u8],
    cfg: &Config,
    stats: &Stats,
    mappings: &Mappings,
    lan: Option<&UdpSocket>,
) {
    let Some(Event {
        client,
        held,
        matched,
        msg,
    }) = parse(event)
    else {
        stats.add(Counter::DropMalformed);
        return;
    };
    let checked = match port_control::check_response(msg) {
        Ok(checked) => checked,
        Err(why) => {
            stats.add(Counter::DropMalformed);
            debug!("a grant from the fast path for {client}: {why}");
            return;
        }
    };
    // The program checked it against the client's mapping request in flight (CLIENTS).
    learn(cfg, stats, mappings, client, &checked, |_| matched).await;
    if !held {
        return;
    }
    let Some(lan) = lan else {
        return;
    };
    match lan.send_to(msg, client).await {
        Ok(_) => {
            stats.add(match checked.protocol {
                Protocol::NatPmp => Counter::NatPmpToClient,
                Protocol::Pcp => Counter::PcpToClient,
            });
            debug!(
                "{} {} -> {client}: {} (via userspace: a grant)",
                checked.protocol.name(),
                cfg.cgn,
                checked
            );
        }
        Err(e) => {
            stats.add(Counter::DropSendFailed);
            warn!("delivering a grant to {client}: {e}");
        }
    }
}

/// A `GrantEvent` as userspace reads it.
struct Event<'a> {
    client: SocketAddrV4,
    held: bool,
    matched: bool,
    msg: &'a [u8],
}

fn parse(event: &[u8]) -> Option<Event<'_>> {
    let at = |offset: usize, len: usize| event.get(offset..offset.checked_add(len)?);
    let addr: [u8; 4] = at(offset_of!(GrantEvent, client_addr_be), 4)?
        .try_into()
        .ok()?;
    let port: [u8; 2] = at(offset_of!(GrantEvent, client_port_be), 2)?
        .try_into()
        .ok()?;
    let len: [u8; 2] = at(offset_of!(GrantEvent, len), 2)?.try_into().ok()?;
    let held = *at(offset_of!(GrantEvent, held), 1)?.first()? != 0;
    let matched = *at(offset_of!(GrantEvent, matched), 1)?.first()? != 0;
    let len = usize::from(u16::from_ne_bytes(len));
    if len > GRANT_MSG_LEN {
        return None;
    }
    let msg = at(offset_of!(GrantEvent, msg), len)?;
    // Both fields hold network-order bytes.
    let client = SocketAddrV4::new(Ipv4Addr::from(addr), u16::from_be_bytes(port));
    Some(Event {
        client,
        held,
        matched,
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_event_as_the_program_writes_it() {
        let mut event = vec![0u8; size_of::<GrantEvent>()];
        event[0..4].copy_from_slice(&[192, 168, 1, 2]);
        event[4..6].copy_from_slice(&40000u16.to_be_bytes());
        event[6..8].copy_from_slice(&16u16.to_ne_bytes());
        event[8] = 1;
        event[12] = 0;
        event[13] = 0x82;
        let parsed = parse(&event).unwrap();
        assert_eq!(parsed.client, "192.168.1.2:40000".parse().unwrap());
        assert!(parsed.held && !parsed.matched);
        assert_eq!(parsed.msg.len(), 16);
        assert_eq!(parsed.msg[1], 0x82);
        // A length past the message, or a short event: refused, not a panic.
        event[6..8].copy_from_slice(&2000u16.to_ne_bytes());
        assert!(parse(&event).is_none());
        assert!(parse(&event[..5]).is_none());
    }
}
