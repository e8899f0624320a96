//! The IGD's side of SSDP (UPnP Device Architecture §1.2-1.3): the search targets it
//! answers, its answers to M-SEARCH, and its NOTIFY alive and byebye.

use std::net::Ipv4Addr;

use super::description::{self, DESCRIPTION_V1, DESCRIPTION_V2};
use crate::proto::ssdp;

/// How long an announcement is valid (CACHE-CONTROL max-age); re-announced at half of it.
pub const MAX_AGE_SECS: u64 = 1800;
pub const SERVER: &str = concat!("Linux UPnP/1.1 portproxy/", env!("CARGO_PKG_VERSION"));

/// One thing the IGD announces: a notification type (the ST a search names) and its USN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub nt: String,
    pub usn: String,
    pub location: String,
}

/// Everything both IGD versions announce (UDA §1.1.2: three per root device, two per
/// embedded device, one per service type), `uuids` being the version 1 and 2 roots'.
pub fn targets(uuids: [&str; 2], lan: Ipv4Addr, port: u16) -> Vec<Target> {
    let mut all = Vec::new();
    for (version, uuid, path) in [(1, uuids[0], DESCRIPTION_V1), (2, uuids[1], DESCRIPTION_V2)] {
        let location = format!("http://{lan}:{port}{path}");
        let mut add = |nt: String, usn: String| {
            all.push(Target {
                nt,
                usn,
                location: location.clone(),
            })
        };
        let [root, wan, conn] = description::devices(version);
        add(
            "upnp:rootdevice".into(),
            format!("uuid:{uuid}{}::upnp:rootdevice", root.1),
        );
        for (device, suffix) in [&root, &wan, &conn] {
            add(
                format!("uuid:{uuid}{suffix}"),
                format!("uuid:{uuid}{suffix}"),
            );
            add(device.clone(), format!("uuid:{uuid}{suffix}::{device}"));
        }
        let [ip, common] = description::services(version);
        add(common.clone(), format!("uuid:{uuid}{}::{common}", wan.1));
        add(ip.clone(), format!("uuid:{uuid}{}::{ip}", conn.1));
    }
    all
}

/// The targets that answer a search for `st`.
pub fn matching<'t>(targets: &'t [Target], st: &str) -> impl Iterator<Item = &'t Target> {
    let all = st == "ssdp:all";
    targets.iter().filter(move |t| all || t.nt == st)
}

/// The answer of `target` to a search for `st` (for ssdp:all, its own type).
pub fn response(target: &Target, st: &str, boot_id: u32) -> String {
    let st = if st == "ssdp:all" { &target.nt } else { st };
    format!(
        "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age={MAX_AGE_SECS}\r\nEXT:\r\nLOCATION: {}\r\n\
         SERVER: {SERVER}\r\nST: {st}\r\nUSN: {}\r\nBOOTID.UPNP.ORG: {boot_id}\r\n\
         CONFIGID.UPNP.ORG: 1\r\n\r\n",
        target.location, target.usn
    )
}

/// `target`'s NOTIFY: ssdp:alive, or ssdp:byebye when `alive` is false.
pub fn notify(target: &Target, alive: bool, boot_id: u32, port: u16) -> String {
    let host = format!("HOST: {}:{port}\r\n", ssdp::GROUP);
    match alive {
        true => format!(
            "NOTIFY * HTTP/1.1\r\n{host}CACHE-CONTROL: max-age={MAX_AGE_SECS}\r\nLOCATION: {}\r\n\
             NT: {}\r\nNTS: ssdp:alive\r\nSERVER: {SERVER}\r\nUSN: {}\r\n\
             BOOTID.UPNP.ORG: {boot_id}\r\nCONFIGID.UPNP.ORG: 1\r\n\r\n",
            target.location, target.nt, target.usn
        ),
        false => format!(
            "NOTIFY * HTTP/1.1\r\n{host}NT: {}\r\nNTS: ssdp:byebye\r\nUSN: {}\r\n\
             BOOTID.UPNP.ORG: {boot_id}\r\nCONFIGID.UPNP.ORG: 1\r\n\r\n",
            target.nt, target.usn
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Target> {
        targets(["aaaa", "bbbb"], Ipv4Addr::new(192, 168, 1, 1), 5000)
    }

    #[test]
    fn every_usual_search_target_is_answered() {
        let targets = all();
        // 3 + 2 + 2 for the devices, 2 services: per version.
        assert_eq!(targets.len(), 2 * 9);
        for st in [
            "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
            "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
            "urn:schemas-upnp-org:device:WANDevice:1",
            "urn:schemas-upnp-org:device:WANConnectionDevice:2",
            "urn:schemas-upnp-org:service:WANIPConnection:1",
            "urn:schemas-upnp-org:service:WANIPConnection:2",
            "uuid:bbbb-0",
        ] {
            assert_eq!(matching(&targets, st).count(), 1, "{st}");
        }
        assert_eq!(matching(&targets, "upnp:rootdevice").count(), 2);
        assert_eq!(
            matching(
                &targets,
                "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1"
            )
            .count(),
            2
        );
        assert_eq!(matching(&targets, "ssdp:all").count(), targets.len());
        assert_eq!(
            matching(&targets, "urn:schemas-upnp-org:device:MediaServer:1").count(),
            0
        );
    }

    #[test]
    fn answers_and_notifies_parse_as_ssdp() {
        let targets = all();
        let igd2 = matching(
            &targets,
            "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
        )
        .next()
        .unwrap();
        let answer = response(igd2, "ssdp:all", 7);
        let msg = ssdp::Message::parse(answer.as_bytes()).unwrap();
        assert_eq!(msg.kind, ssdp::Kind::Response);
        assert_eq!(
            msg.header("LOCATION"),
            Some("http://192.168.1.1:5000/igd2.xml")
        );
        assert_eq!(msg.header("ST"), Some(igd2.nt.as_str()));
        assert_eq!(
            msg.header("USN"),
            Some("uuid:bbbb-0::urn:schemas-upnp-org:device:InternetGatewayDevice:2")
        );
        for alive in [true, false] {
            let n = notify(igd2, alive, 7, 1900);
            let msg = ssdp::Message::parse(n.as_bytes()).unwrap();
            assert_eq!(msg.kind, ssdp::Kind::Notify);
            assert_eq!(
                msg.header("NTS"),
                Some(if alive { "ssdp:alive" } else { "ssdp:byebye" })
            );
        }
    }
}
