//! PCP (RFC 6887) as a server reads and writes it: portproxy answers PCP itself when the
//! CGN does not speak it or `--mode proxy` says so (see `serve`), and speaks it upstream
//! (see `upstream`). Only what a CPE's proxy needs: ANNOUNCE and MAP; PEER is refused with
//! UNSUPP_OPCODE (a server may, RFC 6887 §14).

use std::net::{Ipv4Addr, Ipv6Addr};

pub const VERSION: u8 = 2;
/// Largest message (RFC 6887 §7).
pub const MAX_LEN: usize = 1100;
const HEADER_LEN: usize = 24;
const MAP_LEN: usize = 36;
const RESPONSE_BIT: u8 = 0x80;

pub const OPCODE_ANNOUNCE: u8 = 0;
pub const OPCODE_MAP: u8 = 1;

const OPTION_THIRD_PARTY: u8 = 1;
const OPTION_PREFER_FAILURE: u8 = 2;
const OPTION_FILTER: u8 = 3;
/// Option codes below this are mandatory to process (RFC 6887 §7.3).
const OPTIONAL_FROM: u8 = 128;

/// Result codes (RFC 6887 §7.4).
pub mod result {
    pub const SUCCESS: u8 = 0;
    pub const UNSUPP_VERSION: u8 = 1;
    pub const NOT_AUTHORIZED: u8 = 2;
    pub const MALFORMED_REQUEST: u8 = 3;
    pub const UNSUPP_OPCODE: u8 = 4;
    pub const UNSUPP_OPTION: u8 = 5;
    pub const MALFORMED_OPTION: u8 = 6;
    pub const NETWORK_FAILURE: u8 = 7;
    pub const NO_RESOURCES: u8 = 8;
    pub const UNSUPP_PROTOCOL: u8 = 9;
    pub const USER_EX_QUOTA: u8 = 10;
    pub const CANNOT_PROVIDE_EXTERNAL: u8 = 11;
    pub const ADDRESS_MISMATCH: u8 = 12;
    pub const EXCESSIVE_REMOTE_PEERS: u8 = 13;

    /// Short-lifetime errors: the condition is expected to pass; retry after the lifetime.
    pub fn is_short(code: u8) -> bool {
        matches!(code, NETWORK_FAILURE | NO_RESOURCES | USER_EX_QUOTA)
    }
}

/// The lifetime an error response carries: how long the client should not ask again
/// (RFC 6887 §7.2: short for transient errors, long for the rest).
pub fn error_lifetime(code: u8) -> u32 {
    if result::is_short(code) { 30 } else { 1800 }
}

/// The MAP opcode's payload (RFC 6887 §11.1), in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Map {
    pub nonce: [u8; 12],
    /// IANA protocol number: 6 TCP, 17 UDP, 0 all.
    pub protocol: u8,
    pub internal_port: u16,
    /// Suggested (request) or assigned (response) external port and address.
    pub external_port: u16,
    pub external_addr: Ipv6Addr,
}

impl Map {
    fn read(body: &[u8]) -> Map {
        Map {
            nonce: body[..12].try_into().expect("12 bytes"),
            protocol: body[12],
            internal_port: be16(body, 16),
            external_port: be16(body, 18),
            external_addr: ipv6(&body[20..36]),
        }
    }

    fn write(&self, m: &mut Vec<u8>) {
        m.extend_from_slice(&self.nonce);
        m.extend_from_slice(&[self.protocol, 0, 0, 0]);
        m.extend_from_slice(&self.internal_port.to_be_bytes());
        m.extend_from_slice(&self.external_port.to_be_bytes());
        m.extend_from_slice(&self.external_addr.octets());
    }
}

/// A valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub opcode: u8,
    pub lifetime: u32,
    /// The PCP client IP address field (IPv4 as ::ffff:a.b.c.d).
    pub client: Ipv6Addr,
    /// MAP only.
    pub map: Option<Map>,
    /// THIRD_PARTY: the host the mapping is for, when not the sender.
    pub third_party: Option<Ipv6Addr>,
    /// PREFER_FAILURE: the suggested external port or nothing.
    pub prefer_failure: bool,
}

/// What a server does with a datagram (RFC 6887 §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Silently dropped: shorter than 2 bytes, or a response.
    Ignore,
    /// Answered with this result code (an error response built by [`error_response`]).
    Refuse(u8),
    Request(Request),
}

