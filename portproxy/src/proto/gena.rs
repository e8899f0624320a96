//! GENA's subscription headers (UPnP Device Architecture 1.1 §4.1): what a SUBSCRIBE or
//! UNSUBSCRIBE asks, read from its headers and checked. Pure (no I/O), so it is fuzzed on its
//! own; the IGD's subscriptions and events are `serve::igd::events`.
//!
//! CallStranger (CVE-2020-12695): a CALLBACK is taken only as
//! `http://<the subscriber's own address>[:port]/path`, at most `MAX_CALLBACKS` of them, so a
//! subscription cannot make portproxy send to another host, nor to a name, nor over another
//! scheme. TIMEOUT is capped at `MAX_TIMEOUT` (and at least `MIN_TIMEOUT`); none, or one not
//! understood, is `DEFAULT_TIMEOUT`.

use std::net::{Ipv4Addr, SocketAddrV4};

use http::{HeaderMap, StatusCode};

pub const MAX_TIMEOUT: u32 = 1800;
pub const DEFAULT_TIMEOUT: u32 = 1800;
pub const MIN_TIMEOUT: u32 = 60;
/// CALLBACK URLs one subscription may give (tried in order, §4.1.1).
pub const MAX_CALLBACKS: usize = 4;

/// Where a subscriber wants its events: the subscriber's own address and a port, and the
/// request target there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub addr: SocketAddrV4,
    pub target: String,
}

/// A SUBSCRIBE or UNSUBSCRIBE, its headers checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    New {
        callbacks: Vec<Callback>,
        timeout: u32,
    },
    Renew {
        sid: String,
        timeout: u32,
    },
    Cancel {
        sid: String,
    },
}

/// Reads a SUBSCRIBE (`unsubscribe` false) or UNSUBSCRIBE from `peer`: 400 when it mixes a
/// SID with NT or CALLBACK, 412 when a header is missing or wrong, or a callback is not
/// `peer`'s (§4.1.1, §4.1.3).
pub fn parse(
    unsubscribe: bool,
    headers: &HeaderMap,
    peer: Ipv4Addr,
) -> Result<Subscription, StatusCode> {
    let get = |name: &str| -> Result<Option<&str>, StatusCode> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v
                .to_str()
                .map(|v| Some(v.trim()))
                .map_err(|_| StatusCode::PRECONDITION_FAILED),
            // The same header twice: which one is meant?
            (Some(_), Some(_)) => Err(StatusCode::BAD_REQUEST),
        }
    };
    let (sid, nt, callback) = (get("sid")?, get("nt")?, get("callback")?);
    let timeout = timeout(get("timeout")?);
    match sid {
        Some(_) if nt.is_some() || callback.is_some() => Err(StatusCode::BAD_REQUEST),
        Some("") => Err(StatusCode::PRECONDITION_FAILED),
        Some(sid) if unsubscribe => Ok(Subscription::Cancel { sid: sid.into() }),
        Some(sid) => Ok(Subscription::Renew {
            sid: sid.into(),
            timeout,
        }),
        None if unsubscribe => Err(StatusCode::PRECONDITION_FAILED),
        None => {
            if nt != Some("upnp:event") {
                return Err(StatusCode::PRECONDITION_FAILED);
            }
            let callbacks =
                callbacks(callback.unwrap_or(""), peer).ok_or(StatusCode::PRECONDITION_FAILED)?;
            Ok(Subscription::New { callbacks, timeout })
        }
    }
}

/// `<http://192.168.1.2:49152/evt><http://...>`: every URL must be plain http to `peer`
/// itself, by address (CallStranger); `None` otherwise, or when there are none or too many.
pub fn callbacks(header: &str, peer: Ipv4Addr) -> Option<Vec<Callback>> {
    let mut rest = header.trim();
    let mut callbacks = Vec::new();
    while !rest.is_empty() {
        let (url, after) = rest.strip_prefix('<')?.split_once('>')?;
        if callbacks.len() == MAX_CALLBACKS {
            return None;
        }
        callbacks.push(callback(url, peer)?);
        rest = after.trim_start();
    }
    (!callbacks.is_empty()).then_some(callbacks)
}

fn callback(url: &str, peer: Ipv4Addr) -> Option<Callback> {
    let (addr, target) = super::upnp::parse_url(url)?;
    (*addr.ip() == peer).then_some(Callback { addr, target })
}

