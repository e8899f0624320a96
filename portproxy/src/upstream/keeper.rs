//! Keeps the table's mappings at the CGN when the CGN loses them (a reboot, a restart of
//! its daemon) or its external address changes.
//!
//! While the table holds mappings the keeper asks the CGN for its epoch every `POLL` (a
//! PCP ANNOUNCE, a NAT-PMP public address request: what it speaks), and right away when
//! the CGN announces itself on 224.0.0.1:5350. An epoch that says the CGN lost its state
//! (`EpochWatch`), or a new external address, makes it:
//! 1. re-create every mapping the table holds, as the host that has it (in double NAT: as
//!    the router, for the mapping's local port), with the external
//!    port it had suggested and the lifetime it has left: proxied ones with the protocol and
//!    nonce that made them, relayed ones with the client's own protocol (a PCP client's
//!    nonce is in the table) for the rest of the lifetime their client was granted;
//! 2. start a new epoch of its own (the servers' answers show it), and tell the LAN:
//!    NAT-PMP address announcements and PCP ANNOUNCEs to 224.0.0.1:5350, ten times from
//!    250 ms on, doubling (RFC 6886 §3.2.1, RFC 6887 §14.1.3). For a relayed protocol the
//!    announcement carries the CGN's epoch, as the CGN's own would.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use tokio::net::UdpSocket;

use super::epoch::EpochWatch;
use super::probe::{self, Epochs};
use super::{Ask, Exchanges, Handling, Plan, Speaks, Upstream, Via};
use crate::clock::boot_time;
use crate::config::Config;
use crate::mapping::{Backing, Entry, Grant, Mappings, Origin};
use crate::proto::{natpmp, pcp};
use crate::serve::Identity;
use crate::sockets;
use crate::stats::{Counter, Stats};

/// How often the CGN's epoch is asked for while there are mappings to keep.
const POLL: Duration = Duration::from_secs(5);
/// When mappings the CGN refused or did not answer are asked for again (PCP's short error
/// lifetime, RFC 6887 §7.2).
const RETRY: Duration = Duration::from_secs(30);
/// NAT-PMP and PCP clients listen for announcements here.
const ANNOUNCE_TO: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 1), sockets::ANNOUNCE_PORT);
const ANNOUNCEMENTS: u32 = 10;
const FIRST_ANNOUNCEMENT: Duration = Duration::from_millis(250);

/// What the keeper knows of the CGN; it outlives rebuilds of the data path (a CGN that
/// rebooted during a flap is found out at the first answer after it), and starts afresh
/// when the CGN's address changes.
#[derive(Debug, Default)]
pub struct CgnState {
    cgn: Option<Ipv4Addr>,
    pcp: EpochWatch,
    nat_pmp: EpochWatch,
    public_addr: Option<Ipv4Addr>,
    /// The router's WAN address the last data path ran with.
    wan_addr: Option<Ipv4Addr>,
}

impl CgnState {
    /// Takes in the router's WAN address; true when it changed. In double NAT the CGN maps
    /// to that address, so every mapping must be made again for the new one (the old ones
    /// run out at the CGN by themselves: the old address is gone).
    pub fn new_wan_address(&mut self, wan: Ipv4Addr) -> bool {
        self.wan_addr
            .replace(wan)
            .is_some_and(|before| before != wan)
    }

    /// Takes in what the CGN at `cgn` answered; true when its mappings must be re-created.
    pub fn lost_state(&mut self, cgn: Ipv4Addr, epochs: &Epochs) -> bool {
        if self.cgn != Some(cgn) {
            *self = CgnState {
                cgn: Some(cgn),
                wan_addr: self.wan_addr,
                ..CgnState::default()
            };
        }
        let now = boot_time();
        let mut lost = false;
        if let Some(epoch) = epochs.pcp {
            lost |= self.pcp.lost_state(epoch, now);
        }
        if let Some((epoch, addr)) = epochs.nat_pmp {
            lost |= self.nat_pmp.lost_state(epoch, now);
            lost |= self.public_addr.is_some_and(|before| before != addr);
            self.public_addr = Some(addr);
        }
        lost
    }
}

