//! GENA's SUBSCRIBE and UNSUBSCRIBE headers as a LAN host sends them (`proto::gena`): never
//! a panic, a refusal is 400 or 412, and what is taken keeps the IGD's promises: callbacks
//! only to the subscriber itself (CallStranger), at most `MAX_CALLBACKS`, each a request
//! target without spaces or control characters; a TIMEOUT within the bounds.
#![no_main]

use std::net::Ipv4Addr;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portproxy_fuzz::proto::gena::{
    self, Callback, MAX_CALLBACKS, MAX_TIMEOUT, MIN_TIMEOUT, Subscription,
};

const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

fn check_callbacks(callbacks: &[Callback]) {
    assert!(!callbacks.is_empty() && callbacks.len() <= MAX_CALLBACKS);
    for c in callbacks {
        assert_eq!(*c.addr.ip(), PEER, "{c:?}");
        assert_ne!(c.addr.port(), 0, "{c:?}");
        assert!(c.target.starts_with('/'), "{c:?}");
        assert!(
            !c.target.bytes().any(|b| b == b' ' || b.is_ascii_control()),
            "{c:?}"
        );
    }
}

fn check_timeout(timeout: u32) {
    assert!((MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout), "{timeout}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // The headers: lines of `name: value`, as hyper would have taken them.
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    match gena::parse(flags & 1 == 1, &headers, PEER) {
        Ok(Subscription::New { callbacks, timeout }) => {
            check_callbacks(&callbacks);
            check_timeout(timeout);
        }
        Ok(Subscription::Renew { sid, timeout }) => {
            assert!(!sid.is_empty());
            check_timeout(timeout);
        }
        Ok(Subscription::Cancel { sid }) => assert!(!sid.is_empty()),
        Err(status) => assert!(matches!(status.as_u16(), 400 | 412), "{status}"),
    }
    // The input as one CALLBACK header and as one TIMEOUT.
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Some(callbacks) = gena::callbacks(text, PEER) {
            check_callbacks(&callbacks);
        }
        check_timeout(gena::timeout(Some(text)));
    }
});
