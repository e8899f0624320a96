//! The IGD's actions (WANIPConnection:1 and :2, WANCommonInterfaceConfig:1), carried out as
//! RFC 6970's interworking function does: a mapping is made at the CGN in the protocol it
//! speaks (`Mapper`), as the requesting host, and held in the table; what a control point
//! reads (Get*Entry, GetListOfPortMappings) comes from the table.
//!
//! Decisions (see the README's UPnP section):
//! - Secure mode: NewInternalClient must be the requesting host (606 otherwise), and a host
//!   deletes and manages only its own mappings.
//! - AddPortMapping wants that external port or nothing (PCP PREFER_FAILURE; 718 when the
//!   CGN or another mapping here has it); AddAnyPortMapping lets the CGN choose.
//! - Leases: IGD:1's 0 is permanent; IGD:2 caps leases at a week and takes 0 as a week.
//!   The CGN is asked for at most `UPSTREAM_LIFETIME` at a time and the mapping renewed
//!   there at half its lifetime while the lease lasts (`renew`). The lease is kept with the
//!   mapping in the table (`mapping::Lease`), so it survives a rebuild and, through the
//!   mappings file, a restart.
//! - Descriptions are kept up to `MAX_DESCRIPTION` bytes.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use log::debug;

use super::description::IP_CONNECTION;
use crate::clock::boot_time;
use crate::mapping::{Entry, Key, Lease, Origin};
use crate::netif;
use crate::proto::Transport;
use crate::serve::Mapper;
use crate::upstream::Failure;

/// The longest lifetime asked of the CGN at once; longer leases are renewed there.
pub const UPSTREAM_LIFETIME: u32 = 3600;
/// IGD:2's longest lease, and what its lease 0 means (WANIPConnection:2 §2.3.16).
const WEEK: u32 = 604_800;
const MAX_DESCRIPTION: usize = 256;

/// A UPnP error: its code and the name the specifications give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpnpError(pub u16, pub &'static str);

pub const INVALID_ACTION: UpnpError = UpnpError(401, "Invalid Action");
pub const INVALID_ARGS: UpnpError = UpnpError(402, "Invalid Args");
pub const ACTION_FAILED: UpnpError = UpnpError(501, "Action Failed");
pub const NOT_AUTHORIZED: UpnpError = UpnpError(606, "Action not authorized");
const INDEX_INVALID: UpnpError = UpnpError(713, "SpecifiedArrayIndexInvalid");
const NO_SUCH_ENTRY: UpnpError = UpnpError(714, "NoSuchEntryInArray");
const WILDCARD_EXTERNAL_PORT: UpnpError = UpnpError(716, "WildCardNotPermittedInExtPort");
const CONFLICT: UpnpError = UpnpError(718, "ConflictInMappingEntry");
const REMOTE_HOST_WILDCARD_ONLY: UpnpError = UpnpError(726, "RemoteHostOnlySupportsWildcard");
const NO_PORT_MAPS: UpnpError = UpnpError(728, "NoPortMapsAvailable");
const NOT_FOUND: UpnpError = UpnpError(730, "PortMappingNotFound");
const WILDCARD_INTERNAL_PORT: UpnpError = UpnpError(732, "WildCardNotPermittedInIntPort");
const INCONSISTENT: UpnpError = UpnpError(733, "InconsistentParameters");

impl From<Failure> for UpnpError {
    /// RFC 6970 §5.2's table, with NAT-PMP's results mapped to PCP's first.
    fn from(f: Failure) -> UpnpError {
        match f {
            Failure::NotAuthorized => NOT_AUTHORIZED,
            Failure::NoResources | Failure::UserExQuota => NO_PORT_MAPS,
            Failure::CannotProvideExternal => CONFLICT,
            Failure::NetworkFailure | Failure::NoAnswer | Failure::Unexpected => ACTION_FAILED,
        }
    }
}

