//! NAT-PMP and PCP on sockets, preserving the client's source address.
//!
//! Each client (address and port) gets its own transparent socket that sends
//! to the CGN *as* that client, so the CGN maps to the client itself, and
//! receives the CGN's replies to that client (see `capture`). Replies go back
//! from the LAN socket (LAN address, port 5351): the address the client asked.
//! One socket per client tuple means concurrent requests can never be crossed.
//!
//! Each mapping request is remembered with its client; a success response that
//! answers one of them is a grant, which goes into the mapping table (and opens
//! its firewall hole) before the response goes on to the client.
//!
//! A protocol the CGN does not speak is not relayed: `serve::PortControlServer`
//! answers it, one task per request, and the answer leaves from the same LAN socket.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use log::{debug, warn};
use tokio::net::UdpSocket;

use crate::config::Config;
use crate::mapping::{self, Backing, Grant, Key, Mappings, Origin};
use crate::proto::Transport;
use crate::proto::port_control::{self, Checked, MapRequest, MapResponse, Protocol};
use crate::relay::Tasks;
use crate::relay::rate_limit::RateLimit;
use crate::serve::PortControlServer;
use crate::sockets;
use crate::stats::{Counter, Stats};

/// PCP's maximum message, with room to spot oversized datagrams.
const BUF_LEN: usize = port_control::PCP_MAX_LEN + 4;

/// Tuples (source ports) one LAN host may have in flight; a host opening more
/// is refused rather than allowed to fill the table the others need. Off, with
/// the rate limit, when `--rate-limit 0`.
const QUOTA_PER_HOST: usize = 64;

/// Mapping requests remembered per client tuple (the latest ones; a client
/// has one or two in flight, a few more while it retries).
const PENDING_PER_CLIENT: usize = 8;

struct Client {
    upstream: Arc<UdpSocket>,
    last_request: Instant,
    /// Mapping requests sent and not yet answered.
    pending: Vec<MapRequest>,
}

impl Client {
    fn remember(&mut self, request: MapRequest) {
        if !self.pending.contains(&request) {
            if self.pending.len() == PENDING_PER_CLIENT {
                self.pending.remove(0);
            }
            self.pending.push(request);
        }
    }

    /// The request `response` answers, no longer pending.
    fn answered(&mut self, response: &MapResponse) -> Option<MapRequest> {
        let at = self.pending.iter().position(|r| response.answers(r))?;
        Some(self.pending.remove(at))
    }
}

/// The clients in flight, and how many of them each host holds.
struct Table {
    clients: HashMap<SocketAddrV4, Client>,
    per_host: HashMap<Ipv4Addr, usize>,
    rate: RateLimit,
    /// Clients whose request the server is answering now.
    serving: HashSet<SocketAddrV4>,
}

impl Table {
    fn remove(&mut self, client: SocketAddrV4) {
        if self.clients.remove(&client).is_some() {
            if let Some(n) = self.per_host.get_mut(client.ip()) {
                *n -= 1;
                if *n == 0 {
                    self.per_host.remove(client.ip());
                }
            }
        }
    }
}

pub struct PortControlRelay {
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    mappings: Arc<Mappings>,
    /// Answers the protocols the CGN does not speak.
    server: Option<Arc<PortControlServer>>,
    lan: Arc<UdpSocket>,
    table: Mutex<Table>,
    tasks: Tasks,
    /// Drop lines are quiet until then (see `log_drop`).
    drops_quiet_until: Mutex<Instant>,
}

impl PortControlRelay {
    pub fn bind(
        cfg: Arc<Config>,
        stats: Arc<Stats>,
        mappings: Arc<Mappings>,
        server: Option<Arc<PortControlServer>>,
        tasks: &Tasks,
    ) -> Result<Arc<Self>> {
        let addr = SocketAddrV4::new(cfg.lan.addr, cfg.nat_pmp_port);
        let lan = sockets::udp_on(&cfg.lan, addr)
            .map_err(|e| sockets::explain_bind(e, "NAT-PMP/PCP relay", addr, "--nat-pmp"))?;
        let table = Table {
            clients: HashMap::new(),
            per_host: HashMap::new(),
            rate: RateLimit::new(cfg.rate_limit),
            serving: HashSet::new(),
        };
        Ok(Arc::new(PortControlRelay {
            cfg,
            stats,
            mappings,
            server,
            lan: Arc::new(lan),
            table: Mutex::new(table),
            tasks: tasks.clone(),
            drops_quiet_until: Mutex::new(Instant::now()),
        }))
    }

