//! NAT-PMP / PCP framing checks: never panic, and whatever they accept has the shape the
//! relay relies on (direction bit, length rules of RFC 6886 and RFC 6887).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portproxy_fuzz::proto::port_control::{
    MapRequest, MapResponse, PCP_MAX_LEN, Protocol, check_request, check_response,
    natpmp_public_address,
};

fuzz_target!(|msg: &[u8]| {
    let request = check_request(msg);
    let response = check_response(msg);
    // The R bit decides the direction: no datagram is both.
    assert!(request.is_err() || response.is_err(), "{msg:02x?} accepted both ways");
    for (checked, is_response) in [(request, false), (response, true)] {
        let Ok(checked) = checked else { continue };
        assert!(msg.len() >= 2);
        assert_eq!(msg[1] & 0x80 != 0, is_response);
        assert!(!checked.to_string().is_empty());
        // The typed views the mapping table learns from: never a panic, one direction each.
        let request = MapRequest::parse(&checked);
        let response = MapResponse::parse(&checked);
        assert!(request.is_none() || response.is_none());
        assert!(is_response || natpmp_public_address(&checked).is_none());
        if let (Some(response), Ok(other)) = (response, check_request(msg)) {
            let _ = MapRequest::parse(&other).map(|r| response.answers(&r));
        }
        match checked.protocol {
            Protocol::NatPmp => {
                assert_eq!(msg[0], 0);
                if !is_response {
                    assert!(matches!((msg[1], msg.len()), (0, 2) | (1 | 2, 12)), "{msg:02x?}");
                }
            }
            Protocol::Pcp => {
                assert_ne!(msg[0], 0);
                assert!((24..=PCP_MAX_LEN).contains(&msg.len()) && msg.len() % 4 == 0, "{msg:02x?}");
            }
        }
    }
});