/// Parses and validates a request as a server must (RFC 6887 §8.3, §11.1).
pub fn parse_request(msg: &[u8]) -> Parsed {
    if msg.len() < 2 || msg[1] & RESPONSE_BIT != 0 {
        return Parsed::Ignore;
    }
    if msg[0] != VERSION {
        return Parsed::Refuse(result::UNSUPP_VERSION);
    }
    if msg.len() < HEADER_LEN || msg.len() > MAX_LEN || !msg.len().is_multiple_of(4) {
        return Parsed::Refuse(result::MALFORMED_REQUEST);
    }
    let opcode = msg[1];
    let payload_len = match opcode {
        OPCODE_ANNOUNCE => 0,
        OPCODE_MAP => MAP_LEN,
        _ => return Parsed::Refuse(result::UNSUPP_OPCODE),
    };
    let body = &msg[HEADER_LEN..];
    if body.len() < payload_len {
        return Parsed::Refuse(result::MALFORMED_REQUEST);
    }
    let mut request = Request {
        opcode,
        lifetime: be32(msg, 4),
        client: ipv6(&msg[8..24]),
        map: (opcode == OPCODE_MAP).then(|| Map::read(body)),
        third_party: None,
        prefer_failure: false,
    };
    if let Err(code) = read_options(&body[payload_len..], &mut request) {
        return Parsed::Refuse(code);
    }
    if let Some(map) = &request.map {
        // Protocol 0 means every protocol, with internal port 0: only a delete of all of the
        // client's mappings makes sense of it here. Port 0 alone is malformed (§11.1).
        match (map.protocol, map.internal_port, request.lifetime) {
            (0, 0, 0) => {}
            (0, _, _) => return Parsed::Refuse(result::UNSUPP_PROTOCOL),
            (6 | 17, 0, _) => return Parsed::Refuse(result::MALFORMED_REQUEST),
            (6 | 17, _, _) => {}
            _ => return Parsed::Refuse(result::UNSUPP_PROTOCOL),
        }
    }
    Parsed::Request(request)
}

/// Options: code(1) reserved(1) length(2) data padded to 4 (RFC 6887 §7.3).
fn read_options(mut rest: &[u8], request: &mut Request) -> Result<(), u8> {
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(result::MALFORMED_OPTION);
        }
        let code = rest[0];
        let len = usize::from(be16(rest, 2));
        let padded = 4 + len.div_ceil(4) * 4;
        if padded > rest.len() {
            return Err(result::MALFORMED_OPTION);
        }
        let data = &rest[4..4 + len];
        let map = request.opcode == OPCODE_MAP;
        match code {
            OPTION_THIRD_PARTY if len == 16 && request.third_party.is_none() => {
                request.third_party = Some(ipv6(data));
            }
            OPTION_PREFER_FAILURE if map && len == 0 && !request.prefer_failure => {
                request.prefer_failure = true;
            }
            // Malformed: wrong length, twice, or not valid for the opcode.
            OPTION_THIRD_PARTY | OPTION_PREFER_FAILURE => return Err(result::MALFORMED_OPTION),
            // Filters would have to be kept by the CGN, which NAT-PMP cannot express.
            OPTION_FILTER => return Err(result::UNSUPP_OPTION),
            code if code < OPTIONAL_FROM => return Err(result::UNSUPP_OPTION),
            // Optional options not understood are ignored (and not echoed).
            _ => {}
        }
        rest = &rest[padded..];
    }
    Ok(())
}

/// An error response: the request copied (at most 1100 bytes, padded to a 24-byte header and
/// a multiple of 4), with the response header's fields set (RFC 6887 §7.2, §8.3).
pub fn error_response(request: &[u8], code: u8, epoch: u32) -> Vec<u8> {
    let mut m = request[..request.len().min(MAX_LEN)].to_vec();
    m.resize(m.len().max(HEADER_LEN).next_multiple_of(4), 0);
    // An unsupported version is answered in the version this server speaks (§9).
    m[0] = VERSION;
    m[1] |= RESPONSE_BIT;
    write_header(&mut m, code, error_lifetime(code), epoch);
    m
}

fn write_header(m: &mut [u8], code: u8, lifetime: u32, epoch: u32) {
    m[2] = 0;
    m[3] = code;
    m[4..8].copy_from_slice(&lifetime.to_be_bytes());
    m[8..12].copy_from_slice(&epoch.to_be_bytes());
    m[12..24].fill(0);
}

/// A response to a valid `request` with `code`: ANNOUNCE's header, or MAP's with `map` (the
/// assigned external port and address on success, the request's own on an error) and the
/// options the server processed (THIRD_PARTY, PREFER_FAILURE).
pub fn response(
    request: &Request,
    code: u8,
    lifetime: u32,
    epoch: u32,
    map: Option<Map>,
) -> Vec<u8> {
    let lifetime = if code == result::SUCCESS {
        lifetime
    } else {
        error_lifetime(code)
    };
    let mut m = vec![VERSION, RESPONSE_BIT | request.opcode];
    m.resize(HEADER_LEN, 0);
    write_header(&mut m, code, lifetime, epoch);
    if let Some(map) = map.or(request.map) {
        map.write(&mut m);
    }
    if let Some(host) = request.third_party {
        m.extend_from_slice(&[OPTION_THIRD_PARTY, 0, 0, 16]);
        m.extend_from_slice(&host.octets());
    }
    if request.prefer_failure {
        m.extend_from_slice(&[OPTION_PREFER_FAILURE, 0, 0, 0]);
    }
    m
}

