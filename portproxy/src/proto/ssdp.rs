//! SSDP (UPnP Device Architecture §1): HTTP-like messages over UDP. Only the
//! start line and headers matter to the relay.

/// The SSDP multicast group and port.
pub const GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(239, 255, 255, 250);
/// Largest SSDP datagram accepted; real ones are a few hundred bytes.
pub const MAX_LEN: usize = 2048;
/// MX bounds (UDA 1.1: 1 to 5 seconds; larger values are treated as 5).
const MX_MAX: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `M-SEARCH * HTTP/1.1`: a control point looking for devices.
    Search,
    /// `NOTIFY * HTTP/1.1`: a device announcing itself (alive/byebye/update).
    Notify,
    /// `HTTP/1.1 200 OK`: a device answering a search.
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    TooLong,
    NotText,
    NoHeaderEnd,
    UnknownStartLine,
    BadHeader,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Malformed::TooLong => "too long",
            Malformed::NotText => "not UTF-8 text",
            Malformed::NoHeaderEnd => "headers not terminated",
            Malformed::UnknownStartLine => "unknown start line",
            Malformed::BadHeader => "header line without a colon",
        })
    }
}

/// A parsed SSDP message borrowing from the datagram.
#[derive(Debug)]
pub struct Message<'a> {
    pub kind: Kind,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Message<'a> {
    pub fn parse(datagram: &'a [u8]) -> Result<Self, Malformed> {
        if datagram.len() > MAX_LEN {
            return Err(Malformed::TooLong);
        }
        let text = std::str::from_utf8(datagram).map_err(|_| Malformed::NotText)?;
        // Some stacks end lines with a bare LF; accept both.
        let end = text
            .find("\r\n\r\n")
            .or_else(|| text.find("\n\n"))
            .ok_or(Malformed::NoHeaderEnd)?;
        let mut lines = text[..end].lines();
        let start = lines.next().unwrap_or("").trim();
        let kind = if start.eq_ignore_ascii_case("M-SEARCH * HTTP/1.1") {
            Kind::Search
        } else if start.eq_ignore_ascii_case("NOTIFY * HTTP/1.1") {
            Kind::Notify
        } else if start
            .as_bytes()
            .get(..12)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"HTTP/1.1 200"))
        {
            Kind::Response
        } else {
            return Err(Malformed::UnknownStartLine);
        };
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or(Malformed::BadHeader)?;
            headers.push((name.trim(), value.trim()));
        }
        Ok(Message { kind, headers })
    }

    /// The value of the first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// How long replies to this search may take, in seconds, clamped to 1..=5.
    /// A missing or unreadable MX counts as 1 (the unicast-search default).
    pub fn mx(&self) -> u8 {
        self.header("MX")
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(1, |mx| mx.clamp(1, MX_MAX.into()) as u8)
    }

    /// One line for the log: kind plus the search target or notification type.
    pub fn summary(&self) -> String {
        match self.kind {
            Kind::Search => format!(
                "M-SEARCH st={} mx={}",
                self.header("ST").unwrap_or("-"),
                self.mx()
            ),
            Kind::Notify => format!(
                "NOTIFY {} nt={}",
                self.header("NTS").unwrap_or("-"),
                self.header("NT").unwrap_or("-")
            ),
            Kind::Response => format!(
                "200 OK st={} location={}",
                self.header("ST").unwrap_or("-"),
                self.header("LOCATION").unwrap_or("-")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &[u8] = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";

    #[test]
    fn parses_a_search() {
        let m = Message::parse(SEARCH).unwrap();
        assert_eq!(m.kind, Kind::Search);
        assert_eq!(m.mx(), 2);
        assert_eq!(m.header("man"), Some("\"ssdp:discover\""));
        assert_eq!(
            m.summary(),
            "M-SEARCH st=urn:schemas-upnp-org:device:InternetGatewayDevice:1 mx=2"
        );
    }

    #[test]
    fn parses_notify_and_response() {
        let notify = b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNT: upnp:rootdevice\r\nNTS: ssdp:alive\r\nLOCATION: http://192.0.0.1:5000/rootDesc.xml\r\n\r\n";
        assert_eq!(Message::parse(notify).unwrap().kind, Kind::Notify);
        let resp = b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\nLocation: http://192.0.0.1:5000/rootDesc.xml\r\n\r\n";
        let m = Message::parse(resp).unwrap();
        assert_eq!(m.kind, Kind::Response);
        assert_eq!(
            m.header("LOCATION"),
            Some("http://192.0.0.1:5000/rootDesc.xml")
        );
    }

    #[test]
    fn mx_is_clamped() {
        let with_mx = |mx: &str| format!("M-SEARCH * HTTP/1.1\r\nMX: {mx}\r\n\r\n");
        assert_eq!(Message::parse(with_mx("0").as_bytes()).unwrap().mx(), 1);
        assert_eq!(Message::parse(with_mx("120").as_bytes()).unwrap().mx(), 5);
        assert_eq!(
            Message::parse(with_mx("99999999999").as_bytes())
                .unwrap()
                .mx(),
            1
        );
        assert_eq!(Message::parse(with_mx("x").as_bytes()).unwrap().mx(), 1);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            Message::parse(b"GET / HTTP/1.1\r\n\r\n").unwrap_err(),
            Malformed::UnknownStartLine
        );
        assert_eq!(
            Message::parse(b"M-SEARCH * HTTP/1.1\r\nMX: 1\r\n").unwrap_err(),
            Malformed::NoHeaderEnd
        );
        assert_eq!(
            Message::parse(b"M-SEARCH * HTTP/1.1\r\nnocolon\r\n\r\n").unwrap_err(),
            Malformed::BadHeader
        );
        assert_eq!(
            Message::parse(&[0xff, 0xfe, b'\r', b'\n']).unwrap_err(),
            Malformed::NotText
        );
        assert_eq!(
            Message::parse(&vec![b'a'; MAX_LEN + 1]).unwrap_err(),
            Malformed::TooLong
        );
        assert_eq!(Message::parse(b"").unwrap_err(), Malformed::NoHeaderEnd);
    }

    /// Found by the `ssdp` fuzz target: a multibyte character across byte 12 of the start
    /// line made the status-line check slice inside it and panic, which stopped the daemon.
    #[test]
    fn start_line_with_multibyte_character() {
        assert_eq!(
            Message::parse("HTTP/1.1 20é OK\r\n\r\n".as_bytes()).unwrap_err(),
            Malformed::UnknownStartLine
        );
        let fuzzed = [
            0x07, 0x00, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0xc3, 0x88, 0x0b, 0xc3, 0x88, 0x0a, 0x0a,
            0x0a,
        ];
        assert_eq!(
            Message::parse(&fuzzed).unwrap_err(),
            Malformed::UnknownStartLine
        );
        assert_eq!(
            Message::parse("HTTP/1.1 200 OK é\r\n\r\n".as_bytes())
                .unwrap()
                .kind,
            Kind::Response
        );
    }
}
