//! NAT-PMP (RFC 6886) messages, parsed and encoded: portproxy answers NAT-PMP itself when
//! the CGN does not speak it (see `serve`), and speaks it upstream when the CGN speaks
//! nothing else (see `upstream`); the bench's responder and probe use the same codec.
//! Encoding writes into the caller's buffer, so a hot loop need not allocate.

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

/// A request a server acts on (and a client sends).
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

impl Request {
    /// Encodes the request into `out` (at least 12 bytes) and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        match *self {
            Request::PublicAddress => {
                out[..2].copy_from_slice(&[VERSION, 0]);
                2
            }
            Request::Map {
                proto,
                internal_port,
                suggested_port,
                lifetime,
            } => {
                out[..4].copy_from_slice(&[VERSION, map_opcode(proto), 0, 0]);
                out[4..6].copy_from_slice(&internal_port.to_be_bytes());
                out[6..8].copy_from_slice(&suggested_port.to_be_bytes());
                out[8..12].copy_from_slice(&lifetime.to_be_bytes());
                12
            }
        }
    }
}

/// A response as a server sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// 8 bytes: a refusal of `opcode` (0 for an unsupported version).
    Error { opcode: u8, result: u16, epoch: u32 },
    /// 12 bytes; the address is sent as 0.0.0.0 unless `result` is 0.
    PublicAddress {
        result: u16,
        epoch: u32,
        addr: Ipv4Addr,
    },
    /// 16 bytes; on an error the external port and lifetime are sent as 0.
    Map {
        proto: Transport,
        result: u16,
        epoch: u32,
        internal: u16,
        external: u16,
        lifetime: u32,
    },
}

impl Response {
    /// The longest response.
    pub const MAX_LEN: usize = 16;

    /// Encodes the response into `out` (at least `MAX_LEN` bytes) and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let (opcode, result, epoch) = match *self {
            Response::Error {
                opcode,
                result,
                epoch,
            } => (opcode, result, epoch),
            Response::PublicAddress { result, epoch, .. } => (0, result, epoch),
            Response::Map {
                proto,
                result,
                epoch,
                ..
            } => (map_opcode(proto), result, epoch),
        };
        out[..2].copy_from_slice(&[VERSION, RESPONSE_BIT | opcode]);
        out[2..4].copy_from_slice(&result.to_be_bytes());
        out[4..8].copy_from_slice(&epoch.to_be_bytes());
        let ok = result == result::SUCCESS;
        match *self {
            Response::Error { .. } => 8,
            Response::PublicAddress { addr, .. } => {
                let addr = if ok { addr } else { Ipv4Addr::UNSPECIFIED };
                out[8..12].copy_from_slice(&addr.octets());
                12
            }
            Response::Map {
                internal,
                external,
                lifetime,
                ..
            } => {
                let (external, lifetime) = if ok { (external, lifetime) } else { (0, 0) };
                out[8..10].copy_from_slice(&internal.to_be_bytes());
                out[10..12].copy_from_slice(&external.to_be_bytes());
                out[12..16].copy_from_slice(&lifetime.to_be_bytes());
                16
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = [0; Self::MAX_LEN];
        let len = self.encode(&mut out);
        out[..len].to_vec()
    }
}

fn map_opcode(proto: Transport) -> u8 {
    match proto {
        Transport::Udp => 1,
        Transport::Tcp => 2,
    }
}

/// What a server does with a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Nothing to answer: too short, a response, or a map request cut short.
    Ignore,
    /// Answer with this error (unsupported version or opcode).
    Refuse(Response),
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
        return Parsed::Refuse(Response::Error {
            opcode: 0,
            result: result::UNSUPP_VERSION,
            epoch,
        });
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
        _ => Parsed::Refuse(Response::Error {
            opcode,
            result: result::UNSUPP_OPCODE,
            epoch,
        }),
    }
}

/// The address announcement a server multicasts to 224.0.0.1:5350 after a change: the
/// public address response, unsolicited (RFC 6886 §3.2.1).
pub fn announcement(epoch: u32, addr: Ipv4Addr) -> Vec<u8> {
    Response::PublicAddress {
        result: result::SUCCESS,
        epoch,
        addr,
    }
    .to_vec()
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
        let refusal = |msg: &[u8], epoch| match parse_request(msg, epoch) {
            Parsed::Refuse(response) => response.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(refusal(&[0, 9], 0x0102_0304), [0, 0x89, 0, 5, 1, 2, 3, 4]);
        assert_eq!(refusal(&[2, 1, 0, 0], 1), [0, 0x80, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn requests_round_trip() {
        let mut out = [0; 12];
        for request in [
            Request::PublicAddress,
            Request::Map {
                proto: Transport::Tcp,
                internal_port: 8081,
                suggested_port: 9081,
                lifetime: 600,
            },
        ] {
            let len = request.encode(&mut out);
            assert_eq!(parse_request(&out[..len], 0), Parsed::Request(request));
        }
    }

    fn map(proto: Transport, result: u16) -> Response {
        Response::Map {
            proto,
            result,
            epoch: 9,
            internal: 8081,
            external: 9081,
            lifetime: 600,
        }
    }

    #[test]
    fn responses() {
        let public = Ipv4Addr::new(203, 0, 114, 1);
        let address = |result| Response::PublicAddress {
            result,
            epoch: 9,
            addr: public,
        };
        let ok = address(0).to_vec();
        assert_eq!(parse_public_address(&ok), Some((0, 9, public)));
        let failed = address(result::NETWORK_FAILURE).to_vec();
        assert_eq!(
            parse_public_address(&failed),
            Some((3, 9, Ipv4Addr::UNSPECIFIED))
        );
        assert_eq!(
            map(Transport::Tcp, 0).to_vec(),
            [
                0, 0x82, 0, 0, 0, 0, 0, 9, 0x1f, 0x91, 0x23, 0x79, 0, 0, 2, 0x58
            ]
        );
        assert_eq!(
            map(Transport::Udp, 4).to_vec()[8..],
            [0x1f, 0x91, 0, 0, 0, 0, 0, 0]
        );
    }
}
