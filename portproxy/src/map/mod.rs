//! `portproxy map PORT`: opens a port on this host at its gateway (a CPE running portproxy,
//! a CGN, a home router) and keeps it open while it runs, without root.
//!
//! It finds the gateway (`gateway`), asks it in one go what it speaks (a PCP ANNOUNCE, a
//! NAT-PMP public address request, an SSDP search: the daemon's probe, from this host's
//! own address), then maps with the first of PCP, NAT-PMP and UPnP IGD that grants it,
//! through the daemon's upstream clients (`upstream::Upstream`). In the foreground it
//! renews at half the granted lifetime, and at once when the gateway announces itself
//! (224.0.0.1:5350); each answer goes through `session`, which tells a renewal from a
//! re-creation (the epoch went back) or a change of external address or port, and
//! `output` prints it. SIGINT or SIGTERM deletes the mapping and ends.
//!
//! The PCP nonce is derived from this machine's id and the mapping, so a later
//! `--delete` (or a restarted `portproxy map`) names the same mapping.

mod gateway;
mod options;
mod output;
mod session;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use log::debug;
use tokio::net::UdpSocket;
use tokio::signal::unix::{SignalKind, signal};

pub use options::MapOptions;
use output::{Printer, Subject, title};
use session::{Change, Session};

use crate::clock::boot_time;
use crate::proto::{natpmp, pcp};
use crate::sockets::{self, Sender};
use crate::upstream::{
    Ask, Failure, Granted, Igd, Nonces, SocketPool, Speaks, Upstream, Via, port_control, search_igd,
};

/// The NAT-PMP/PCP and SSDP ports.
const PORT_CONTROL_PORT: u16 = 5351;
const SSDP_PORT: u16 = 1900;

/// Why `portproxy map` ended without doing what it was asked; each has its exit status.
#[derive(Debug)]
enum Error {
    NoGateway(String),
    NoAnswer(String),
    Refused(String),
    Other(anyhow::Error),
}

impl Error {
    fn status(&self) -> u8 {
        match self {
            Error::Other(_) => 1,
            Error::NoGateway(_) => 3,
            Error::NoAnswer(_) => 4,
            Error::Refused(_) => 5,
        }
    }

    fn message(&self) -> String {
        match self {
            Error::NoGateway(m) | Error::NoAnswer(m) | Error::Refused(m) => m.clone(),
            Error::Other(e) => format!("{e:#}"),
        }
    }
}

/// Runs `portproxy map`; the exit status as documented in `MapOptions`.
pub fn run(opts: MapOptions) -> ExitCode {
    let out = Printer { json: opts.json };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(anyhow::Error::new(e).context("starting the async runtime")))
        .and_then(|rt| rt.block_on(map(&opts, &out)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e.message(), e.status());
            ExitCode::from(e.status())
        }
    }
}

/// The client side of one mapping: the gateway, in the protocol chosen, and what is asked.
struct Client {
    upstream: Upstream,
    subject: Subject,
    ask: Ask,
}

async fn map(opts: &MapOptions, out: &Printer) -> Result<(), Error> {
    let gateway = match opts.gateway {
        Some(gateway) => gateway,
        None => gateway::default_gateway()
            .await
            .map_err(Error::Other)?
            .ok_or_else(|| {
                Error::NoGateway(
                    "no default route, so no gateway to ask: give one with --gateway ADDR".into(),
                )
            })?,
    };
    let local = sockets::local_address_towards(gateway)
        .map_err(|e| Error::NoGateway(format!("no route to the gateway {gateway}: {e}")))?;
    let spoken = discover(gateway, local, &opts.protocols()).await?;
    let nonce = Nonces::derived((machine_secret(), local, opts.port.transport, opts.port.port));
    let ask = Ask {
        host: local,
        proto: opts.port.transport,
        internal_port: opts.port.port,
        suggested_port: opts.suggested_port(),
        lifetime: opts.lifetime,
        prefer_failure: false,
        nonce,
    };
    let subject = |via| Subject {
        via,
        transport: opts.port.transport,
        internal: SocketAddrV4::new(local, opts.port.port),
        gateway,
    };
    let sockets = Arc::new(SocketPool::new(Sender::Myself));
    let upstream = |(via, igd): (Via, Option<Arc<Igd>>)| Upstream {
        cgn: SocketAddrV4::new(gateway, PORT_CONTROL_PORT),
        wan: local,
        via,
        igd,
        sockets: sockets.clone(),
    };
    if opts.delete {
        // The first protocol spoken, as `--once` chose.
        let (via, igd) = spoken.into_iter().next().expect("discover found one");
        let mut client = Client {
            upstream: upstream((via, igd)),
            subject: subject(via),
            ask,
        };
        return client.delete(out).await;
    }
    let mut refusals = Vec::new();
    for (via, igd) in spoken {
        let mut client = Client {
            upstream: upstream((via, igd)),
            subject: subject(via),
            ask,
        };
        match client.map().await {
            Ok((external, granted)) => {
                client.ask.suggested_port = external.port();
                let mut session = Session::new(via != Via::Upnp);
                session.granted(boot_time(), external, granted.lifetime, granted.epoch);
                out.granted(&client.subject, "mapped", external, granted.lifetime, None);
                if opts.once {
                    return Ok(());
                }
                return client.keep(session, out).await;
            }
            Err(failure) => {
                debug!("mapping with {}: {failure}", title(via));
                refusals.push((via, failure));
            }
        }
    }
    Err(refused(&refusals))
}