    /// The LAN socket (LAN address, port 5351), for what else leaves from there.
    pub fn lan_socket(&self) -> Arc<UdpSocket> {
        self.lan.clone()
    }

    /// Receives requests from the LAN until the socket fails. Each wake-up
    /// drains everything queued, so a burst costs one poll, not one per datagram.
    pub async fn run(self: Arc<Self>) -> Result<()> {
        let mut buf = [0u8; BUF_LEN];
        loop {
            self.lan.readable().await?;
            loop {
                let (len, from) = match self.lan.try_recv_from(&mut buf) {
                    Ok(received) => received,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                };
                let SocketAddr::V4(client) = from else {
                    continue;
                };
                self.request(client, &buf[..len]).await;
            }
        }
    }

    async fn request(self: &Arc<Self>, client: SocketAddrV4, msg: &[u8]) {
        // A spoofed off-LAN source would make the CGN map for, and answer, a third party.
        if !self.cfg.lan.contains(*client.ip()) {
            self.stats.add(Counter::DropNotOnLan);
            self.log_drop(|| {
                format!(
                    "dropped a request from {client}: not on the LAN {}/{}",
                    self.cfg.lan.addr, self.cfg.lan.prefix_len
                )
            });
            return;
        }
        if let Some(server) = &self.server
            && server.serves(msg)
        {
            self.serve(server.clone(), client, msg);
            return;
        }
        let checked = match port_control::check_request(msg) {
            Ok(checked) => checked,
            Err(why) => {
                self.stats.add(Counter::DropMalformed);
                self.log_drop(|| {
                    format!(
                        "dropped {} bytes from {client} on port {}: {why}",
                        msg.len(),
                        self.cfg.nat_pmp_port
                    )
                });
                return;
            }
        };
        let Some(upstream) = self.upstream_for(client, MapRequest::parse(&checked)) else {
            return;
        };
        match upstream.send(msg).await {
            Ok(_) => {
                self.stats.add(match checked.protocol {
                    Protocol::NatPmp => Counter::NatPmpToCgn,
                    Protocol::Pcp => Counter::PcpToCgn,
                });
                debug!(
                    "{} {client} -> {}: {}",
                    checked.protocol.name(),
                    self.cfg.cgn,
                    checked
                );
            }
            Err(e) => {
                self.stats.add(Counter::DropSendFailed);
                warn!(
                    "relaying {} from {client} to the CGN {}: {e}",
                    checked.protocol.name(),
                    self.cfg.cgn
                );
            }
        }
    }

    /// Has the server answer `msg` in a task of its own (it may ask the CGN first). Limited
    /// like relayed requests: the host's rate, one request in flight per client tuple (a
    /// retransmission while the first is answered is dropped; the answer reaches it
    /// anyway), `QUOTA_PER_HOST` per host and `--max-clients` in all.
    fn serve(self: &Arc<Self>, server: Arc<PortControlServer>, client: SocketAddrV4, msg: &[u8]) {
        {
            let mut table = self.table.lock().unwrap();
            if !self.within_rate(&mut table, client) {
                return;
            }
            if table.serving.contains(&client) {
                self.stats.add(Counter::DropBusy);
                return;
            }
            let of_host = table
                .serving
                .iter()
                .filter(|c| c.ip() == client.ip())
                .count();
            let quota_on = self.cfg.rate_limit != 0;
            if (quota_on && of_host >= QUOTA_PER_HOST)
                || table.serving.len() >= self.cfg.max_clients as usize
            {
                self.stats.add(Counter::DropQuota);
                self.log_drop(|| format!("dropped request from {client}: too many in flight"));
                return;
            }
            table.serving.insert(client);
        }
        let relay = self.clone();
        let msg = msg.to_vec();
        self.tasks.spawn(async move {
            if let Some(reply) = server.answer(client, &msg).await {
                match relay.lan.send_to(&reply, client).await {
                    Ok(_) => relay.stats.add(match msg[0] {
                        0 => Counter::NatPmpAnswered,
                        _ => Counter::PcpAnswered,
                    }),
                    Err(e) => {
                        relay.stats.add(Counter::DropSendFailed);
                        warn!("answering {client}: {e}");
                    }
                }
            } else {
                relay.stats.add(Counter::DropMalformed);
            }
            relay.table.lock().unwrap().serving.remove(&client);
        });
    }

