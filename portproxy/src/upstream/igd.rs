//! A UPnP IGD control point, for a CGN that speaks UPnP only: its device description is
//! read once (from the LOCATION its answer to the probe's search named), then each mapping
//! is an AddPortMapping naming the LAN host as NewInternalClient, deleted with
//! DeletePortMapping. HTTP/1.1 with `Connection: close`, from the CPE's WAN address, with a
//! bounded size and time for every exchange; XML through `proto::upnp` (quick-xml).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use log::debug;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{Ask, Failure};
use crate::proto::{Transport, upnp};

/// Each HTTP exchange, connect to last byte.
const EXCHANGE: Duration = Duration::from_secs(2);
const DESCRIPTION: &str = "portproxy";

/// The IGD's WANIPConnection (or WANPPPConnection) service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Igd {
    pub server: SocketAddrV4,
    pub control_path: String,
    /// The service type, e.g. `urn:schemas-upnp-org:service:WANIPConnection:2`.
    pub service: String,
}

impl Igd {
    /// Reads the description at `location` and finds the connection service.
    pub async fn discover(location: &str, wan: Ipv4Addr) -> Result<Igd> {
        let (server, path) = upnp::parse_url(location)
            .with_context(|| format!("the IGD's LOCATION {location:?} is no http://ADDR URL"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\nUser-Agent: portproxy\r\n\r\n"
        );
        let (status, body) = exchange(server, wan, request.as_bytes()).await?;
        if status != 200 {
            bail!("{location}: HTTP {status}");
        }
        let found = upnp::connection_service(&body, server)
            .map_err(|e| anyhow::anyhow!("{location}: {e:?}"))?
            .with_context(|| format!("{location} names no WANIPConnection service"))?;
        Ok(Igd {
            server: found.server,
            control_path: found.control_path,
            service: found.service.to_string(),
        })
    }

    /// AddPortMapping for `ask`'s host and internal port on its suggested port (0: the
    /// internal port) for its lifetime. Unless it wants that port or nothing, another port
    /// will do when that one is taken: AddAnyPortMapping on an IGD:2, a few other ports on
    /// an IGD:1. The external port mapped.
    pub async fn add(&self, wan: Ipv4Addr, ask: &Ask) -> Result<u16, Failure> {
        let (host, proto, internal) = (ask.host, ask.proto, ask.internal_port);
        let (external, lease) = (ask.suggested_port, ask.lifetime);
        let any = !ask.prefer_failure;
        let external = if external == 0 { internal } else { external };
        let mut args = vec![
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external.to_string()),
            ("NewProtocol", proto.name().to_uppercase()),
            ("NewInternalPort", internal.to_string()),
            ("NewInternalClient", host.to_string()),
            ("NewEnabled", "1".to_string()),
            ("NewPortMappingDescription", DESCRIPTION.to_string()),
            ("NewLeaseDuration", lease.to_string()),
        ];
        if any && self.service.ends_with(":2") {
            let args = self.call(wan, "AddAnyPortMapping", &args).await?;
            return upnp::argument(&args, "NewReservedPort")
                .and_then(|p| p.parse().ok())
                .ok_or(Failure::Unexpected);
        }
        // IGD:1 has no AddAnyPortMapping: on a conflict (718) a client that takes any port
        // gets the first of a few others that is free, as AddAnyPortMapping would choose.
        let tries = if any { CONFLICT_TRIES } else { 1 };
        let (mut port, mut tried) = (external, 1);
        loop {
            match self.call(wan, "AddPortMapping", &args).await {
                Err(Failure::CannotProvideExternal) if tried < tries => {
                    port = other_port(host, internal, tried);
                    args[1].1 = port.to_string();
                    tried += 1;
                }
                result => return result.map(|_| port),
            }
        }
    }