/// The unsolicited ANNOUNCE a server multicasts to 224.0.0.1:5350 after it lost state or
/// its external address changed (RFC 6887 §14.1.3).
pub fn announcement(epoch: u32) -> Vec<u8> {
    let mut m = vec![VERSION, RESPONSE_BIT | OPCODE_ANNOUNCE];
    m.resize(HEADER_LEN, 0);
    write_header(&mut m, result::SUCCESS, 0, epoch);
    m
}

/// A request as a client writes it: ANNOUNCE (`map` None) or MAP, from `client`.
pub fn request(client: Ipv4Addr, lifetime: u32, map: Option<Map>, prefer_failure: bool) -> Vec<u8> {
    let opcode = if map.is_some() {
        OPCODE_MAP
    } else {
        OPCODE_ANNOUNCE
    };
    let mut m = vec![VERSION, opcode, 0, 0];
    m.extend_from_slice(&lifetime.to_be_bytes());
    m.extend_from_slice(&client.to_ipv6_mapped().octets());
    if let Some(map) = map {
        map.write(&mut m);
    }
    if prefer_failure {
        m.extend_from_slice(&[OPTION_PREFER_FAILURE, 0, 0, 0]);
    }
    m
}

/// A response as a client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub opcode: u8,
    pub result: u8,
    pub lifetime: u32,
    pub epoch: u32,
    /// MAP only (absent from short error responses).
    pub map: Option<Map>,
}

/// Parses a response from a PCP server; `None` for anything else (including a NAT-PMP
/// server's "unsupported version", whose first byte is 0).
pub fn parse_response(msg: &[u8]) -> Option<Response> {
    if msg.len() < HEADER_LEN || msg.len() > MAX_LEN || msg[0] != VERSION {
        return None;
    }
    if msg[1] & RESPONSE_BIT == 0 {
        return None;
    }
    let opcode = msg[1] & !RESPONSE_BIT;
    let body = &msg[HEADER_LEN..];
    Some(Response {
        opcode,
        result: msg[3],
        lifetime: be32(msg, 4),
        epoch: be32(msg, 8),
        map: (opcode == OPCODE_MAP && body.len() >= MAP_LEN).then(|| Map::read(body)),
    })
}

/// IPv4 as PCP carries it (::ffff:a.b.c.d).
pub fn mapped(addr: Ipv4Addr) -> Ipv6Addr {
    addr.to_ipv6_mapped()
}

fn be16(msg: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([msg[at], msg[at + 1]])
}

fn be32(msg: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]])
}

