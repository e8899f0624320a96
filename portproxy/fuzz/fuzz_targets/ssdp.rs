//! SSDP parsing: never panics, MX stays within 1..=5, and what parses has the start line
//! its kind says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portproxy_fuzz::proto::ssdp::{Kind, MAX_LEN, Message};

fuzz_target!(|datagram: &[u8]| {
    let Ok(msg) = Message::parse(datagram) else { return };
    assert!(datagram.len() <= MAX_LEN);
    assert!((1..=5).contains(&msg.mx()));
    let summary = msg.summary();
    assert!(!summary.is_empty());
    let start = datagram.trim_ascii_start();
    let expected: &[u8] = match msg.kind {
        Kind::Search => b"M-SEARCH",
        Kind::Notify => b"NOTIFY",
        Kind::Response => b"HTTP/1.1 200",
    };
    assert!(start.len() >= expected.len() && start[..expected.len()].eq_ignore_ascii_case(expected));
    for name in ["ST", "NT", "NTS", "MX", "MAN", "LOCATION", "HOST", ""] {
        if let Some(value) = msg.header(name) {
            assert_eq!(value, value.trim());
        }
    }
    // A header name taken from the input itself.
    if let Some(name) = std::str::from_utf8(datagram).ok().and_then(|t| t.lines().nth(1)).and_then(|l| l.split(':').next()) {
        let _ = msg.header(name);
    }
});
