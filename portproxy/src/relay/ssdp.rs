//! SSDP on sockets.
//!
//! LAN -> WAN: each M-SEARCH (multicast, or unicast to the LAN address) is
//! sent to the CGN from a fresh socket on the WAN address, and every reply
//! arriving on that socket within the search's MX window goes back to the
//! searching client. WAN -> LAN: NOTIFY from the CGN is multicast on the LAN.
//! Nothing else crosses: no searches from the WAN, no notifies from the LAN,
//! nothing portproxy sent itself.
//!
//! When portproxy is the LAN's IGD (`serve::IgdServer`), searches are answered here
//! instead of relayed, and the IGD's NOTIFY go out on the LAN.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use log::{debug, warn};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::Config;
use crate::proto::{location, ssdp};
use crate::relay::Tasks;
use crate::relay::http::HttpRelay;
use crate::relay::rate_limit::RateLimit;
use crate::serve::IgdServer;
use crate::sockets;
use crate::stats::{Counter, Stats};

/// Searches in flight at once; more are dropped and counted.
const MAX_SEARCHES: usize = 64;
/// Extra wait after MX for replies still on the wire.
const MX_MARGIN: Duration = Duration::from_millis(500);

pub struct SsdpRelay {
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    http: Option<Arc<HttpRelay>>,
    igd: Option<Arc<IgdServer>>,
    lan: UdpSocket,
    wan: UdpSocket,
    searches: Arc<Semaphore>,
    rate: std::sync::Mutex<RateLimit>,
    tasks: Tasks,
}

