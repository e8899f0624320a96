//! NAT-PMP (RFC 6886) and PCP (RFC 6887) share UDP port 5351 and are told apart
//! by the first byte: 0 is NAT-PMP, 1 (draft) and 2 are PCP. The relay does not
//! answer anything itself; it checks that a datagram is framed like a request
//! (from the LAN) or a response (from the CGN) and describes it for the log.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::Transport;

/// Largest PCP message (RFC 6887 §7).
pub const PCP_MAX_LEN: usize = 1100;
const PCP_HEADER_LEN: usize = 24;
const PCP_MAP_LEN: usize = 36;
const PCP_PEER_LEN: usize = 56;
const RESPONSE_BIT: u8 = 0x80;

/// Why a datagram was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    TooShort,
    TooLong,
    /// PCP messages are a multiple of 4 bytes.
    NotAligned,
    /// A response where a request was expected, or the other way round.
    WrongDirection,
    /// NAT-PMP opcode other than 0, 1, 2 (requests) or their responses.
    UnknownOpcode,
    /// NAT-PMP request whose length does not match its opcode.
    BadLength,
    /// A PCP option that overruns the message.
    OptionOverrun,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::TooShort => "too short",
            Malformed::TooLong => "too long",
            Malformed::NotAligned => "length not a multiple of 4",
            Malformed::WrongDirection => "response bit has the wrong value",
            Malformed::UnknownOpcode => "unknown opcode",
            Malformed::BadLength => "length does not match the opcode",
            Malformed::OptionOverrun => "option overruns the message",
        })
    }
}

/// Which protocol a valid message speaks (for counters and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    NatPmp,
    Pcp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::NatPmp => "nat-pmp",
            Protocol::Pcp => "pcp",
        }
    }
}

/// A checked message. Displaying it describes it in one line; that work is
/// only done when the line is logged (`-vv`), not for every relayed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked<'a> {
    pub protocol: Protocol,
    response: bool,
    msg: &'a [u8],
}

/// Checks a datagram received from a LAN client.
pub fn check_request(msg: &[u8]) -> Result<Checked<'_>, Malformed> {
    check(msg, false)
}

/// Checks a datagram received from the CGN.
pub fn check_response(msg: &[u8]) -> Result<Checked<'_>, Malformed> {
    check(msg, true)
}

fn check(msg: &[u8], response: bool) -> Result<Checked<'_>, Malformed> {
    if msg.len() < 2 {
        return Err(Malformed::TooShort);
    }
    if (msg[1] & RESPONSE_BIT != 0) != response {
        return Err(Malformed::WrongDirection);
    }
    let protocol = if msg[0] == 0 {
        if response {
            natpmp_response(msg)?
        } else {
            natpmp_request(msg)?
        }
        Protocol::NatPmp
    } else {
        // Any other version is framed as PCP: versions the CGN does not speak are
        // still relayed so that it can answer UNSUPP_VERSION, which clients use to
        // fall back (RFC 6887 §9).
        pcp(msg, response)?;
        Protocol::Pcp
    };
    Ok(Checked {
        protocol,
        response,
        msg,
    })
}

fn be16(msg: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([msg[at], msg[at + 1]])
}

fn be32(msg: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]])
}

fn natpmp_request(msg: &[u8]) -> Result<(), Malformed> {
    match (msg[1], msg.len()) {
        (0, 2) | (1 | 2, 12) => Ok(()),
        (0..=2, _) => Err(Malformed::BadLength),
        _ => Err(Malformed::UnknownOpcode),
    }
}

fn natpmp_response(msg: &[u8]) -> Result<(), Malformed> {
    // Errors for unknown opcodes come back as 8-byte messages (RFC 6886 §3.5).
    let needed = match msg[1] & !RESPONSE_BIT {
        0 => 12,
        1 | 2 => 16,
        _ => 8,
    };
    if msg.len() < needed {
        return Err(Malformed::TooShort);
    }
    Ok(())
}