pub struct Keeper {
    pub cfg: Arc<Config>,
    pub speaks: Speaks,
    pub plan: Plan,
    pub mappings: Arc<Mappings>,
    pub stats: Arc<Stats>,
    pub identity: Arc<Identity>,
    pub state: Arc<Mutex<CgnState>>,
    /// Shared with the servers (`serve::Mapper`): one exchange at a time about a mapping.
    pub exchanges: Arc<Exchanges>,
    /// Sends the announcements: bound to the LAN address and port 5351.
    pub lan: Arc<UdpSocket>,
}

impl Keeper {
    /// Runs until cancelled with the data path; `recreate`: the probe that started this data
    /// path found the CGN lost its state, so the mappings are re-created first.
    pub async fn run(self, recreate: bool) {
        let this = Arc::new(self);
        if let Err(e) = sockets::multicast_on_lan(&this.lan, &this.cfg.lan) {
            warn!("announcements to the LAN: {e}");
        }
        // Dropped (so aborted) with this future.
        let mut announcing = tokio::task::JoinSet::new();
        // Mappings the CGN refused or did not answer when they were made again.
        let mut retry_at = None;
        if recreate {
            let epochs = probe::epochs(&this.cfg, this.speaks).await;
            if !this.after_loss(epochs).await {
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
            announcing.spawn(this.clone().announce(epochs, boot_time()));
        }
        let listener = match sockets::announcement_listener(&this.cfg.wan) {
            Ok(socket) => Some(socket),
            Err(e) => {
                warn!("not listening for the CGN's announcements on port 5350: {e}");
                None
            }
        };
        let mut buf = [0u8; pcp::MAX_LEN];
        let mut last_check = tokio::time::Instant::now();
        let mut last_passed_on = last_check
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(last_check);
        loop {
            let announced = async {
                match &listener {
                    Some(socket) => match socket.recv_from(&mut buf).await {
                        Ok((len, from)) if from.ip() == std::net::IpAddr::V4(this.cfg.cgn) => {
                            Some(len)
                        }
                        _ => None,
                    },
                    None => std::future::pending().await,
                }
            };
            let announced = tokio::select! {
                _ = tokio::time::sleep(POLL) => None,
                announced = announced => announced,
            };
            if let Some(len) = announced {
                // An announcement is passed on and makes it look at once; a flood of them
                // cannot make it do either more than once a second.
                if last_passed_on.elapsed() >= Duration::from_secs(1) {
                    last_passed_on = tokio::time::Instant::now();
                    info!("the CGN {} announced itself", this.cfg.cgn);
                    this.pass_on(&buf[..len]).await;
                }
                tokio::time::sleep_until(last_check + Duration::from_secs(1)).await;
            } else if this.mappings.len() == 0 {
                continue;
            }
            last_check = tokio::time::Instant::now();
            let epochs = probe::epochs(&this.cfg, this.speaks).await;
            if this.state.lock().unwrap().lost_state(this.cfg.cgn, &epochs) {
                retry_at =
                    (!this.after_loss(epochs).await).then(|| tokio::time::Instant::now() + RETRY);
                announcing.abort_all();
                announcing.spawn(this.clone().announce(epochs, boot_time()));
            } else if retry_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                retry_at = (!this.recreate().await).then(|| tokio::time::Instant::now() + RETRY);
            }
        }
    }

    /// Multicasts the CGN's own announcement on the LAN, from the LAN address, when its
    /// protocol is relayed: clients talk to the CGN then, and should hear it too.
    async fn pass_on(&self, msg: &[u8]) {
        let relayed = match msg.first() {
            Some(&natpmp::VERSION) => {
                self.plan.nat_pmp == Handling::Relay && natpmp::parse_public_address(msg).is_some()
            }
            Some(_) => {
                self.plan.pcp == Handling::Relay
                    && pcp::parse_response(msg).is_some_and(|r| r.opcode == pcp::OPCODE_ANNOUNCE)
            }
            None => false,
        };
        if !relayed {
            return;
        }
        match self.lan.send_to(msg, ANNOUNCE_TO).await {
            Ok(_) => self.stats.add(Counter::AnnouncementsRelayed),
            Err(e) => warn!("passing the CGN's announcement on to the LAN: {e}"),
        }
    }

    /// The CGN lost its state (`epochs` from just after): re-create, and a new epoch. False
    /// if some mapping could not be made again.
    async fn after_loss(&self, epochs: Epochs) -> bool {
        warn!(
            "the CGN {} lost its mappings (restarted) or changed its external address, or (double \
             NAT) this router's WAN address changed; re-creating them",
            self.cfg.cgn
        );
        if let Some((_, addr)) = epochs.nat_pmp {
            self.mappings.public_address(addr).await;
        }
        let all = self.recreate().await;
        self.identity.new_epoch();
        all
    }

