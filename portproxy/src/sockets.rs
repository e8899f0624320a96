//! Every socket the socket relay opens, with the options that keep it on its
//! side of the router.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

use crate::config::Side;
use crate::proto::ssdp;

fn udp() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// SO_RCVBUFFORCE (root may exceed net.core.rmem_max); a smaller buffer is
/// not fatal, only less tolerant of bursts.
fn force_recv_buffer(socket: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    // SAFETY: setsockopt on our own socket with a pointer to a live c_int and its size.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        let _ = socket.set_recv_buffer_size(bytes);
    }
}

fn to_tokio(socket: Socket) -> io::Result<UdpSocket> {
    UdpSocket::from_std(socket.into())
}

/// Receive buffer of the sockets every LAN client sends to: room for a flood's
/// burst, so that other clients' requests are not lost in the kernel before the
/// relay's per-host rate limit sees them.
const LAN_RCVBUF: usize = 4 << 20;

/// A UDP socket bound to `addr` that only sees traffic of `side`'s interface.
pub fn udp_on(side: &Side, addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = udp()?;
    force_recv_buffer(&socket, LAN_RCVBUF);
    socket.bind_device(Some(side.iface.as_bytes()))?;
    socket.bind(&addr.into())?;
    to_tokio(socket)
}

/// A socket that sends as the LAN client `client` (its address and port) to
/// `server`, and receives the server's replies to the client once
/// `capture::ReplyCapture` routes them locally. IP_TRANSPARENT allows binding
/// an address that is not the router's own.
pub fn transparent_udp(client: SocketAddrV4, server: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.set_ip_transparent_v4(true)?;
    socket.bind(&client.into())?;
    socket.connect(&server.into())?;
    to_tokio(socket)
}

/// Whose address a socket to the CGN sends from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sender {
    /// A LAN host's, the daemon's way (`transparent_udp`, CAP_NET_ADMIN).
    #[default]
    LanHost,
    /// This host's own, `portproxy map`'s way: no privilege needed.
    Myself,
}

/// A socket that sends from `from` (any port if 0) to `server`, as `sender` says.
pub fn udp_to(sender: Sender, from: SocketAddrV4, server: SocketAddrV4) -> io::Result<UdpSocket> {
    if sender == Sender::LanHost {
        return transparent_udp(from, server);
    }
    let socket = udp()?;
    socket.bind(&from.into())?;
    socket.connect(&server.into())?;
    to_tokio(socket)
}

/// The address this host sends from to reach `server` (the kernel's route lookup for a
/// connected UDP socket; nothing is sent).
pub fn local_address_towards(server: Ipv4Addr) -> io::Result<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(SocketAddrV4::new(server, 9))?;
    match socket.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(*a.ip()),
        std::net::SocketAddr::V6(_) => Err(io::ErrorKind::AddrNotAvailable.into()),
    }
}

/// Joined to the SSDP group on `side`'s interface, bound to the SSDP port of
/// every address there, sending multicast out of that interface only, with
/// our own multicast not looped back (we must never re-relay it).
pub fn ssdp_listener(side: &Side, port: u16) -> io::Result<UdpSocket> {
    let socket = udp()?;
    // Other SSDP programs on the router (a media server) may hold the port too.
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(side.iface.as_bytes()))?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    socket.join_multicast_v4_n(&ssdp::GROUP, &InterfaceIndexOrAddress::Index(side.index))?;
    multicast_out_of(&socket, side)?;
    to_tokio(socket)
}

/// A fresh socket for one relayed search: replies to it are replies to that search.
pub fn ssdp_searcher(wan: &Side) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.bind_device(Some(wan.iface.as_bytes()))?;
    socket.bind(&SocketAddrV4::new(wan.addr, 0).into())?;
    multicast_out_of(&socket, wan)?;
    to_tokio(socket)
}

/// `ssdp_searcher` for `portproxy map`: from this host's address `local`, out of the
/// interface that has it, no privilege needed.
pub fn own_ssdp_searcher(local: Ipv4Addr) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.bind(&SocketAddrV4::new(local, 0).into())?;
    multicast_from(&socket, local)?;
    to_tokio(socket)
}

fn multicast_out_of(socket: &Socket, side: &Side) -> io::Result<()> {
    multicast_from(socket, side.addr)
}

fn multicast_from(socket: &Socket, addr: Ipv4Addr) -> io::Result<()> {
    socket.set_multicast_if_v4(&addr)?;
    socket.set_multicast_loop_v4(false)?;
    // UDA: TTL 2 for SSDP multicast, enough to cross one router.
    socket.set_multicast_ttl_v4(2)
}

/// Receives NAT-PMP/PCP announcements (224.0.0.1:5350, the all-hosts group every interface
/// is in) arriving on `side`'s interface.
pub fn announcement_listener(side: &Side) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(side.iface.as_bytes()))?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ANNOUNCE_PORT).into())?;
    to_tokio(socket)
}

/// `announcement_listener` on every interface, no privilege needed (`portproxy map` checks
/// who sent them); other clients on this host may listen too.
pub fn own_announcement_listener() -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ANNOUNCE_PORT).into())?;
    to_tokio(socket)
}

/// Where NAT-PMP and PCP clients listen for announcements.
pub const ANNOUNCE_PORT: u16 = 5350;

/// Makes `socket` (bound on `side`) multicast out of `side`'s interface, to this link only.
pub fn multicast_on_lan(socket: &UdpSocket, side: &Side) -> io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    socket.set_multicast_if_v4(&side.addr)?;
    socket.set_multicast_loop_v4(false)?;
    socket.set_multicast_ttl_v4(1)
}

/// A TCP listener on `side`'s address and interface.
pub fn tcp_listener(side: &Side, port: u16) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(side.iface.as_bytes()))?;
    socket.bind(&SocketAddrV4::new(side.addr, port).into())?;
    socket.listen(64)?;
    TcpListener::from_std(socket.into())
}

/// A port portproxy must bind is held by another program: a person must decide which of
/// the two runs, so at start-up this ends the daemon.
#[derive(Debug)]
pub struct PortInUse {
    what: &'static str,
    addr: SocketAddrV4,
    option: &'static str,
}

impl std::fmt::Display for PortInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} is already in use by another program (is a NAT-PMP/UPnP server such as \
             miniupnpd running here?); stop it or turn this relay off with {} 0",
            self.what, self.addr, self.option
        )
    }
}

impl std::error::Error for PortInUse {}

/// Turns "address in use" into `PortInUse`, and names what was bound otherwise.
pub fn explain_bind(
    err: io::Error,
    what: &'static str,
    addr: SocketAddrV4,
    option: &'static str,
) -> anyhow::Error {
    if err.kind() == io::ErrorKind::AddrInUse {
        PortInUse { what, addr, option }.into()
    } else {
        anyhow::Error::new(err).context(format!("{what}: binding {addr}"))
    }
}