fn pcp(msg: &[u8], response: bool) -> Result<(), Malformed> {
    if msg.len() < PCP_HEADER_LEN {
        return Err(Malformed::TooShort);
    }
    if msg.len() > PCP_MAX_LEN {
        return Err(Malformed::TooLong);
    }
    if !msg.len().is_multiple_of(4) {
        return Err(Malformed::NotAligned);
    }
    let body = &msg[PCP_HEADER_LEN..];
    let payload_len = pcp_payload_len(msg[1] & !RESPONSE_BIT);
    if body.len() >= payload_len {
        check_options(&body[payload_len..])
    } else if response && msg[3] != 0 {
        // Short or unknown-opcode error responses may omit the payload.
        Ok(())
    } else {
        Err(Malformed::TooShort)
    }
}

fn pcp_payload_len(opcode: u8) -> usize {
    match opcode {
        1 => PCP_MAP_LEN,
        2 => PCP_PEER_LEN,
        _ => 0,
    }
}

impl fmt::Display for Checked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = self.msg;
        let op = msg[1] & !RESPONSE_BIT;
        let natpmp_proto = if op == 1 { "udp" } else { "tcp" };
        match (self.protocol, self.response, op) {
            (Protocol::NatPmp, false, 0) => write!(f, "public address request"),
            (Protocol::NatPmp, false, _) => write!(
                f,
                "map {natpmp_proto} internal {} suggested external {} lifetime {}s",
                be16(msg, 4),
                be16(msg, 6),
                be32(msg, 8)
            ),
            (Protocol::NatPmp, true, 0) => {
                write!(
                    f,
                    "result {} public address {}",
                    be16(msg, 2),
                    Ipv4Addr::from(be32(msg, 8))
                )
            }
            (Protocol::NatPmp, true, 1 | 2) => write!(
                f,
                "result {} map {natpmp_proto} internal {} external {} lifetime {}s",
                be16(msg, 2),
                be16(msg, 8),
                be16(msg, 10),
                be32(msg, 12)
            ),
            (Protocol::NatPmp, true, _) => write!(f, "result {} for opcode {op}", be16(msg, 2)),
            (Protocol::Pcp, _, _) => self.fmt_pcp(f, op),
        }
    }
}

impl Checked<'_> {
    fn fmt_pcp(&self, f: &mut fmt::Formatter<'_>, opcode: u8) -> fmt::Result {
        let msg = self.msg;
        write!(f, "v{} ", msg[0])?;
        match opcode {
            0 => write!(f, "ANNOUNCE")?,
            1 => write!(f, "MAP")?,
            2 => write!(f, "PEER")?,
            n => write!(f, "opcode {n}")?,
        }
        if self.response {
            write!(f, " result {}", msg[3])?;
        } else {
            write!(f, " client {}", show_ip(&msg[8..24]))?;
        }
        let body = &msg[PCP_HEADER_LEN..];
        if (opcode == 1 || opcode == 2) && body.len() >= pcp_payload_len(opcode) {
            match body[12] {
                0 => write!(f, " all")?,
                6 => write!(f, " tcp")?,
                17 => write!(f, " udp")?,
                n => write!(f, " proto {n}")?,
            }
            write!(
                f,
                " internal {} external {}:{}",
                be16(body, 16),
                show_ip(&body[20..36]),
                be16(body, 18)
            )?;
        }
        write!(f, " lifetime {}s", be32(msg, 4))
    }
}

/// Options: code(1) reserved(1) length(2) data padded to 4 (RFC 6887 §7.3).
fn check_options(mut rest: &[u8]) -> Result<(), Malformed> {
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(Malformed::OptionOverrun);
        }
        let len = usize::from(be16(rest, 2));
        let padded = 4 + len.div_ceil(4) * 4;
        if padded > rest.len() {
            return Err(Malformed::OptionOverrun);
        }
        rest = &rest[padded..];
    }
    Ok(())
}

/// PCP carries IPv4 addresses as IPv4-mapped IPv6 (::ffff:a.b.c.d).
fn show_ip(bytes: &[u8]) -> String {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes);
    let ip = Ipv6Addr::from(octets);
    match ip.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => ip.to_string(),
    }
}

/// PCP option THIRD_PARTY: the host a mapping is for, when not the sender.
const PCP_OPTION_THIRD_PARTY: u8 = 1;
const PCP_OPCODE_MAP: u8 = 1;
const NATPMP_RESPONSE_MAP_LEN: usize = 16;