impl SsdpRelay {
    pub fn bind(
        cfg: Arc<Config>,
        stats: Arc<Stats>,
        http: Option<Arc<HttpRelay>>,
        igd: Option<Arc<IgdServer>>,
        tasks: &Tasks,
    ) -> Result<Arc<Self>> {
        let listen = |side| {
            let addr = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, cfg.ssdp_port);
            sockets::ssdp_listener(side, cfg.ssdp_port)
                .map_err(|e| sockets::explain_bind(e, "SSDP relay", addr, "--upnp-udp"))
        };
        let lan = listen(&cfg.lan).with_context(|| format!("SSDP on {}", cfg.lan.iface))?;
        let wan = listen(&cfg.wan).with_context(|| format!("SSDP on {}", cfg.wan.iface))?;
        Ok(Arc::new(SsdpRelay {
            lan,
            wan,
            http,
            igd,
            searches: Arc::new(Semaphore::new(MAX_SEARCHES)),
            rate: std::sync::Mutex::new(RateLimit::new(cfg.rate_limit)),
            tasks: tasks.clone(),
            cfg,
            stats,
        }))
    }

    pub async fn run(self: Arc<Self>) -> Result<()> {
        tokio::try_join!(
            self.clone().from_lan(),
            self.clone().from_wan(),
            self.alive()
        )?;
        Ok(())
    }

    /// The IGD's NOTIFY ssdp:alive, at start and then twice per validity; nothing without
    /// an IGD.
    async fn alive(self: Arc<Self>) -> Result<()> {
        let Some(igd) = &self.igd else {
            return Ok(());
        };
        loop {
            self.notify(igd, true).await;
            tokio::time::sleep(IgdServer::notify_interval()).await;
        }
    }

    /// The IGD's NOTIFY ssdp:byebye, when it goes away.
    pub async fn goodbye(&self) {
        if let Some(igd) = &self.igd {
            self.notify(igd, false).await;
        }
    }

    async fn notify(&self, igd: &IgdServer, alive: bool) {
        let group = SocketAddrV4::new(ssdp::GROUP, self.cfg.ssdp_port);
        for notify in igd.notifies(alive) {
            if let Err(e) = self.lan.send_to(notify.as_bytes(), group).await {
                self.stats.add(Counter::DropSendFailed);
                warn!("ssdp: the IGD's NOTIFY on {}: {e}", self.cfg.lan.iface);
                return;
            }
        }
    }

    fn is_own(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V4(self.cfg.lan.addr) || ip == IpAddr::V4(self.cfg.wan.addr)
    }

    async fn from_lan(self: Arc<Self>) -> Result<()> {
        let mut buf = vec![0u8; ssdp::MAX_LEN + 1];
        loop {
            let (len, from) = self.lan.recv_from(&mut buf).await?;
            let SocketAddr::V4(client) = from else {
                continue;
            };
            if self.is_own(from.ip()) {
                self.stats.add(Counter::DropOwn);
                continue;
            }
            if !self.cfg.lan.contains(*client.ip()) {
                // The replies would go to a third party outside the LAN.
                self.stats.add(Counter::DropNotOnLan);
                continue;
            }
            let msg = match ssdp::Message::parse(&buf[..len]) {
                Ok(msg) => msg,
                Err(why) => {
                    self.stats.add(Counter::DropMalformed);
                    debug!("ssdp: dropped {len} bytes from {client}: {why}");
                    continue;
                }
            };
            if msg.kind != ssdp::Kind::Search {
                // LAN devices announcing themselves stay on the LAN.
                self.stats.add(Counter::DropUnexpected);
                continue;
            }
            if !self
                .rate
                .lock()
                .unwrap()
                .allow(*client.ip(), std::time::Instant::now())
            {
                self.stats.add(Counter::DropRateLimit);
                continue;
            }
            if let Some(igd) = &self.igd {
                debug!("ssdp {client}: {} (answered here)", msg.summary());
                for answer in igd.answers(msg.header("ST").unwrap_or_default()) {
                    if let Err(e) = self.lan.send_to(answer.as_bytes(), client).await {
                        self.stats.add(Counter::DropSendFailed);
                        debug!("ssdp: answering {client}: {e}");
                        break;
                    }
                }
                continue;
            }
            let Ok(permit) = self.searches.clone().try_acquire_owned() else {
                self.stats.add(Counter::DropTableFull);
                debug!("ssdp: dropped search from {client}: {MAX_SEARCHES} searches in flight");
                continue;
            };
            debug!("ssdp {client} -> {}: {}", self.cfg.wan.iface, msg.summary());
            let window = Duration::from_secs(msg.mx().into()) + MX_MARGIN;
            let search = buf[..len].to_vec();
            let relay = self.clone();
            self.tasks.spawn(async move {
                if let Err(e) = relay.search(client, &search, window).await {
                    relay.stats.add(Counter::DropSendFailed);
                    warn!("ssdp: relaying a search from {client}: {e:#}");
                }
                drop(permit);
            });
        }
    }

    /// Sends one search to the WAN and returns every reply in `window` to `client`.
    async fn search(&self, client: SocketAddrV4, search: &[u8], window: Duration) -> Result<()> {
        let socket =
            sockets::ssdp_searcher(&self.cfg.wan).context("opening a search socket on the WAN")?;
        socket
            .send_to(search, SocketAddrV4::new(ssdp::GROUP, self.cfg.ssdp_port))
            .await?;
        self.stats.add(Counter::SearchToCgn);
        let deadline = Instant::now() + window;
        let mut buf = vec![0u8; ssdp::MAX_LEN + 1];
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            let (len, from) = received?;
            if from.ip() != IpAddr::V4(self.cfg.cgn) {
                self.stats.add(Counter::DropNotFromCgn);
                continue;
            }
            match ssdp::Message::parse(&buf[..len]) {
                Ok(msg) if msg.kind == ssdp::Kind::Response => {
                    debug!("ssdp {from} -> {client}: {}", msg.summary());
                    let reply = self.rewrite_location(&buf[..len]);
                    self.lan.send_to(&reply, client).await?;
                    self.stats.add(Counter::SearchReplyToClient);
                }
                Ok(_) => self.stats.add(Counter::DropUnexpected),
                Err(_) => self.stats.add(Counter::DropMalformed),
            }
        }
        Ok(())
    }

    async fn from_wan(self: Arc<Self>) -> Result<()> {
        let mut buf = vec![0u8; ssdp::MAX_LEN + 1];
        let group = SocketAddrV4::new(ssdp::GROUP, self.cfg.ssdp_port);
        loop {
            let (len, from) = self.wan.recv_from(&mut buf).await?;
            if self.is_own(from.ip()) {
                self.stats.add(Counter::DropOwn);
                continue;
            }
            if from.ip() != IpAddr::V4(self.cfg.cgn) {
                self.stats.add(Counter::DropNotFromCgn);
                continue;
            }
            match ssdp::Message::parse(&buf[..len]) {
                Ok(msg) if msg.kind == ssdp::Kind::Notify => {
                    debug!("ssdp {from} -> {}: {}", self.cfg.lan.iface, msg.summary());
                    let notify = self.rewrite_location(&buf[..len]);
                    match self.lan.send_to(&notify, group).await {
                        Ok(_) => self.stats.add(Counter::NotifyToLan),
                        Err(e) => {
                            self.stats.add(Counter::DropSendFailed);
                            warn!("ssdp: multicasting a NOTIFY on {}: {e}", self.cfg.lan.iface);
                        }
                    }
                }
                Ok(msg) if msg.kind == ssdp::Kind::Search => {
                    self.stats.add(Counter::DropFromWan);
                    debug!("ssdp: dropped a search from the WAN ({from})");
                }
                Ok(_) => self.stats.add(Counter::DropUnexpected),
                Err(_) => self.stats.add(Counter::DropMalformed),
            }
        }
    }

    /// With the HTTP relay on, LOCATION pointing at the CGN is pointed at the
    /// LAN address, where the relay listens on the same port.
    fn rewrite_location(&self, datagram: &[u8]) -> Vec<u8> {
        if let Some(http) = &self.http {
            if let Some((rewritten, port)) =
                location::rewrite(datagram, self.cfg.cgn, self.cfg.lan.addr)
            {
                if http.ensure_port(port) {
                    return rewritten;
                }
            }
        }
        datagram.to_vec()
    }
}
