//! NAT-PMP and PCP as portproxy's server reads them (`proto::natpmp`, `proto::pcp`): never a
//! panic, and every answer it would send has the shape the RFCs give it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portproxy_fuzz::proto::{natpmp, pcp};

fuzz_target!(|msg: &[u8]| {
    match natpmp::parse_request(msg, 7) {
        natpmp::Parsed::Refuse(reply) => {
            let reply = reply.to_vec();
            assert!(reply.len() == 8 && reply[1] & 0x80 != 0);
        }
        natpmp::Parsed::Request(request) => {
            assert!(msg.len() >= 2 && msg[0] == 0);
            // What a client would send for it reads back the same.
            let mut out = [0; 12];
            let len = request.encode(&mut out);
            assert_eq!(natpmp::parse_request(&out[..len], 7), natpmp::Parsed::Request(request));
        }
        natpmp::Parsed::Ignore => {}
    }
    match pcp::parse_request(msg) {
        pcp::Parsed::Refuse(code) => {
            let reply = pcp::error_response(msg, code, 7);
            assert!(reply.len() >= 24 && reply.len() <= pcp::MAX_LEN && reply.len() % 4 == 0);
            assert_eq!(pcp::parse_response(&reply).map(|r| r.result), Some(code));
        }
        pcp::Parsed::Request(request) => {
            assert!(msg.len() >= 24 && msg.len() <= pcp::MAX_LEN && msg.len() % 4 == 0);
            let reply = pcp::response(&request, 0, 60, 7, None);
            let parsed = pcp::parse_response(&reply).expect("a response parses");
            assert_eq!((parsed.opcode, parsed.map), (request.opcode, request.map));
        }
        pcp::Parsed::Ignore => assert!(msg.len() < 2 || msg[1] & 0x80 != 0),
    }
    let _ = natpmp::parse_public_address(msg);
});