/// A mapping request, as far as matching its response needs (typed view of a
/// checked request; other requests give `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapRequest {
    /// NAT-PMP map: protocol and internal port (RFC 6886 §3.3).
    NatPmp {
        transport: Transport,
        internal_port: u16,
    },
    /// PCP MAP: nonce, protocol number and internal port (RFC 6887 §11.1).
    Pcp {
        nonce: [u8; 12],
        protocol: u8,
        internal_port: u16,
    },
}

impl MapRequest {
    /// The mapping request in a checked request, if it is one.
    pub fn parse(checked: &Checked<'_>) -> Option<MapRequest> {
        let msg = checked.msg;
        if checked.response {
            return None;
        }
        match (checked.protocol, msg[1]) {
            (Protocol::NatPmp, 1 | 2) => Some(MapRequest::NatPmp {
                transport: natpmp_transport(msg[1]),
                internal_port: be16(msg, 4),
            }),
            (Protocol::Pcp, PCP_OPCODE_MAP) if msg.len() >= PCP_HEADER_LEN + PCP_MAP_LEN => {
                let body = &msg[PCP_HEADER_LEN..];
                Some(MapRequest::Pcp {
                    nonce: body[..12].try_into().expect("12 bytes"),
                    protocol: body[12],
                    internal_port: be16(body, 16),
                })
            }
            _ => None,
        }
    }
}

/// A mapping response from the CGN: what it granted (or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapResponse {
    /// 0 is success in both protocols.
    pub result: u16,
    /// Granted lifetime in seconds; 0 confirms a delete.
    pub lifetime: u32,
    pub internal_port: u16,
    pub external_port: u16,
    /// PCP carries the external address; NAT-PMP only in its public address response.
    pub external_addr: Option<Ipv4Addr>,
    /// The protocol number (6 TCP, 17 UDP, 0 all).
    pub protocol: u8,
    /// PCP only.
    pub nonce: Option<[u8; 12]>,
    /// PCP THIRD_PARTY option: the host the mapping is for.
    pub third_party: Option<Ipv4Addr>,
}

impl MapResponse {
    /// The mapping response in a checked response, if it is one.
    pub fn parse(checked: &Checked<'_>) -> Option<MapResponse> {
        let msg = checked.msg;
        if !checked.response {
            return None;
        }
        let opcode = msg[1] & !RESPONSE_BIT;
        match checked.protocol {
            Protocol::NatPmp
                if (opcode == 1 || opcode == 2) && msg.len() >= NATPMP_RESPONSE_MAP_LEN =>
            {
                Some(MapResponse {
                    result: be16(msg, 2),
                    lifetime: be32(msg, 12),
                    internal_port: be16(msg, 8),
                    external_port: be16(msg, 10),
                    external_addr: None,
                    protocol: match natpmp_transport(opcode) {
                        Transport::Udp => 17,
                        Transport::Tcp => 6,
                    },
                    nonce: None,
                    third_party: None,
                })
            }
            Protocol::Pcp
                if opcode == PCP_OPCODE_MAP && msg.len() >= PCP_HEADER_LEN + PCP_MAP_LEN =>
            {
                let body = &msg[PCP_HEADER_LEN..];
                Some(MapResponse {
                    result: u16::from(msg[3]),
                    lifetime: be32(msg, 4),
                    internal_port: be16(body, 16),
                    external_port: be16(body, 18),
                    external_addr: ipv4_mapped(&body[20..36]),
                    protocol: body[12],
                    nonce: Some(body[..12].try_into().expect("12 bytes")),
                    third_party: third_party(&body[PCP_MAP_LEN..]),
                })
            }
            _ => None,
        }
    }

    /// Whether this answers `request` (the checks a client makes, RFC 6886 §3.3 and RFC 6887 §11.3).
    pub fn answers(&self, request: &MapRequest) -> bool {
        match *request {
            MapRequest::NatPmp {
                transport,
                internal_port,
            } => {
                self.nonce.is_none()
                    && self.protocol == transport.number()
                    && self.internal_port == internal_port
            }
            MapRequest::Pcp {
                nonce,
                protocol,
                internal_port,
            } => {
                self.nonce == Some(nonce)
                    && self.protocol == protocol
                    && self.internal_port == internal_port
            }
        }
    }
}