    /// Charges `client`'s host one request against `--rate-limit`; false (counted) if over.
    fn within_rate(&self, table: &mut Table, client: SocketAddrV4) -> bool {
        if table.rate.allow(*client.ip(), Instant::now()) {
            return true;
        }
        self.stats.add(Counter::DropRateLimit);
        self.log_drop(|| {
            format!(
                "dropped request from {client}: over {}/s",
                self.cfg.rate_limit
            )
        });
        false
    }

    /// Logs a dropped request (`-vv`) unless one was logged in the last second; every drop
    /// is counted either way. Under a flood one line per datagram would be a flood of its
    /// own, and writing it slowed the relay until other hosts' requests overflowed the LAN
    /// socket's buffer and were lost before the rate limit could tell them apart.
    fn log_drop(&self, line: impl FnOnce() -> String) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let now = Instant::now();
        let mut quiet_until = self.drops_quiet_until.lock().unwrap();
        if now >= *quiet_until {
            debug!("{} (further drops counted, not logged, for 1 s)", line());
            *quiet_until = now + std::time::Duration::from_secs(1);
        }
    }

    /// The client's transparent socket, created (with its reply task) on first
    /// use; remembers `request` (before it is sent, so the answer finds it).
    fn upstream_for(
        self: &Arc<Self>,
        client: SocketAddrV4,
        request: Option<MapRequest>,
    ) -> Option<Arc<UdpSocket>> {
        let mut table = self.table.lock().unwrap();
        if !self.within_rate(&mut table, client) {
            return None;
        }
        if let Some(entry) = table.clients.get_mut(&client) {
            entry.last_request = Instant::now();
            if let Some(request) = request {
                entry.remember(request);
            }
            return Some(entry.upstream.clone());
        }
        if table.clients.len() >= self.cfg.max_clients as usize {
            self.stats.add(Counter::DropTableFull);
            self.log_drop(|| {
                format!(
                    "dropped request from {client}: {} clients already in flight",
                    self.cfg.max_clients
                )
            });
            return None;
        }
        let quota_on = self.cfg.rate_limit != 0;
        if quota_on && table.per_host.get(client.ip()).copied().unwrap_or(0) >= QUOTA_PER_HOST {
            self.stats.add(Counter::DropQuota);
            self.log_drop(|| {
                format!(
                    "dropped request from {client}: its host has {QUOTA_PER_HOST} requests in flight"
                )
            });
            return None;
        }
        let server = SocketAddrV4::new(self.cfg.cgn, self.cfg.nat_pmp_port);
        let upstream = match sockets::transparent_udp(client, server) {
            Ok(socket) => Arc::new(socket),
            Err(e) => {
                self.stats.add(Counter::DropSendFailed);
                warn!("cannot send as {client} (transparent socket): {e}");
                return None;
            }
        };
        table.clients.insert(
            client,
            Client {
                upstream: upstream.clone(),
                last_request: Instant::now(),
                pending: request.into_iter().collect(),
            },
        );
        *table.per_host.entry(*client.ip()).or_default() += 1;
        self.tasks
            .spawn(self.clone().replies(client, upstream.clone()));
        Some(upstream)
    }

    /// Delivers the CGN's replies for one client until it has been quiet for
    /// the pending timeout. The socket is connected to the CGN's port, so the
    /// kernel already discards datagrams from any other source.
    ///
    /// It waits without a buffer: the buffer and the reply's state (2.9 KB on
    /// x86-64) are allocated only while a reply is handled, so each client in
    /// flight costs a task of a few hundred bytes (512 of them under a flood
    /// were 1.4 MiB of the daemon's RSS).
    async fn replies(self: Arc<Self>, client: SocketAddrV4, upstream: Arc<UdpSocket>) {
        loop {
            match tokio::time::timeout(self.cfg.pending_timeout, upstream.readable()).await {
                Ok(Ok(())) => {
                    let mut buf = vec![0u8; BUF_LEN];
                    match upstream.try_recv(&mut buf) {
                        Ok(len) => Box::pin(self.reply(client, &buf[..len])).await,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        // ICMP errors (CGN port closed while it restarts) surface here.
                        Err(e) => debug!("{client}: CGN {} unreachable: {e}", self.cfg.cgn),
                    }
                }
                Ok(Err(e)) => debug!("{client}: CGN {} unreachable: {e}", self.cfg.cgn),
                Err(_) if self.expire(client) => return,
                Err(_) => {}
            }
        }
    }

    async fn reply(&self, client: SocketAddrV4, msg: &[u8]) {
        let checked = match port_control::check_response(msg) {
            Ok(checked) => checked,
            Err(why) => {
                self.stats.add(Counter::DropMalformed);
                debug!(
                    "dropped {} bytes from the CGN for {client}: {why}",
                    msg.len()
                );
                return;
            }
        };
        self.learn(client, &checked).await;
        match self.lan.send_to(msg, client).await {
            Ok(_) => {
                self.stats.add(match checked.protocol {
                    Protocol::NatPmp => Counter::NatPmpToClient,
                    Protocol::Pcp => Counter::PcpToClient,
                });
                debug!(
                    "{} {} -> {client}: {}",
                    checked.protocol.name(),
                    self.cfg.cgn,
                    checked
                );
            }
            Err(e) => {
                self.stats.add(Counter::DropSendFailed);
                warn!("delivering a reply to {client}: {e}");
            }
        }
    }

    /// Takes what a response from the CGN to `client` says into the mapping
    /// table (see [`learn`]); a grant counts if it answers one of the client's
    /// requests in flight. Returns once a granted hole is open.
    async fn learn(&self, client: SocketAddrV4, checked: &Checked<'_>) {
        let answers = |response: &MapResponse| {
            let mut table = self.table.lock().unwrap();
            table
                .clients
                .get_mut(&client)
                .and_then(|c| c.answered(response))
                .is_some()
        };
        learn(
            &self.cfg,
            &self.stats,
            &self.mappings,
            client,
            checked,
            answers,
        )
        .await;
    }

    /// Forgets the client if it sent nothing for the pending timeout.
    fn expire(&self, client: SocketAddrV4) -> bool {
        let mut table = self.table.lock().unwrap();
        let idle = table
            .clients
            .get(&client)
            .is_none_or(|c| c.last_request.elapsed() >= self.cfg.pending_timeout);
        if idle {
            table.remove(client);
            self.stats.add(Counter::Expired);
            debug!("{client}: entry expired");
        }
        idle
    }
}