/// An action's output arguments, in the order the service description lists them.
pub type Output = Vec<(&'static str, String)>;

/// Seconds left of `entry`'s lease as GetSpecificPortMappingEntry says it (0: permanent).
fn lease_left(entry: &Entry, now: Duration) -> u32 {
    let end = match &entry.origin {
        Origin::Upnp {
            lease: Some(lease), ..
        } => lease.ends,
        // Not made through the IGD (NAT-PMP, PCP, relayed): what the CGN granted.
        _ => entry.expires,
    };
    end.map_or(0, |end| {
        u32::try_from(end.saturating_sub(now).as_secs().max(1)).unwrap_or(u32::MAX)
    })
}

pub struct Control {
    pub mapper: Arc<Mapper>,
    /// When the IGD started (GetStatusInfo's uptime).
    pub started: Duration,
    /// For the WAN's traffic counters.
    pub netlink: rtnetlink::Handle,
}

impl Control {
    /// Carries out `action` of `service` (its full type) for `client`.
    pub async fn call(
        &self,
        client: SocketAddrV4,
        service: &str,
        action: &str,
        args: &[(String, String)],
    ) -> Result<Output, UpnpError> {
        let version = service.rsplit(':').next().unwrap_or("1");
        let v2 = version == "2";
        let ip_connection = service.starts_with(IP_CONNECTION);
        let a = Args(args);
        debug!("upnp {client}: {service}#{action}");
        match (ip_connection, action) {
            (true, "AddPortMapping") => self.add(client, &a, false, v2).await,
            (true, "AddAnyPortMapping") if v2 => self.add(client, &a, true, v2).await,
            (true, "DeletePortMapping") => self.delete(client, &a).await,
            (true, "DeletePortMappingRange") if v2 => self.delete_range(client, &a).await,
            (true, "GetSpecificPortMappingEntry") => self.specific(&a).await,
            (true, "GetGenericPortMappingEntry") => self.generic(&a).await,
            (true, "GetListOfPortMappings") if v2 => self.list(client, &a).await,
            (true, "GetExternalIPAddress") => {
                let addr = self.mapper.public_address().await?;
                Ok(vec![("NewExternalIPAddress", addr.to_string())])
            }
            (true, "GetStatusInfo") => Ok(vec![
                ("NewConnectionStatus", "Connected".into()),
                ("NewLastConnectionError", "ERROR_NONE".into()),
                (
                    "NewUptime",
                    boot_time()
                        .saturating_sub(self.started)
                        .as_secs()
                        .to_string(),
                ),
            ]),
            (true, "GetConnectionTypeInfo") => Ok(vec![
                ("NewConnectionType", "IP_Routed".into()),
                ("NewPossibleConnectionTypes", "IP_Routed".into()),
            ]),
            (true, "GetNATRSIPStatus") => Ok(vec![
                ("NewRSIPAvailable", "0".into()),
                ("NewNATEnabled", "1".into()),
            ]),
            (false, "GetCommonLinkProperties") => Ok(vec![
                ("NewWANAccessType", "Ethernet".into()),
                ("NewLayer1UpstreamMaxBitRate", "0".into()),
                ("NewLayer1DownstreamMaxBitRate", "0".into()),
                ("NewPhysicalLinkStatus", "Up".into()),
            ]),
            (
                false,
                "GetTotalBytesSent"
                | "GetTotalBytesReceived"
                | "GetTotalPacketsSent"
                | "GetTotalPacketsReceived",
            ) => {
                let wan = self.mapper.config().wan.index;
                let t = netif::traffic(&self.netlink, wan).await.map_err(|e| {
                    debug!("the WAN's traffic counters: {e:#}");
                    ACTION_FAILED
                })?;
                // The counters are 32-bit in WANCommonInterfaceConfig:1: they wrap.
                let (name, value) = match action {
                    "GetTotalBytesSent" => ("NewTotalBytesSent", t.tx_bytes),
                    "GetTotalBytesReceived" => ("NewTotalBytesReceived", t.rx_bytes),
                    "GetTotalPacketsSent" => ("NewTotalPacketsSent", t.tx_packets),
                    _ => ("NewTotalPacketsReceived", t.rx_packets),
                };
                Ok(vec![(name, (value & u64::from(u32::MAX)).to_string())])
            }
            _ => Err(INVALID_ACTION),
        }
    }

    /// AddPortMapping, or AddAnyPortMapping when `any`.
    async fn add(
        &self,
        client: SocketAddrV4,
        a: &Args<'_>,
        any: bool,
        v2: bool,
    ) -> Result<Output, UpnpError> {
        if !a.get("NewRemoteHost")?.is_empty() {
            return Err(REMOTE_HOST_WILDCARD_ONLY);
        }
        let proto = a.protocol()?;
        let external: u16 = a.number("NewExternalPort")?;
        let internal: u16 = a.number("NewInternalPort")?;
        if internal == 0 {
            return Err(WILDCARD_INTERNAL_PORT);
        }
        if external == 0 && !any {
            return Err(WILDCARD_EXTERNAL_PORT);
        }
        let host: Ipv4Addr = a
            .get("NewInternalClient")?
            .parse()
            .map_err(|_| INVALID_ARGS)?;
        if host != *client.ip() {
            return Err(NOT_AUTHORIZED);
        }
        if !matches!(a.get("NewEnabled")?, "1" | "true" | "yes") {
            // A disabled mapping is one that maps nothing: not kept here.
            return Err(ACTION_FAILED);
        }
        let lease: u32 = a.number("NewLeaseDuration")?;
        let lease = match (v2, lease) {
            (false, 0) => None,
            (true, 0) => Some(WEEK),
            (true, l) => Some(l.min(WEEK)),
            (false, l) => Some(l),
        };
        let key = Key {
            host,
            proto,
            internal_port: internal,
        };
        // The seed's interworking function looks here first: a port another mapping has
        // is a conflict without asking the CGN.
        let mappings = &self.mapper.mappings;
        let taken = (mappings.by_external(proto, external).await).is_some_and(|e| e.key != key);
        let external = match (taken, any) {
            (true, false) => return Err(CONFLICT),
            // AddAnyPortMapping: the CGN chooses.
            (true, true) => 0,
            (false, _) => external,
        };
        if let Some(e) = mappings.get(&key).await
            && external != 0
            && e.external.port() != external
        {
            // One mapping per internal port: this one is on another external port.
            return Err(CONFLICT);
        }
        let description = a.get("NewPortMappingDescription").unwrap_or_default();
        let description = truncate(description, MAX_DESCRIPTION).to_string();
        let upstream = lease.map_or(UPSTREAM_LIFETIME, |l| l.clamp(1, UPSTREAM_LIFETIME));
        let lease = Lease::of(lease.unwrap_or(0), boot_time()).ok_or(INVALID_ARGS)?;
        let origin = Origin::Upnp {
            any,
            description,
            lease: Some(lease),
        };
        let granted = self
            .mapper
            .map(key, (external, upstream, !any), origin, client)
            .await?;
        match any {
            true => Ok(vec![(
                "NewReservedPort",
                granted.external.port().to_string(),
            )]),
            false => Ok(Vec::new()),
        }
    }

    async fn delete(&self, client: SocketAddrV4, a: &Args<'_>) -> Result<Output, UpnpError> {
        let proto = a.protocol()?;
        let port = a.number("NewExternalPort")?;
        let entry = (self.mapper.mappings.by_external(proto, port).await).ok_or(NO_SUCH_ENTRY)?;
        if entry.key.host != *client.ip() {
            return Err(NOT_AUTHORIZED);
        }
        self.mapper.delete(entry.key, None).await?;
        Ok(Vec::new())
    }

    async fn delete_range(&self, client: SocketAddrV4, a: &Args<'_>) -> Result<Output, UpnpError> {
        let (start, end): (u16, u16) = (a.number("NewStartPort")?, a.number("NewEndPort")?);
        let proto = a.protocol()?;
        if start > end {
            return Err(INCONSISTENT);
        }
        let mine: Vec<Entry> = self
            .mapper
            .mappings
            .of_host(*client.ip())
            .await
            .into_iter()
            .filter(|e| e.key.proto == proto && (start..=end).contains(&e.external.port()))
            .collect();
        if mine.is_empty() {
            return Err(NOT_FOUND);
        }
        let mut result = Ok(Vec::new());
        for entry in mine {
            if let Err(f) = self.mapper.delete(entry.key, None).await {
                result = Err(UpnpError::from(f));
            }
        }
        result
    }

    async fn specific(&self, a: &Args<'_>) -> Result<Output, UpnpError> {
        let proto = a.protocol()?;
        let port = a.number("NewExternalPort")?;
        let entry = (self.mapper.mappings.by_external(proto, port).await).ok_or(NO_SUCH_ENTRY)?;
        let mut out = describe(&entry, boot_time());
        // GetSpecificPortMappingEntry does not repeat what was asked.
        out.retain(|(name, _)| {
            !matches!(*name, "NewRemoteHost" | "NewExternalPort" | "NewProtocol")
        });
        Ok(out)
    }

    async fn generic(&self, a: &Args<'_>) -> Result<Output, UpnpError> {
        let index: usize = a.number("NewPortMappingIndex")?;
        let entry = self.mapper.mappings.nth(index).await.ok_or(INDEX_INVALID)?;
        Ok(describe(&entry, boot_time()))
    }

    /// GetListOfPortMappings (IGD:2): the requester's mappings in the range (everyone's
    /// with NewManage), at most NewNumberOfPorts, as the PortMappingList XML document.
    async fn list(&self, client: SocketAddrV4, a: &Args<'_>) -> Result<Output, UpnpError> {
        let (start, end): (u16, u16) = (a.number("NewStartPort")?, a.number("NewEndPort")?);
        let proto = a.protocol()?;
        let manage = matches!(a.get("NewManage")?, "1" | "true" | "yes");
        let most: usize = a.number("NewNumberOfPorts")?;
        if start > end {
            return Err(INCONSISTENT);
        }
        let now = boot_time();
        let entries = self.mapper.mappings.entries().await;
        let listed: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.key.proto == proto && (start..=end).contains(&e.external.port()))
            .filter(|e| manage || e.key.host == *client.ip())
            .take(if most == 0 { usize::MAX } else { most })
            .collect();
        if listed.is_empty() {
            return Err(NOT_FOUND);
        }
        let mut xml = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><p:PortMappingList \
             xmlns:p=\"urn:schemas-upnp-org:gw:WANIPConnection\">",
        );
        for entry in listed {
            xml += "<p:PortMappingEntry>";
            for (name, value) in describe(entry, now) {
                let name = match name {
                    "NewPortMappingDescription" => "NewDescription",
                    "NewLeaseDuration" => "NewLeaseTime",
                    other => other,
                };
                xml += &format!(
                    "<p:{name}>{}</p:{name}>",
                    quick_xml::escape::escape(value.as_str())
                );
            }
            xml += "</p:PortMappingEntry>";
        }
        xml += "</p:PortMappingList>";
        Ok(vec![("NewPortListing", xml)])
    }

    /// Renews at the CGN what was made here and whose lease lasts beyond what the CGN
    /// granted, once half of that has passed (whenever it was made: a mapping restored from
    /// the file after a restart carries its lease).
    pub async fn renew(&self) {
        let now = boot_time();
        for entry in self.mapper.mappings.entries().await {
            let Some(lifetime) = renewal(&entry, now) else {
                continue;
            };
            let Origin::Upnp { any, .. } = &entry.origin else {
                continue;
            };
            let ask = (entry.external.port(), lifetime, !any);
            if let Err(f) = self
                .mapper
                .map(entry.key, ask, entry.origin.clone(), entry.client)
                .await
            {
                debug!("renewing {} at the CGN: {f}", entry.key);
            }
        }
    }
}

