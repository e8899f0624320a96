//! Rewriting the LOCATION header of SSDP replies and notifications so that
//! LAN clients fetch the CGN's device description through portproxy's HTTP
//! relay at the LAN address (clients such as tailscale only talk HTTP to their
//! default gateway).

use std::net::Ipv4Addr;

/// If `datagram` has a `LOCATION: http://<from>:<port>/...` header, returns the
/// datagram with that host replaced by `to` (same port and path) and the port.
/// Everything else is copied byte for byte.
pub fn rewrite(datagram: &[u8], from: Ipv4Addr, to: Ipv4Addr) -> Option<(Vec<u8>, u16)> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut out = String::with_capacity(text.len() + 8);
    let mut port = None;
    for line in text.split_inclusive('\n') {
        if port.is_none() {
            if let Some((rewritten, p)) = rewrite_line(line, from, to) {
                out.push_str(&rewritten);
                port = Some(p);
                continue;
            }
        }
        out.push_str(line);
    }
    port.map(|p| (out.into_bytes(), p))
}

fn rewrite_line(line: &str, from: Ipv4Addr, to: Ipv4Addr) -> Option<(String, u16)> {
    let (name, value) = line.split_once(':')?;
    if !name.trim().eq_ignore_ascii_case("LOCATION") {
        return None;
    }
    let url = value.trim_start();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("HTTP://"))?;
    let authority_end = rest.find(['/', '\r', '\n']).unwrap_or(rest.len());
    let (host, port) = match rest[..authority_end].split_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (&rest[..authority_end], 80),
    };
    if host.parse::<Ipv4Addr>().ok()? != from {
        return None;
    }
    Some((
        format!("{name}: http://{to}:{port}{}", &rest[authority_end..]),
        port,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CGN: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 1);
    const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

    #[test]
    fn rewrites_the_cgn_location() {
        let reply = b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\nLOCATION: http://192.0.0.1:5000/rootDesc.xml\r\nSERVER: x\r\n\r\n";
        let (out, port) = rewrite(reply, CGN, LAN).unwrap();
        assert_eq!(port, 5000);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\nLOCATION: http://192.168.1.1:5000/rootDesc.xml\r\nSERVER: x\r\n\r\n"
        );
    }

    #[test]
    fn default_port_and_case() {
        let reply = b"NOTIFY * HTTP/1.1\r\nLocation:http://192.0.0.1/desc.xml\r\n\r\n";
        let (out, port) = rewrite(reply, CGN, LAN).unwrap();
        assert_eq!(port, 80);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("Location: http://192.168.1.1:80/desc.xml\r\n")
        );
    }

    #[test]
    fn leaves_other_hosts_and_garbage_alone() {
        assert!(
            rewrite(
                b"HTTP/1.1 200 OK\r\nLOCATION: http://10.9.9.9:5000/x\r\n\r\n",
                CGN,
                LAN
            )
            .is_none()
        );
        assert!(
            rewrite(
                b"HTTP/1.1 200 OK\r\nLOCATION: https://192.0.0.1:5000/x\r\n\r\n",
                CGN,
                LAN
            )
            .is_none()
        );
        assert!(
            rewrite(
                b"HTTP/1.1 200 OK\r\nLOCATION: http://192.0.0.1:99999/x\r\n\r\n",
                CGN,
                LAN
            )
            .is_none()
        );
        assert!(rewrite(b"HTTP/1.1 200 OK\r\n\r\n", CGN, LAN).is_none());
        assert!(rewrite(&[0xff, 0x00], CGN, LAN).is_none());
    }
}