/// Takes what a response from the CGN to `client` says into the mapping table:
/// the external address, and grants and deletes for which `answers` holds (the
/// socket relay matches them to the client's requests in flight; on the fast
/// path the program matched the client's `CLIENTS` entry). Returns once a
/// granted hole is open. Shared by both data paths.
pub async fn learn(
    cfg: &Config,
    stats: &Stats,
    mappings: &Mappings,
    client: SocketAddrV4,
    checked: &Checked<'_>,
    answers: impl FnOnce(&MapResponse) -> bool,
) {
    if let Some(public) = port_control::natpmp_public_address(checked) {
        mappings.public_address(public).await;
        return;
    }
    let Some(response) = MapResponse::parse(checked) else {
        return;
    };
    if response.result != 0 {
        return;
    }
    if !answers(&response) {
        stats.add(Counter::GrantUnmatched);
        debug!("{client}: a grant that answers no request in flight; not taken");
        return;
    }
    // THIRD_PARTY: the CGN granted the mapping for the host the option names.
    let host = response.third_party.unwrap_or(*client.ip());
    if !mapping::is_lan_host(host, &cfg.lan, &[cfg.lan.addr, cfg.wan.addr]) {
        stats.add(Counter::MappingRefusedNotLan);
        warn!("{client}: a grant for {host}, not a LAN host; no hole");
        return;
    }
    let Some(proto) = Transport::from_number(response.protocol) else {
        stats.add(Counter::MappingRefusedProtocol);
        debug!(
            "{client}: a grant for protocol {}; no hole",
            response.protocol
        );
        return;
    };
    let key = Key {
        host,
        proto,
        internal_port: response.internal_port,
    };
    if response.lifetime == 0 {
        mappings.deleted(key).await;
        return;
    }
    let origin = match response.nonce {
        Some(nonce) => Origin::PcpMap { nonce },
        None => Origin::NatPmp,
    };
    let external = response.external_addr.unwrap_or(Ipv4Addr::UNSPECIFIED);
    // Refused grants are counted and logged by the table; the client gets the CGN's answer.
    let _ = mappings
        .granted(Grant {
            key,
            external: SocketAddrV4::new(external, response.external_port),
            lifetime: response.lifetime,
            origin,
            backing: Backing::Relayed,
            client,
            local_port: None,
        })
        .await;
}