/// The lifetime to ask the CGN for, if `entry` is due for a renewal at `now`: made by the
/// IGD, its lease lasting beyond what the CGN granted, and half of that grant gone. At most
/// `UPSTREAM_LIFETIME`, at most what is left of the lease.
fn renewal(entry: &Entry, now: Duration) -> Option<u32> {
    let Origin::Upnp {
        lease: Some(lease), ..
    } = &entry.origin
    else {
        return None;
    };
    let expires = entry.expires?;
    if lease.ends.is_some_and(|end| end <= expires) {
        return None;
    }
    let half = Duration::from_secs(u64::from(entry.lifetime) / 2);
    if expires.saturating_sub(now) > half {
        return None;
    }
    let left = lease.ends.map_or(u64::from(UPSTREAM_LIFETIME), |end| {
        end.saturating_sub(now).as_secs()
    });
    Some(
        u32::try_from(left)
            .unwrap_or(u32::MAX)
            .clamp(1, UPSTREAM_LIFETIME),
    )
}

/// A mapping as GetGenericPortMappingEntry lists it.
fn describe(entry: &Entry, now: Duration) -> Output {
    let description = match &entry.origin {
        Origin::Upnp { description, .. } | Origin::Manual { description } => description.clone(),
        Origin::NatPmp => "NAT-PMP".into(),
        Origin::PcpMap { .. } => "PCP".into(),
    };
    vec![
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", entry.external.port().to_string()),
        ("NewProtocol", entry.key.proto.name().to_uppercase()),
        ("NewInternalPort", entry.key.internal_port.to_string()),
        ("NewInternalClient", entry.key.host.to_string()),
        ("NewEnabled", "1".into()),
        ("NewPortMappingDescription", description),
        ("NewLeaseDuration", lease_left(entry, now).to_string()),
    ]
}

