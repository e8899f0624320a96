//! The CGN's device description as portproxy's upstream IGD client reads it
//! (`upnp::connection_service`): hostile input from the WAN side. Never a panic, and what is
//! taken cannot redirect or rewrite the client's calls: one of the three connection service
//! types exactly (it goes into SOAPAction), the description's own address, a control path
//! that starts with `/` and has no space or control character (it goes into the request
//! line). The same for a URL alone (`upnp::parse_url`, also the LOCATION's reader).
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use libfuzzer_sys::fuzz_target;
use portproxy_fuzz::proto::upnp;

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 0, 1), 5000);

fn check_path(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    assert!(
        !path.bytes().any(|b| b == b' ' || b.is_ascii_control()),
        "{path:?}"
    );
}

/// A description listing one service whose type and control URL are `kind` and `control`
/// as they are (markup, entities and all), so that most inputs reach the service's reading.
fn around(kind: &[u8], control: &[u8]) -> Vec<u8> {
    let mut xml = b"<?xml version=\"1.0\"?><root xmlns=\"urn:schemas-upnp-org:device-1-0\">\
        <device><serviceList><service><serviceType>"
        .to_vec();
    xml.extend_from_slice(kind);
    xml.extend_from_slice(b"</serviceType><controlURL>");
    xml.extend_from_slice(control);
    xml.extend_from_slice(b"</controlURL></service></serviceList></device></root>");
    xml
}

fuzz_target!(|data: &[u8]| {
    // The first byte: the input as the whole description, or as a service's type and
    // control URL (split at the first NUL, the type one of the three when there is none).
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let description = match pick & 1 {
        0 => rest.to_vec(),
        _ => match rest.iter().position(|&b| b == 0) {
            Some(nul) => around(&rest[..nul], &rest[nul + 1..]),
            None => {
                let kind = upnp::CONNECTION_SERVICES[usize::from(pick >> 1) % 3];
                around(kind.as_bytes(), rest)
            }
        },
    };
    if let Ok(Some(found)) = upnp::connection_service(&description, SERVER) {
        assert!(upnp::CONNECTION_SERVICES.contains(&found.service));
        assert_eq!(found.server.ip(), SERVER.ip(), "{found:?}");
        assert_ne!(found.server.port(), 0, "{found:?}");
        check_path(&found.control_path);
    }
    if let Ok(url) = std::str::from_utf8(rest)
        && let Some((addr, path)) = upnp::parse_url(url)
    {
        assert_ne!(addr.port(), 0, "{url:?}");
        check_path(&path);
    }
});