/// The error after every protocol spoken failed: a refusal if any refused.
fn refused(failures: &[(Via, Failure)]) -> Error {
    let list = failures
        .iter()
        .map(|(via, failure)| format!("{}: {failure}", title(*via)))
        .collect::<Vec<_>>()
        .join("; ");
    match failures.iter().all(|(_, f)| *f == Failure::NoAnswer) {
        true => Error::NoAnswer(format!("the gateway stopped answering ({list})")),
        false => Error::Refused(format!("the gateway refused the mapping ({list})")),
    }
}

/// The protocols of `wanted` that the gateway answered, in that order, with the IGD's
/// control service for UPnP.
async fn discover(
    gateway: Ipv4Addr,
    local: Ipv4Addr,
    wanted: &[Via],
) -> Result<Vec<(Via, Option<Arc<Igd>>)>, Error> {
    let started = Instant::now();
    let ask = Speaks {
        pcp: wanted.contains(&Via::Pcp),
        nat_pmp: wanted.contains(&Via::NatPmp),
        upnp: wanted.contains(&Via::Upnp),
    };
    let server = SocketAddrV4::new(gateway, PORT_CONTROL_PORT);
    let port_control = async {
        match ask.pcp || ask.nat_pmp {
            true => port_control(Sender::Myself, local, server, ask).await,
            false => Ok(Default::default()),
        }
    };
    let igd = async {
        if !ask.upnp {
            return Ok(None);
        }
        let socket = sockets::own_ssdp_searcher(local)?;
        Ok(search_igd(&socket, gateway, SSDP_PORT).await?.flatten())
    };
    let (epochs, location) = tokio::join!(port_control, igd);
    let epochs = epochs.map_err(|e| {
        Error::Other(anyhow::Error::new(e).context(format!("asking {server} from {local}")))
    })?;
    let location: Option<String> = location.map_err(|e: std::io::Error| {
        Error::Other(anyhow::Error::new(e).context(format!("searching for an IGD from {local}")))
    })?;
    let mut igd_problem = None;
    let igd = match location {
        Some(location) => match Igd::discover(&location, local).await {
            Ok(igd) => Some(Arc::new(igd)),
            Err(e) => {
                igd_problem = Some(format!("{e:#}"));
                None
            }
        },
        None => None,
    };
    let spoken: Vec<_> = wanted
        .iter()
        .filter_map(|&via| match via {
            Via::Pcp => epochs.pcp.is_some().then_some((via, None)),
            Via::NatPmp => epochs.nat_pmp.is_some().then_some((via, None)),
            Via::Upnp => igd.clone().map(|igd| (via, Some(igd))),
        })
        .collect();
    debug!(
        "{gateway} speaks {:?} (asked in {:?})",
        spoken.iter().map(|(v, _)| title(*v)).collect::<Vec<_>>(),
        started.elapsed()
    );
    if spoken.is_empty() {
        let tried = wanted
            .iter()
            .map(|&via| match via {
                Via::Pcp => format!("PCP (ANNOUNCE to {server})"),
                Via::NatPmp => format!("NAT-PMP (public address request to {server})"),
                Via::Upnp => format!("UPnP IGD (SSDP search on {local})"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut message = format!(
            "nothing answered from the gateway {gateway} within {:.1} s; tried {tried}",
            started.elapsed().as_secs_f32()
        );
        if let Some(problem) = igd_problem {
            message.push_str(&format!("; its IGD answered the search but {problem}"));
        }
        return Err(Error::NoAnswer(message));
    }
    Ok(spoken)
}

impl Client {
    /// Asks for the mapping: where it is (NAT-PMP and UPnP ask the address separately).
    async fn map(&mut self) -> Result<(SocketAddrV4, Granted), Failure> {
        let granted = self.upstream.map(&self.ask).await?;
        let mut external = granted.external;
        if external.ip().is_unspecified() {
            external.set_ip(self.upstream.public_address().await?);
        }
        Ok((external, granted))
    }

    /// Renews until SIGINT or SIGTERM, then deletes.
    async fn keep(&mut self, mut session: Session, out: &Printer) -> Result<(), Error> {
        let signals = |kind| signal(kind).map_err(|e| Error::Other(e.into()));
        let (mut interrupt, mut terminate) = (
            signals(SignalKind::interrupt())?,
            signals(SignalKind::terminate())?,
        );
        let listener = sockets::own_announcement_listener()
            .inspect_err(|e| {
                eprintln!(
                    "portproxy map: not listening for the gateway's announcements on port {}: {e}",
                    sockets::ANNOUNCE_PORT
                )
            })
            .ok();
        let gateway = self.subject.gateway;
        loop {
            let renew_at = session.next_renewal().unwrap_or_default();
            let wait = renew_at.saturating_sub(boot_time());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                (epoch, address) = announcement(listener.as_ref(), gateway) => {
                    if !session.announced(boot_time(), epoch, address) {
                        continue;
                    }
                    debug!("{gateway} announced itself: renewing now");
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
            self.renew(&mut session, out).await;
        }
        self.delete(out).await
    }

    async fn renew(&mut self, session: &mut Session, out: &Printer) {
        if let Some(external) = session.external() {
            self.ask.suggested_port = external.port();
        }
        match self.map().await {
            Ok((external, granted)) => {
                let change =
                    session.granted(boot_time(), external, granted.lifetime, granted.epoch);
                let before = match change {
                    Change::Changed { before } => Some(before),
                    _ => None,
                };
                out.granted(
                    &self.subject,
                    change.name(),
                    external,
                    granted.lifetime,
                    before,
                );
            }
            Err(failure) => {
                let now = boot_time();
                let retry = session.failed(now).saturating_sub(now);
                out.failed(&self.subject, failure, retry);
            }
        }
    }

    /// Deletes the mapping: NAT-PMP by internal port, PCP with the nonce, UPnP by the
    /// external port.
    async fn delete(&mut self, out: &Printer) -> Result<(), Error> {
        let external = match self.upstream.via {
            Via::NatPmp => 0,
            _ => self.ask.suggested_port,
        };
        let ask = Ask {
            lifetime: 0,
            suggested_port: external,
            ..self.ask
        };
        match self.upstream.map(&ask).await {
            Ok(_) => {
                out.deleted(&self.subject, (external != 0).then_some(external));
                Ok(())
            }
            Err(failure) => Err(refused(&[(self.upstream.via, failure)])),
        }
    }
}

/// Waits for a NAT-PMP or PCP announcement from `gateway` (for ever without a listener):
/// its epoch, and NAT-PMP's address.
async fn announcement(listener: Option<&UdpSocket>, gateway: Ipv4Addr) -> (u32, Option<Ipv4Addr>) {
    let Some(socket) = listener else {
        return std::future::pending().await;
    };
    let mut buf = [0u8; pcp::MAX_LEN];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if from.ip() != std::net::IpAddr::V4(gateway) {
            continue;
        }
        let msg = &buf[..len];
        if let Some((natpmp::result::SUCCESS, epoch, address)) = natpmp::parse_public_address(msg) {
            return (epoch, Some(address));
        }
        if let Some(r) = pcp::parse_response(msg).filter(|r| r.opcode == pcp::OPCODE_ANNOUNCE) {
            return (r.epoch, None);
        }
    }
}

/// What makes this machine's PCP nonces unguessable to others (off the path, who cannot
/// read the files): its machine id, where it has one.
fn machine_secret() -> String {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default()
}