/// An action's input arguments.
struct Args<'a>(&'a [(String, String)]);

impl Args<'_> {
    fn get(&self, name: &str) -> Result<&str, UpnpError> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .ok_or(INVALID_ARGS)
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, UpnpError> {
        self.get(name)?.parse().map_err(|_| INVALID_ARGS)
    }

    fn protocol(&self) -> Result<Transport, UpnpError> {
        match self.get("NewProtocol")?.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Transport::Tcp),
            "UDP" => Ok(Transport::Udp),
            _ => Err(INVALID_ARGS),
        }
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Backing;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A mapping made by the IGD at 0 s with `lease`, which the CGN granted for `granted`
    /// seconds (the table's view of it).
    fn made(lease: Lease, granted: u32) -> Entry {
        let host = Ipv4Addr::new(192, 168, 1, 2);
        Entry {
            key: Key {
                host,
                proto: Transport::Tcp,
                internal_port: 8080,
            },
            external: SocketAddrV4::new(Ipv4Addr::new(203, 0, 114, 1), 9080),
            lifetime: granted,
            expires: Some(secs(granted.into())),
            origin: Origin::Upnp {
                any: false,
                description: String::new(),
                lease: Some(lease),
            },
            backing: Backing::Pcp { nonce: [1; 12] },
            client: SocketAddrV4::new(host, 40000),
            local_port: None,
            first_seen: Duration::ZERO,
            last_seen: Duration::ZERO,
        }
    }

    #[test]
    fn a_lease_longer_than_the_grant_is_renewed_at_half_for_what_is_left() {
        // A day's lease; the CGN grants 120 s at a time.
        let day = made(Lease::of(86_400, Duration::ZERO).unwrap(), 120);
        assert_eq!(renewal(&day, secs(59)), None, "not before half");
        assert_eq!(renewal(&day, secs(60)), Some(UPSTREAM_LIFETIME));
        // Its last hour: only what is left.
        let mut last = day.clone();
        last.expires = Some(secs(86_000));
        assert_eq!(renewal(&last, secs(85_990)), Some(410));
        // Permanent (IGD:1's 0): renewed for as long as the CGN gives at once.
        let permanent = made(Lease::of(0, Duration::ZERO).unwrap(), 120);
        assert_eq!(renewal(&permanent, secs(100)), Some(UPSTREAM_LIFETIME));
        assert_eq!(lease_left(&permanent, secs(100)), 0, "0: permanent");
        assert_eq!(lease_left(&day, secs(100)), 86_300);
    }

    #[test]
    fn a_lease_the_grant_covers_or_none_is_left_alone() {
        // 60 s asked for, 120 s granted: the grant covers it.
        let short = made(Lease::of(60, Duration::ZERO).unwrap(), 120);
        assert_eq!(renewal(&short, secs(100)), None);
        // No lease of the IGD's own (relayed, restored from an old file): the CGN's grant.
        let mut relayed = made(Lease::of(0, Duration::ZERO).unwrap(), 120);
        relayed.origin = Origin::Upnp {
            any: false,
            description: String::new(),
            lease: None,
        };
        assert_eq!(renewal(&relayed, secs(100)), None);
        assert_eq!(lease_left(&relayed, secs(100)), 20);
        let mut pcp = relayed.clone();
        pcp.origin = Origin::PcpMap { nonce: [2; 12] };
        assert_eq!(renewal(&pcp, secs(100)), None);
        // Granted until deleted: nothing to renew.
        let mut forever = made(Lease::of(0, Duration::ZERO).unwrap(), 0);
        forever.expires = None;
        assert_eq!(renewal(&forever, secs(100)), None);
    }
}
