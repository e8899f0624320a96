//! UPnP HTTP heads and SOAP mapping actions: never panic, and what they accept is what the
//! relay relies on (a head no longer than the input and MAX_HEAD, a body length within
//! MAX_BODY, a grant only for a 200 answer). The control point's reading of a description
//! and of faults: never a panic, at most 64 services.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portproxy_fuzz::proto::upnp::{self, MAX_BODY, MAX_HEAD};

const ACTIONS: [&str; 4] = [
    "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping",
    "urn:schemas-upnp-org:service:WANIPConnection:2#AddAnyPortMapping",
    "urn:schemas-upnp-org:service:WANIPConnection:1#DeletePortMapping",
    "urn:schemas-upnp-org:service:WANIPConnection:1#GetExternalIPAddress",
];

fuzz_target!(|data: &[u8]| {
    for parse in [upnp::request_head, upnp::response_head] {
        if let Ok(Some(head)) = parse(data) {
            assert!(head.len <= data.len() && head.len <= MAX_HEAD);
            if let Ok(len) = head.body_len() {
                assert!(len <= MAX_BODY);
            }
        }
    }
    if let Ok(services) = upnp::services(data) {
        assert!(services.len() <= 64);
    }
    let _ = upnp::fault_code(data);
    // The first byte picks the action, the rest is the SOAP body.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let soap_action = ACTIONS[usize::from(pick) % ACTIONS.len()];
    match upnp::request(soap_action, body) {
        Ok(Some(action)) => {
            assert!(upnp::is_mapping_action(soap_action));
            assert_eq!(upnp::response(&action, 500, body), Ok(None));
            let _ = upnp::response(&action, 200, body);
        }
        Ok(None) => assert!(!upnp::is_mapping_action(soap_action)),
        Err(_) => assert!(upnp::is_mapping_action(soap_action)),
    }
});