/// NAT-PMP's public address response: the CGN's external address.
pub fn natpmp_public_address(checked: &Checked<'_>) -> Option<Ipv4Addr> {
    let msg = checked.msg;
    (checked.protocol == Protocol::NatPmp
        && checked.response
        && msg[1] == RESPONSE_BIT
        && be16(msg, 2) == 0)
        .then(|| Ipv4Addr::from(be32(msg, 8)))
}

fn natpmp_transport(opcode: u8) -> Transport {
    if opcode & !RESPONSE_BIT == 1 {
        Transport::Udp
    } else {
        Transport::Tcp
    }
}

impl Transport {
    /// The IP protocol number (PCP's protocol field).
    pub fn number(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Transport> {
        match n {
            6 => Some(Transport::Tcp),
            17 => Some(Transport::Udp),
            _ => None,
        }
    }
}

fn ipv4_mapped(bytes: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 16] = bytes.try_into().ok()?;
    Ipv6Addr::from(octets).to_ipv4_mapped()
}

/// The address of the first THIRD_PARTY option (framing already checked).
fn third_party(mut options: &[u8]) -> Option<Ipv4Addr> {
    while options.len() >= 4 {
        let len = usize::from(be16(options, 2));
        let padded = 4 + len.div_ceil(4) * 4;
        if options[0] == PCP_OPTION_THIRD_PARTY && len == 16 && options.len() >= 20 {
            return ipv4_mapped(&options[4..20]);
        }
        options = options.get(padded..)?;
    }
    None
}

/// Encoders for the messages above, for tests, fuzzers and traffic generators.
pub mod encode {
    use std::net::Ipv4Addr;

    use super::Transport;

    /// NAT-PMP map request (12 bytes).
    pub fn natpmp_map_request(
        t: Transport,
        internal: u16,
        external: u16,
        lifetime: u32,
    ) -> Vec<u8> {
        let mut m = vec![0; 12];
        let request = crate::proto::natpmp::Request::Map {
            proto: t,
            internal_port: internal,
            suggested_port: external,
            lifetime,
        };
        let len = request.encode(&mut m);
        m.truncate(len);
        m
    }

    /// PCP MAP request (version 2) from `client`, with options appended as given.
    pub fn pcp_map_request(
        client: Ipv4Addr,
        nonce: [u8; 12],
        protocol: u8,
        internal: u16,
        external: u16,
        lifetime: u32,
        options: &[u8],
    ) -> Vec<u8> {
        let mut m = vec![2, 1, 0, 0];
        m.extend_from_slice(&lifetime.to_be_bytes());
        m.extend_from_slice(&client.to_ipv6_mapped().octets());
        map_payload(
            &mut m,
            nonce,
            protocol,
            internal,
            external,
            Ipv4Addr::UNSPECIFIED,
        );
        m.extend_from_slice(options);
        m
    }

    /// PCP MAP response (version 2), with options appended as given.
    #[allow(clippy::too_many_arguments)]
    pub fn pcp_map_response(
        result: u8,
        lifetime: u32,
        nonce: [u8; 12],
        protocol: u8,
        internal: u16,
        external: u16,
        external_addr: Ipv4Addr,
        options: &[u8],
    ) -> Vec<u8> {
        let mut m = vec![2, 0x81, 0, result];
        m.extend_from_slice(&lifetime.to_be_bytes());
        m.extend_from_slice(&[0; 16]); // epoch and reserved
        map_payload(&mut m, nonce, protocol, internal, external, external_addr);
        m.extend_from_slice(options);
        m
    }

    /// A THIRD_PARTY option naming `host`.
    pub fn pcp_third_party(host: Ipv4Addr) -> Vec<u8> {
        let mut m = vec![1, 0, 0, 16];
        m.extend_from_slice(&host.to_ipv6_mapped().octets());
        m
    }