fn ipv6(bytes: &[u8]) -> Ipv6Addr {
    let octets: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    fn map(protocol: u8, internal_port: u16) -> Map {
        Map {
            nonce: [7; 12],
            protocol,
            internal_port,
            external_port: 9000,
            external_addr: Ipv6Addr::UNSPECIFIED,
        }
    }

    fn option(code: u8, data: &[u8]) -> Vec<u8> {
        let mut o = vec![code, 0];
        o.extend_from_slice(&(data.len() as u16).to_be_bytes());
        o.extend_from_slice(data);
        o.resize(o.len().next_multiple_of(4), 0);
        o
    }

    fn with_options(mut m: Vec<u8>, options: &[Vec<u8>]) -> Vec<u8> {
        for o in options {
            m.extend_from_slice(o);
        }
        m
    }

    #[test]
    fn a_map_request_round_trips() {
        let msg = request(HOST, 600, Some(map(6, 8080)), true);
        let Parsed::Request(r) = parse_request(&msg) else {
            panic!("{:?}", parse_request(&msg));
        };
        assert_eq!(r.client, mapped(HOST));
        assert_eq!(
            (r.opcode, r.lifetime, r.prefer_failure),
            (OPCODE_MAP, 600, true)
        );
        assert_eq!(r.map, Some(map(6, 8080)));
        let mut granted = map(6, 8080);
        granted.external_addr = mapped(Ipv4Addr::new(203, 0, 114, 1));
        let reply = response(&r, result::SUCCESS, 300, 42, Some(granted));
        assert_eq!(reply.len(), 24 + 36 + 4, "PREFER_FAILURE echoed");
        let parsed = parse_response(&reply).unwrap();
        assert_eq!(
            (parsed.result, parsed.lifetime, parsed.epoch, parsed.map),
            (0, 300, 42, Some(granted))
        );
    }

    #[test]
    fn what_a_server_refuses() {
        let good = request(HOST, 600, Some(map(17, 5000)), false);
        assert_eq!(parse_request(&good[..1]), Parsed::Ignore);
        let mut response = good.clone();
        response[1] |= RESPONSE_BIT;
        assert_eq!(parse_request(&response), Parsed::Ignore);
        let mut v1 = good.clone();
        v1[0] = 1;
        assert_eq!(parse_request(&v1), Parsed::Refuse(result::UNSUPP_VERSION));
        assert_eq!(
            parse_request(&good[..20]),
            Parsed::Refuse(result::MALFORMED_REQUEST)
        );
        assert_eq!(
            parse_request(&good[..50]),
            Parsed::Refuse(result::MALFORMED_REQUEST)
        );
        assert_eq!(
            parse_request(&good[..48]),
            Parsed::Refuse(result::MALFORMED_REQUEST)
        );
        let mut peer = good.clone();
        peer[1] = 2;
        assert_eq!(parse_request(&peer), Parsed::Refuse(result::UNSUPP_OPCODE));
        let sctp = request(HOST, 600, Some(map(132, 5000)), false);
        assert_eq!(
            parse_request(&sctp),
            Parsed::Refuse(result::UNSUPP_PROTOCOL)
        );
        let port_zero = request(HOST, 600, Some(map(6, 0)), false);
        assert_eq!(
            parse_request(&port_zero),
            Parsed::Refuse(result::MALFORMED_REQUEST)
        );
        let delete_all = request(HOST, 0, Some(map(0, 0)), false);
        assert!(matches!(parse_request(&delete_all), Parsed::Request(_)));
    }

    #[test]
    fn options() {
        let base = || request(HOST, 600, Some(map(6, 8080)), false);
        let other = Ipv4Addr::new(192, 168, 1, 3).to_ipv6_mapped().octets();
        let Parsed::Request(r) = parse_request(&with_options(base(), &[option(1, &other)])) else {
            panic!("THIRD_PARTY");
        };
        assert_eq!(
            r.third_party,
            Some(Ipv4Addr::new(192, 168, 1, 3).to_ipv6_mapped())
        );
        let twice = with_options(base(), &[option(1, &other), option(1, &other)]);
        assert_eq!(
            parse_request(&twice),
            Parsed::Refuse(result::MALFORMED_OPTION)
        );
        let short = with_options(base(), &[option(1, &other[..4])]);
        assert_eq!(
            parse_request(&short),
            Parsed::Refuse(result::MALFORMED_OPTION)
        );
        let filter = with_options(base(), &[option(3, &[0; 20])]);
        assert_eq!(
            parse_request(&filter),
            Parsed::Refuse(result::UNSUPP_OPTION)
        );
        let unknown_mandatory = with_options(base(), &[option(99, &[])]);
        assert_eq!(
            parse_request(&unknown_mandatory),
            Parsed::Refuse(result::UNSUPP_OPTION)
        );
        let unknown_optional = with_options(base(), &[option(200, &[1, 2, 3])]);
        assert!(matches!(
            parse_request(&unknown_optional),
            Parsed::Request(_)
        ));
        let mut overrun = base();
        overrun.extend_from_slice(&[1, 0, 0, 16]);
        assert_eq!(
            parse_request(&overrun),
            Parsed::Refuse(result::MALFORMED_OPTION)
        );
        let announce_prefer = with_options(request(HOST, 0, None, false), &[option(2, &[])]);
        assert_eq!(
            parse_request(&announce_prefer),
            Parsed::Refuse(result::MALFORMED_OPTION)
        );
    }

    #[test]
    fn error_responses_copy_the_request() {
        let msg = request(HOST, 600, Some(map(6, 8080)), false);
        let reply = error_response(&msg, result::NOT_AUTHORIZED, 5);
        assert_eq!(reply.len(), msg.len());
        assert_eq!(&reply[24..], &msg[24..], "payload copied");
        let parsed = parse_response(&reply).unwrap();
        assert_eq!((parsed.result, parsed.lifetime, parsed.epoch), (2, 1800, 5));
        let short = error_response(&[2, 1, 0], result::MALFORMED_REQUEST, 5);
        assert_eq!(short.len(), 24);
        let mut v1 = msg.clone();
        v1[0] = 1;
        assert_eq!(error_response(&v1, result::UNSUPP_VERSION, 5)[0], VERSION);
        assert_eq!(error_response(&vec![2; 1200], 3, 5).len(), MAX_LEN);
    }

    #[test]
    fn a_natpmp_refusal_is_no_pcp_response() {
        assert_eq!(parse_response(&[0, 0x82, 0, 1, 0, 0, 0, 1]), None);
        let announce = announcement(77);
        let parsed = parse_response(&announce).unwrap();
        assert_eq!((parsed.opcode, parsed.epoch, parsed.map), (0, 77, None));
    }
}
