//! Wire formats portproxy reads: pure functions over byte slices, no I/O, so
//! they can be unit-tested and fuzzed on their own.

pub mod gena;
pub mod location;
pub mod natpmp;
pub mod pcp;
pub mod port_control;
pub mod ssdp;
pub mod upnp;

/// The transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// Lower-case name, as nftables and the logs write it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// The protocol `name` names (`tcp`, `udp`, in any case).
    pub fn from_name(name: &str) -> Option<Transport> {
        match name.to_ascii_lowercase().as_str() {
            "tcp" => Some(Transport::Tcp),
            "udp" => Some(Transport::Udp),
            _ => None,
        }
    }
}