/// TIMEOUT: `Second-N` or `Second-infinite` (§4.1.1), within our bounds.
pub fn timeout(header: Option<&str>) -> u32 {
    let Some(value) = header else {
        return DEFAULT_TIMEOUT;
    };
    let Some(secs) = value
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("second-"))
        .map(|_| &value[7..])
    else {
        return DEFAULT_TIMEOUT;
    };
    if secs.eq_ignore_ascii_case("infinite") {
        return MAX_TIMEOUT;
    }
    secs.parse::<u32>()
        .map_or(DEFAULT_TIMEOUT, |s| s.clamp(MIN_TIMEOUT, MAX_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn subscribe(pairs: &[(&'static str, &str)]) -> Result<Subscription, StatusCode> {
        parse(false, &headers(pairs), PEER)
    }

    #[test]
    fn a_subscribe_names_its_callbacks_and_timeout() {
        assert_eq!(
            subscribe(&[
                (
                    "callback",
                    "<http://192.168.1.2:49152/evt?a=1> <http://192.168.1.2/>"
                ),
                ("nt", "upnp:event"),
                ("timeout", "Second-300"),
            ]),
            Ok(Subscription::New {
                callbacks: vec![
                    Callback {
                        addr: SocketAddrV4::new(PEER, 49152),
                        target: "/evt?a=1".into(),
                    },
                    Callback {
                        addr: SocketAddrV4::new(PEER, 80),
                        target: "/".into(),
                    },
                ],
                timeout: 300,
            })
        );
    }

    #[test]
    fn missing_or_wrong_headers_are_a_failed_precondition() {
        const PRE: Result<Subscription, StatusCode> = Err(StatusCode::PRECONDITION_FAILED);
        let cb = ("callback", "<http://192.168.1.2:5000/>");
        let nt = ("nt", "upnp:event");
        assert_eq!(subscribe(&[cb]), PRE);
        assert_eq!(subscribe(&[nt]), PRE);
        assert_eq!(subscribe(&[cb, ("nt", "ssdp:all")]), PRE);
        assert_eq!(subscribe(&[("callback", ""), nt]), PRE);
        assert_eq!(subscribe(&[("sid", ""),]), PRE);
        assert_eq!(parse(true, &headers(&[]), PEER), PRE);
        assert_eq!(
            parse(true, &headers(&[("sid", "uuid:x")]), PEER),
            Ok(Subscription::Cancel {
                sid: "uuid:x".into()
            })
        );
    }

    #[test]
    fn a_sid_with_nt_or_callback_is_a_bad_request() {
        let sid = ("sid", "uuid:x");
        for other in [("nt", "upnp:event"), ("callback", "<http://192.168.1.2/>")] {
            assert_eq!(subscribe(&[sid, other]), Err(StatusCode::BAD_REQUEST));
            assert_eq!(
                parse(true, &headers(&[sid, other]), PEER),
                Err(StatusCode::BAD_REQUEST)
            );
        }
        assert_eq!(
            subscribe(&[sid, ("timeout", "Second-100")]),
            Ok(Subscription::Renew {
                sid: "uuid:x".into(),
                timeout: 100
            })
        );
    }

    #[test]
    fn callbacks_go_only_to_the_subscriber_itself_over_http() {
        for refused in [
            // CallStranger: another LAN host, a host outside, a name.
            "<http://192.168.1.3:5000/>",
            "<http://198.51.100.7/>",
            "<http://example.com/>",
            // Another scheme, user info, no host, port 0, junk.
            "<https://192.168.1.2/>",
            "<http://192.168.1.2@198.51.100.7/>",
            "</evt>",
            "<http://192.168.1.2:0/>",
            "http://192.168.1.2/",
            "<http://192.168.1.2/",
            // One of several for someone else.
            "<http://192.168.1.2/><http://192.168.1.3/>",
            // Too many.
            "<http://192.168.1.2/><http://192.168.1.2/><http://192.168.1.2/>\
             <http://192.168.1.2/><http://192.168.1.2/>",
        ] {
            assert_eq!(callbacks(refused, PEER), None, "{refused}");
        }
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout(None), DEFAULT_TIMEOUT);
        assert_eq!(timeout(Some("Second-600")), 600);
        assert_eq!(timeout(Some("second-600")), 600);
        assert_eq!(timeout(Some("Second-99999")), MAX_TIMEOUT);
        assert_eq!(timeout(Some("Second-1")), MIN_TIMEOUT);
        assert_eq!(timeout(Some("Second-infinite")), MAX_TIMEOUT);
        assert_eq!(timeout(Some("Second-")), DEFAULT_TIMEOUT);
        assert_eq!(timeout(Some("Minute-5")), DEFAULT_TIMEOUT);
        assert_eq!(timeout(Some("Sé")), DEFAULT_TIMEOUT);
    }
}