    /// DeletePortMapping of `external`; one the IGD does not have is gone already.
    pub async fn delete(
        &self,
        wan: Ipv4Addr,
        proto: Transport,
        external: u16,
    ) -> Result<(), Failure> {
        let args = vec![
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external.to_string()),
            ("NewProtocol", proto.name().to_uppercase()),
        ];
        match self.call(wan, "DeletePortMapping", &args).await {
            Err(Failure::Unexpected) | Ok(_) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// GetExternalIPAddress.
    pub async fn external_address(&self, wan: Ipv4Addr) -> Result<Ipv4Addr, Failure> {
        let args = self.call(wan, "GetExternalIPAddress", &[]).await?;
        upnp::argument(&args, "NewExternalIPAddress")
            .and_then(|a| a.parse().ok())
            .ok_or(Failure::Unexpected)
    }

    /// One SOAP action; its response's arguments, or the UPnP error as a `Failure`.
    async fn call(
        &self,
        wan: Ipv4Addr,
        action: &str,
        args: &[(&str, String)],
    ) -> Result<Vec<(String, String)>, Failure> {
        let body = upnp::soap_request(&self.service, action, args);
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
             SOAPAction: \"{}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.control_path,
            self.server,
            self.service,
            body.len()
        );
        let (status, body) = exchange(self.server, wan, request.as_bytes())
            .await
            .map_err(|e| {
                debug!("UPnP {action} at {}: {e:#}", self.server);
                Failure::NoAnswer
            })?;
        if status == 200 {
            return upnp::arguments(&body, &format!("{action}Response"))
                .map_err(|_| Failure::Unexpected);
        }
        let code = upnp::fault_code(&body);
        debug!(
            "UPnP {action} at {}: HTTP {status}, error {code:?}",
            self.server
        );
        Err(match code {
            Some(606) => Failure::NotAuthorized,
            Some(718) => Failure::CannotProvideExternal,
            Some(728) => Failure::NoResources,
            Some(501) => Failure::NetworkFailure,
            _ => Failure::Unexpected,
        })
    }
}

/// AddPortMapping calls for one mapping on an IGD:1 that says the port is taken.
const CONFLICT_TRIES: u32 = 4;

/// The `n`th port tried after a conflict: spread over 1024-65535 (neighbours of a taken port
/// are often taken too), the same for the same host and port, so a retried request asks for
/// the same ports again.
fn other_port(host: Ipv4Addr, internal: u16, n: u32) -> u16 {
    let seed = u32::from(host) ^ (u32::from(internal) << 8) ^ n.wrapping_mul(0x9e37_79b9);
    let mixed = seed
        .wrapping_mul(0x85eb_ca6b)
        .rotate_left(13)
        .wrapping_mul(0xc2b2_ae35);
    1024 + (mixed % (65536 - 1024)) as u16
}

/// Sends `request` to `server` from `wan` and reads the response to its end (the server
/// closes): the status and the body, within `EXCHANGE` and `upnp::MAX_HEAD + MAX_BODY`.
async fn exchange(server: SocketAddrV4, wan: Ipv4Addr, request: &[u8]) -> Result<(u16, Vec<u8>)> {
    let work = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddrV4::new(wan, 0).into())?;
        let mut stream = socket.connect(server.into()).await?;
        stream.write_all(request).await?;
        let mut response = Vec::new();
        let limit = (upnp::MAX_HEAD + upnp::MAX_BODY) as u64;
        (&mut stream)
            .take(limit + 1)
            .read_to_end(&mut response)
            .await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(EXCHANGE, work)
        .await
        .with_context(|| format!("{server}: no complete answer within {EXCHANGE:?}"))??;
    let head = upnp::response_head(&response)
        .ok()
        .flatten()
        .with_context(|| format!("{server}: not an HTTP response"))?;
    let status = head.status.context("no status")?;
    let body = response[head.len..].to_vec();
    if body.len() > upnp::MAX_BODY {
        bail!(
            "{server}: the answer is longer than {} bytes",
            upnp::MAX_BODY
        );
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_after_a_conflict_are_spread_and_repeatable() {
        let host = Ipv4Addr::new(192, 168, 1, 2);
        let ports: Vec<u16> = (1..CONFLICT_TRIES)
            .map(|n| other_port(host, 8080, n))
            .collect();
        assert!(ports.iter().all(|&p| p >= 1024), "{ports:?}");
        assert_eq!(
            ports,
            (1..CONFLICT_TRIES)
                .map(|n| other_port(host, 8080, n))
                .collect::<Vec<_>>()
        );
        let mut distinct = ports.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(
            ports.windows(2).all(|w| w[0].abs_diff(w[1]) > 1),
            "{ports:?}"
        );
    }

    #[test]
    fn faults_and_requests() {
        let fault = b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        assert_eq!(upnp::fault_code(fault), Some(718));
        let body = upnp::soap_request(
            "urn:schemas-upnp-org:service:WANIPConnection:1",
            "AddPortMapping",
            &[("NewPortMappingDescription", "a<b".into())],
        );
        assert!(body.contains("<NewPortMappingDescription>a&lt;b</NewPortMappingDescription>"));
        assert!(body.contains(
            "<u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">"
        ));
    }
}
