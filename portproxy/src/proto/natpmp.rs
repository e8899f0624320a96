//! NAT-PMP (RFC 6886) as a server reads and writes it: portproxy answers NAT-PMP itself when
//! the CGN does not speak it (see `serve`), and speaks it upstream when the CGN speaks
//! nothing else (see `upstream`).

use std::net::Ipv4Addr;

use super::Transport;

pub const VERSION: u8 = 0;
const RESPONSE_BIT: u8 = 0x80;

/// Result codes (RFC 6886 §3.5).
pub mod result {
    pub const SUCCESS: u16 = 0;
    pub const UNSUPP_VERSION: u16 = 1;
    pub const NOT_AUTHORIZED: u16 = 2;
    pub const NETWORK_FAILURE: u16 = 3;
    pub const OUT_OF_RESOURCES: u16 = 4;
    pub const UNSUPP_OPCODE: u16 = 5;
}

/// A request a server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Opcode 0: what is my public address?
    PublicAddress,
    /// Opcodes 1 (UDP) and 2 (TCP). Lifetime 0 deletes; internal port 0 with lifetime 0
    /// deletes all of the client's mappings of that protocol.
    Map {
        proto: Transport,
        internal_port: u16,
        suggested_port: u16,
        lifetime: u32,
    },
}

/// What a server does with a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Nothing to answer: too short, a response, or a map request cut short.
    Ignore,
    /// Answer with this 8-byte error (unsupported version or opcode).
    Refuse(Vec<u8>),
    Request(Request),
}

/// Parses a datagram sent to a NAT-PMP server. `epoch` goes into refusals.
pub fn parse_request(msg: &[u8], epoch: u32) -> Parsed {
    let [version, opcode, ..] = *msg else {
        return Parsed::Ignore;
    };
    if opcode & RESPONSE_BIT != 0 {
        return Parsed::Ignore;
    }
    if version != VERSION {
        // RFC 6886 §3.5 with erratum 3618: opcode 128.
        return Parsed::Refuse(error(0, result::UNSUPP_VERSION, epoch));
    }
    match opcode {
        0 => Parsed::Request(Request::PublicAddress),
        1 | 2 if msg.len() >= 12 => Parsed::Request(Request::Map {
            proto: if opcode == 1 {
                Transport::Udp
            } else {
                Transport::Tcp
            },
            internal_port: u16::from_be_bytes([msg[4], msg[5]]),
            suggested_port: u16::from_be_bytes([msg[6], msg[7]]),
            lifetime: u32::from_be_bytes([msg[8], msg[9], msg[10], msg[11]]),
        }),
        1 | 2 => Parsed::Ignore,
        _ => Parsed::Refuse(error(opcode, result::UNSUPP_OPCODE, epoch)),
    }
}

/// The 8-byte error response to `opcode`.
pub fn error(opcode: u8, result: u16, epoch: u32) -> Vec<u8> {
    let mut m = vec![VERSION, RESPONSE_BIT | opcode];
    m.extend_from_slice(&result.to_be_bytes());
    m.extend_from_slice(&epoch.to_be_bytes());
    m
}

/// The public address response (12 bytes); the address is 0.0.0.0 unless `result` is 0.
pub fn public_address_response(result: u16, epoch: u32, addr: Ipv4Addr) -> Vec<u8> {
    let mut m = error(0, result, epoch);
    let addr = if result == result::SUCCESS {
        addr
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    m.extend_from_slice(&addr.octets());
    m
}

/// The map response (16 bytes). On an error the external port and lifetime are 0.
pub fn map_response(
    proto: Transport,
    result: u16,
    epoch: u32,
    internal: u16,
    external: u16,
    lifetime: u32,
) -> Vec<u8> {
    let opcode = match proto {
        Transport::Udp => 1,
        Transport::Tcp => 2,
    };
    let (external, lifetime) = match result {
        result::SUCCESS => (external, lifetime),
        _ => (0, 0),
    };
    let mut m = error(opcode, result, epoch);
    m.extend_from_slice(&internal.to_be_bytes());
    m.extend_from_slice(&external.to_be_bytes());
    m.extend_from_slice(&lifetime.to_be_bytes());
    m
}

/// The address announcement a server multicasts to 224.0.0.1:5350 after a change: the
/// public address response, unsolicited (RFC 6886 §3.2.1).
pub fn announcement(epoch: u32, addr: Ipv4Addr) -> Vec<u8> {
    public_address_response(result::SUCCESS, epoch, addr)
}

/// A public address response from a server: its epoch and the address.
pub fn parse_public_address(msg: &[u8]) -> Option<(u16, u32, Ipv4Addr)> {
    if msg.len() < 12 || msg[0] != VERSION || msg[1] != RESPONSE_BIT {
        return None;
    }
    let result = u16::from_be_bytes([msg[2], msg[3]]);
    let epoch = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
    Some((
        result,
        epoch,
        Ipv4Addr::new(msg[8], msg[9], msg[10], msg[11]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(&[0, 0], 7),
            Parsed::Request(Request::PublicAddress)
        );
        // The example of docs/protocols.md: UDP 5000 -> 5000 for 7200 s.
        assert_eq!(
            parse_request(&[0, 1, 0, 0, 0x13, 0x88, 0x13, 0x88, 0, 0, 0x1c, 0x20], 7),
            Parsed::Request(Request::Map {
                proto: Transport::Udp,
                internal_port: 5000,
                suggested_port: 5000,
                lifetime: 7200
            })
        );
        assert_eq!(parse_request(&[0, 2, 0, 0], 7), Parsed::Ignore);
        assert_eq!(parse_request(&[0], 7), Parsed::Ignore);
        assert_eq!(parse_request(&[0, 0x80, 0, 0], 7), Parsed::Ignore);
    }

    #[test]
    fn refusals_carry_the_epoch() {
        assert_eq!(
            parse_request(&[0, 9], 0x0102_0304),
            Parsed::Refuse(vec![0, 0x89, 0, 5, 1, 2, 3, 4])
        );
        assert_eq!(
            parse_request(&[2, 1, 0, 0], 1),
            Parsed::Refuse(vec![0, 0x80, 0, 1, 0, 0, 0, 1])
        );
    }

    #[test]
    fn responses() {
        let public = Ipv4Addr::new(203, 0, 114, 1);
        let ok = public_address_response(0, 9, public);
        assert_eq!(parse_public_address(&ok), Some((0, 9, public)));
        let failed = public_address_response(result::NETWORK_FAILURE, 9, public);
        assert_eq!(
            parse_public_address(&failed),
            Some((3, 9, Ipv4Addr::UNSPECIFIED))
        );
        assert_eq!(
            map_response(Transport::Tcp, 0, 9, 8081, 9081, 600),
            [
                0, 0x82, 0, 0, 0, 0, 0, 9, 0x1f, 0x91, 0x23, 0x79, 0, 0, 2, 0x58
            ]
        );
        assert_eq!(
            map_response(Transport::Udp, 4, 9, 8081, 9081, 600)[8..],
            [0x1f, 0x91, 0, 0, 0, 0, 0, 0]
        );
    }
}