    /// Asks the CGN again for every mapping of the table; false if it refused or did not
    /// answer for one of them.
    async fn recreate(&self) -> bool {
        let now = boot_time();
        let public = self.mappings.known_public_address().await;
        let mut all = true;
        for key in self.mappings.entries().await.into_iter().map(|e| e.key) {
            // Deleted (or renewed) meanwhile, by a client, the API or a forward: a deleted
            // mapping must not be made again, so the table is read with the turn held.
            let _turn = self.exchanges.turn(key).await;
            let Some(entry) = self.mappings.get(&key).await else {
                continue;
            };
            let Some((via, nonce)) = upstream_of(&entry) else {
                continue;
            };
            let Some(left) = entry.expires.and_then(|t| t.checked_sub(now)) else {
                continue;
            };
            let lifetime = u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX);
            let ask = Ask::for_entry(&entry, self.cfg.wan.addr, lifetime, nonce);
            let upstream = Upstream::of(&self.cfg, via, None, self.exchanges.sockets.clone());
            match upstream.map(&ask).await {
                Ok(granted) => {
                    self.stats.add(Counter::MappingsRecreated);
                    // NAT-PMP does not say the address: the one last learned (a new one after
                    // an address change), else the one the mapping had.
                    let mut external = granted.external;
                    if external.ip().is_unspecified() {
                        external.set_ip(public.unwrap_or(*entry.external.ip()));
                    }
                    let grant = Grant {
                        key: entry.key,
                        external,
                        lifetime: granted.lifetime,
                        origin: entry.origin.clone(),
                        backing: entry.backing,
                        client: entry.client,
                        local_port: entry.local_port,
                    };
                    // A refusal is counted and logged by the table.
                    let _ = self.mappings.granted(grant).await;
                }
                Err(failure) => {
                    all = false;
                    self.stats.add(Counter::UpstreamFailed);
                    warn!(
                        "re-creating {} at the CGN: {failure}; trying again in {RETRY:?}",
                        entry.key,
                    );
                }
            }
        }
        all
    }

    /// Multicasts the announcements on the LAN: the servers' own epoch for a protocol
    /// portproxy answers, the CGN's (from `epochs`, seen at `seen`) for a relayed one.
    async fn announce(self: Arc<Self>, epochs: Epochs, seen: Duration) {
        let Some(public) = self.mappings.known_public_address().await else {
            return;
        };
        let mut wait = FIRST_ANNOUNCEMENT;
        for _ in 0..ANNOUNCEMENTS {
            let since = u32::try_from(boot_time().saturating_sub(seen).as_secs()).unwrap_or(0);
            let cgn_epoch = |e: Option<u32>| e.unwrap_or(0).saturating_add(since);
            let epoch = |handling, cgn| match handling {
                Handling::Serve => self.identity.epoch(),
                Handling::Relay => cgn,
            };
            let natpmp_epoch = epoch(self.plan.nat_pmp, cgn_epoch(epochs.nat_pmp.map(|e| e.0)));
            let pcp_epoch = epoch(self.plan.pcp, cgn_epoch(epochs.pcp));
            for msg in [
                natpmp::announcement(natpmp_epoch, public),
                pcp::announcement(pcp_epoch),
            ] {
                if let Err(e) = self.lan.send_to(&msg, ANNOUNCE_TO).await {
                    warn!("announcing on the LAN: {e}");
                }
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
}

/// How a mapping is asked for again: the protocol and nonce that made it at the CGN. A UPnP
/// mapping is not: UPnP has no epoch that would tell it was lost.
fn upstream_of(entry: &Entry) -> Option<(Via, [u8; 12])> {
    Some(made_with(entry)).filter(|(via, _)| *via != Via::Upnp)
}

/// The protocol and nonce that made `entry` at the CGN: the request portproxy made for it,
/// or the client's own when it was relayed.
pub fn made_with(entry: &Entry) -> (Via, [u8; 12]) {
    match (entry.backing, &entry.origin) {
        (Backing::Pcp { nonce }, _) => (Via::Pcp, nonce),
        (Backing::NatPmp, _) => (Via::NatPmp, [0; 12]),
        (Backing::Upnp, _) => (Via::Upnp, [0; 12]),
        (Backing::Relayed, Origin::PcpMap { nonce }) => (Via::Pcp, *nonce),
        (Backing::Relayed, Origin::NatPmp) => (Via::NatPmp, [0; 12]),
        // A manual forward is always made by portproxy, never relayed.
        (Backing::Relayed, Origin::Upnp { .. } | Origin::Manual { .. }) => (Via::Upnp, [0; 12]),
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdUdpSocket;

    use tokio::sync::mpsc;

    use super::*;
    use crate::cli::{Hooks, Mode};
    use crate::config::Side;
    use crate::mapping::{Key, Limits};
    use crate::proto::Transport;
    use crate::proto::pcp::{Parsed, parse_request, response, result};
    use crate::serve::Mapper;
    use crate::sockets::Sender;

    const CGN: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 1);
    const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
    const NONCE: [u8; 12] = [7; 12];
    const KEY: Key = Key {
        host: HOST,
        proto: Transport::Tcp,
        internal_port: 8411,
    };

    /// A PCP CGN on loopback: records the lifetime of every MAP of `KEY` it gets, in order
    /// (0: a delete), until the test's empty datagram; answers a delete at once, a map only
    /// when it is sent again (the CGN slow, or its first answer lost), and says on
    /// `first_copy` when it left a map unanswered.
    struct FakeCgn {
        addr: SocketAddrV4,
        heard: std::thread::JoinHandle<Vec<u32>>,
        first_copy: mpsc::UnboundedReceiver<u32>,
    }

    impl FakeCgn {
        fn start() -> FakeCgn {
            let cgn = StdUdpSocket::bind((HOST, 0)).unwrap();
            cgn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let addr = match cgn.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                other => panic!("{other}"),
            };
            let (tell, first_copy) = mpsc::unbounded_channel();
            let heard = std::thread::spawn(move || {
                let mut buf = [0u8; pcp::MAX_LEN];
                let mut heard = Vec::new();
                loop {
                    let (len, from) = cgn.recv_from(&mut buf).expect("the test's end");
                    if len == 0 {
                        return heard;
                    }
                    let Parsed::Request(request) = parse_request(&buf[..len]) else {
                        panic!("not a PCP request");
                    };
                    let map = request.map.expect("a MAP");
                    assert_eq!((map.nonce, map.internal_port), (NONCE, KEY.internal_port));
                    let again = heard.last() == Some(&request.lifetime);
                    heard.push(request.lifetime);
                    if request.lifetime != 0 && !again {
                        tell.send(request.lifetime).unwrap();
                        continue;
                    }
                    let answer = response(&request, result::SUCCESS, request.lifetime, 1, None);
                    cgn.send_to(&answer, from).unwrap();
                }
            });
            FakeCgn {
                addr,
                heard,
                first_copy,
            }
        }

        /// What it heard, once everything asked of it has ended.
        fn heard(self) -> Vec<u32> {
            StdUdpSocket::bind((HOST, 0))
                .unwrap()
                .send_to(&[], self.addr)
                .unwrap();
            self.heard.join().unwrap()
        }
    }

    /// A keeper and a mapper (the servers', the API's, the forwards') that share `KEY`'s
    /// PCP mapping, made with `NONCE`, and ask `cgn` as this host.
    async fn keeper_and_mapper(cgn: SocketAddrV4) -> (Arc<Keeper>, Mapper) {
        let side = Side {
            iface: "lo".into(),
            index: 1,
            addr: HOST,
            prefix_len: 8,
        };
        let cfg = Arc::new(Config {
            lan: side.clone(),
            wan: side,
            cgn: *cgn.ip(),
            nat_pmp: true,
            upnp_udp: false,
            upnp_tcp: false,
            nat_pmp_port: cgn.port(),
            ssdp_port: 1900,
            http_ports: [5000, 5001],
            pending_timeout: Duration::from_secs(2),
            max_clients: 16,
            rate_limit: 0,
            hooks: Hooks::Tc,
        });
        let stats = Arc::new(Stats::default());
        let limits = Limits {
            total: 8,
            per_host: 8,
        };
        let mappings = Mappings::new(limits, None, None, stats.clone());
        let grant = Grant {
            key: KEY,
            external: SocketAddrV4::new(Ipv4Addr::new(203, 0, 114, 1), 9411),
            lifetime: 600,
            origin: Origin::PcpMap { nonce: NONCE },
            backing: Backing::Pcp { nonce: NONCE },
            client: SocketAddrV4::new(HOST, 40000),
            local_port: None,
        };
        mappings.granted(grant).await.unwrap();
        let identity = Arc::new(Identity::default());
        let exchanges = Arc::new(Exchanges::new(Sender::Myself));
        let speaks = Speaks {
            pcp: true,
            ..Speaks::default()
        };
        let keeper = Keeper {
            cfg: cfg.clone(),
            speaks,
            plan: Plan::choose(Mode::Proxy, speaks),
            mappings: mappings.clone(),
            stats,
            identity: identity.clone(),
            state: Arc::default(),
            exchanges: exchanges.clone(),
            lan: Arc::new(UdpSocket::bind((HOST, 0)).await.unwrap()),
        };
        let mapper = Mapper::new(cfg, Some(Via::Pcp), None, mappings, identity, exchanges);
        (Arc::new(keeper), mapper)
    }

    /// The keeper re-creating a mapping (its MAP still being sent again) while a client
    /// deletes it: the delete waits for the keeper's exchange, so the CGN's last word on the
    /// mapping is the delete, as the table's is.
    #[tokio::test]
    async fn a_delete_during_a_re_creation_is_the_cgns_last_word() {
        let mut cgn = FakeCgn::start();
        let (keeper, mapper) = keeper_and_mapper(cgn.addr).await;
        let recreating = tokio::spawn({
            let keeper = keeper.clone();
            async move { keeper.recreate().await }
        });
        let asked = tokio::time::timeout(Duration::from_secs(10), cgn.first_copy.recv());
        assert!(asked.await.unwrap().is_some(), "the keeper's MAP");
        mapper.delete(KEY, None).await.unwrap();
        assert!(recreating.await.unwrap(), "the keeper's MAP answered");
        let heard = cgn.heard();
        assert_eq!(heard.last(), Some(&0), "the CGN heard {heard:?}");
        assert!(mapper.mappings.get(&KEY).await.is_none());
    }

    /// The other order: a mapping deleted while the keeper waited for its turn is not made
    /// again.
    #[tokio::test]
    async fn a_mapping_deleted_while_the_keeper_waited_is_not_made_again() {
        let cgn = FakeCgn::start();
        let (keeper, mapper) = keeper_and_mapper(cgn.addr).await;
        // A delete in flight: it has the turn, the table still has the mapping.
        let deleting = keeper.exchanges.turn(KEY).await;
        let recreating = tokio::spawn({
            let keeper = keeper.clone();
            async move { keeper.recreate().await }
        });
        for _ in 0..1000 {
            if keeper.exchanges.waited_for(&KEY) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(keeper.exchanges.waited_for(&KEY), "the keeper waits");
        mapper.mappings.deleted(KEY).await;
        drop(deleting);
        assert!(recreating.await.unwrap());
        assert_eq!(cgn.heard(), Vec::<u32>::new());
        assert!(mapper.mappings.get(&KEY).await.is_none());
    }

    #[test]
    fn a_restart_or_a_new_address_means_recreating() {
        let public = Ipv4Addr::new(203, 0, 114, 1);
        let mut s = CgnState::default();
        let seen = |pcp, nat_pmp| Epochs { pcp, nat_pmp };
        assert!(!s.lost_state(CGN, &seen(Some(100), Some((100, public)))));
        assert!(!s.lost_state(CGN, &seen(Some(100), Some((100, public)))));
        assert!(
            s.lost_state(CGN, &seen(Some(1), None)),
            "PCP epoch went back"
        );
        assert!(!s.lost_state(CGN, &seen(Some(1), None)));
        let other = Ipv4Addr::new(203, 0, 114, 9);
        assert!(
            s.lost_state(CGN, &seen(None, Some((100, other)))),
            "new address"
        );
        // Another CGN: nothing to compare with yet.
        assert!(!s.lost_state(Ipv4Addr::new(192, 0, 0, 9), &seen(Some(1), None)));
    }

    #[test]
    fn a_new_wan_address_is_noticed_once() {
        let mut s = CgnState::default();
        let (wan, other) = (Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 3));
        assert!(!s.new_wan_address(wan), "the first is no change");
        assert!(!s.new_wan_address(wan));
        assert!(s.new_wan_address(other));
        assert!(!s.lost_state(CGN, &Epochs::default()));
        assert!(!s.new_wan_address(other), "kept across another CGN");
    }
}