    fn map_payload(
        m: &mut Vec<u8>,
        nonce: [u8; 12],
        protocol: u8,
        internal: u16,
        external: u16,
        addr: Ipv4Addr,
    ) {
        m.extend_from_slice(&nonce);
        m.extend_from_slice(&[protocol, 0, 0, 0]);
        m.extend_from_slice(&internal.to_be_bytes());
        m.extend_from_slice(&external.to_be_bytes());
        m.extend_from_slice(&addr.to_ipv6_mapped().octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcp_map(version: u8, lifetime: u32, options: &[u8]) -> Vec<u8> {
        let mut m = vec![version, 1, 0, 0];
        m.extend_from_slice(&lifetime.to_be_bytes());
        m.extend_from_slice(&Ipv4Addr::new(192, 168, 1, 2).to_ipv6_mapped().octets());
        m.extend_from_slice(&[7; 12]); // nonce
        m.extend_from_slice(&[6, 0, 0, 0]);
        m.extend_from_slice(&8083u16.to_be_bytes());
        m.extend_from_slice(&9083u16.to_be_bytes());
        m.extend_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
        m.extend_from_slice(options);
        m
    }

    #[test]
    fn natpmp_requests() {
        let public = check_request(&[0, 0]).unwrap();
        assert_eq!(public.protocol, Protocol::NatPmp);
        assert_eq!(public.to_string(), "public address request");
        // The example from docs/protocols.md: UDP 5000->5000 for 7200 s.
        let map = check_request(&[0, 1, 0, 0, 0x13, 0x88, 0x13, 0x88, 0, 0, 0x1c, 0x20]).unwrap();
        assert_eq!(
            map.to_string(),
            "map udp internal 5000 suggested external 5000 lifetime 7200s"
        );
        assert_eq!(check_request(&[0, 2, 0, 0]), Err(Malformed::BadLength));
        assert_eq!(
            check_request(&[0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::UnknownOpcode)
        );
        assert_eq!(check_request(&[0]), Err(Malformed::TooShort));
        assert_eq!(check_request(&[]), Err(Malformed::TooShort));
        assert_eq!(check_request(&[0, 0x80]), Err(Malformed::WrongDirection));
    }

    #[test]
    fn natpmp_responses() {
        let mut public = vec![0, 0x80, 0, 0, 0, 0, 0, 9];
        public.extend_from_slice(&[203, 0, 113, 1]);
        assert_eq!(
            check_response(&public).unwrap().to_string(),
            "result 0 public address 203.0.113.1"
        );
        let map = [
            0, 0x82, 0, 0, 0, 0, 0, 9, 0x1f, 0x91, 0x23, 0x79, 0, 0, 2, 0x58,
        ];
        assert_eq!(
            check_response(&map).unwrap().to_string(),
            "result 0 map tcp internal 8081 external 9081 lifetime 600s"
        );
        assert_eq!(check_response(&map[..12]), Err(Malformed::TooShort));
        assert_eq!(
            check_response(&[0, 0x85, 0, 5, 0, 0, 0, 1])
                .unwrap()
                .to_string(),
            "result 5 for opcode 5"
        );
        assert_eq!(check_response(&[0, 2]), Err(Malformed::WrongDirection));
    }

    #[test]
    fn pcp_map_request_and_response() {
        let req = pcp_map(2, 600, &[]);
        let checked = check_request(&req).unwrap();
        assert_eq!(checked.protocol, Protocol::Pcp);
        assert_eq!(
            checked.to_string(),
            "v2 MAP client 192.168.1.2 tcp internal 8083 external 0.0.0.0:9083 lifetime 600s"
        );
        let mut resp = req.clone();
        resp[1] |= RESPONSE_BIT;
        resp[3] = 0;
        assert!(
            check_response(&resp)
                .unwrap()
                .to_string()
                .starts_with("v2 MAP result 0 tcp internal 8083")
        );
        assert_eq!(check_request(&resp), Err(Malformed::WrongDirection));
    }

    #[test]
    fn pcp_framing() {
        assert_eq!(
            check_request(&pcp_map(2, 1, &[])[..20]),
            Err(Malformed::TooShort)
        );
        assert_eq!(
            check_request(&pcp_map(2, 1, &[0, 0])),
            Err(Malformed::NotAligned)
        );
        assert_eq!(check_request(&vec![2; 1104]), Err(Malformed::TooLong));
        // THIRD_PARTY option: 16 bytes of data.
        let mut third_party = vec![1, 0, 0, 16];
        third_party.extend_from_slice(&[0; 16]);
        assert!(check_request(&pcp_map(2, 1, &third_party)).is_ok());
        // An option claiming more data than the message holds.
        assert_eq!(
            check_request(&pcp_map(2, 1, &[1, 0, 0, 20, 0, 0, 0, 0])),
            Err(Malformed::OptionOverrun)
        );
        // MAP request cut before its payload ends.
        let mut cut = pcp_map(2, 1, &[]);
        cut.truncate(48);
        assert_eq!(check_request(&cut), Err(Malformed::TooShort));
        // A short error response (no payload) is still a valid response.
        let mut err = vec![2, 0x81, 0, 1];
        err.extend_from_slice(&[0; 20]);
        assert!(
            check_response(&err)
                .unwrap()
                .to_string()
                .contains("result 1")
        );
    }

    #[test]
    fn unknown_versions_are_relayed_for_the_cgn_to_refuse() {
        let mut v3 = vec![3, 0, 0, 0];
        v3.extend_from_slice(&[0; 20]);
        assert_eq!(check_request(&v3).unwrap().protocol, Protocol::Pcp);
    }
    #[test]
    fn typed_natpmp_map_round_trip_and_matching() {
        let req = encode::natpmp_map_request(Transport::Tcp, 8081, 9081, 600);
        let request = MapRequest::parse(&check_request(&req).unwrap()).unwrap();
        assert_eq!(
            request,
            MapRequest::NatPmp {
                transport: Transport::Tcp,
                internal_port: 8081
            }
        );
        let map = |proto, internal| {
            crate::proto::natpmp::Response::Map {
                proto,
                result: 0,
                epoch: 9,
                internal,
                external: 9081,
                lifetime: 600,
            }
            .to_vec()
        };
        let resp = map(Transport::Tcp, 8081);
        let response = MapResponse::parse(&check_response(&resp).unwrap()).unwrap();
        assert_eq!(
            (
                response.result,
                response.lifetime,
                response.external_port,
                response.protocol
            ),
            (0, 600, 9081, 6)
        );
        assert!(response.answers(&request));
        // Another internal port, or UDP for a TCP request: not this request's answer.
        let other = map(Transport::Tcp, 8082);
        assert!(
            !MapResponse::parse(&check_response(&other).unwrap())
                .unwrap()
                .answers(&request)
        );
        let udp = map(Transport::Udp, 8081);
        assert!(
            !MapResponse::parse(&check_response(&udp).unwrap())
                .unwrap()
                .answers(&request)
        );
        // The public address request is no mapping request.
        assert_eq!(MapRequest::parse(&check_request(&[0, 0]).unwrap()), None);
    }

    #[test]
    fn typed_pcp_map_with_third_party() {
        let host = Ipv4Addr::new(192, 168, 1, 3);
        let req = encode::pcp_map_request(
            Ipv4Addr::new(192, 168, 1, 2),
            [5; 12],
            17,
            5000,
            6000,
            60,
            &encode::pcp_third_party(host),
        );
        let request = MapRequest::parse(&check_request(&req).unwrap()).unwrap();
        let public = Ipv4Addr::new(203, 0, 114, 1);
        let resp = encode::pcp_map_response(
            0,
            60,
            [5; 12],
            17,
            5000,
            6000,
            public,
            &encode::pcp_third_party(host),
        );
        let response = MapResponse::parse(&check_response(&resp).unwrap()).unwrap();
        assert_eq!(response.external_addr, Some(public));
        assert_eq!(response.third_party, Some(host));
        assert!(response.answers(&request));
        let forged = encode::pcp_map_response(0, 60, [6; 12], 17, 5000, 6000, public, &[]);
        let forged = MapResponse::parse(&check_response(&forged).unwrap()).unwrap();
        assert_eq!(forged.third_party, None);
        assert!(!forged.answers(&request), "another nonce");
    }

    #[test]
    fn natpmp_public_address_response() {
        let mut public = vec![0, 0x80, 0, 0, 0, 0, 0, 9];
        public.extend_from_slice(&[203, 0, 114, 1]);
        assert_eq!(
            natpmp_public_address(&check_response(&public).unwrap()),
            Some(Ipv4Addr::new(203, 0, 114, 1))
        );
        public[3] = 3; // network failure
        assert_eq!(
            natpmp_public_address(&check_response(&public).unwrap()),
            None
        );
    }
}
