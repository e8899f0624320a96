//! UPnP IGD port-mapping control over HTTP (SOAP), as far as the mapping table
//! needs it: the HTTP framing of requests and responses (`httparse`) and the
//! actions AddPortMapping, AddAnyPortMapping and DeletePortMapping with their
//! arguments and results (`quick-xml`); a device description's connection service, as a
//! control point reads it. Pure functions over bytes, fuzzed in `portproxy/fuzz`.

use std::net::{Ipv4Addr, SocketAddrV4};

use quick_xml::events::Event;

use super::Transport;

/// Request or response heads longer than this are not parsed (the relay then
/// splices the connection without learning from it).
pub const MAX_HEAD: usize = 8 * 1024;
/// SOAP bodies longer than this likewise.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

/// Why a message was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    /// The HTTP head is malformed or too long.
    BadHead,
    /// The body has no Content-Length (chunked, or read to the end).
    NoLength,
    /// The body is longer than [`MAX_BODY`].
    TooLong,
    /// Not the SOAP a mapping action has (bad XML, missing or bad arguments).
    BadSoap,
}

/// A complete HTTP head: its length and what the relay needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    /// The status code (responses only).
    pub status: Option<u16>,
    /// The SOAPAction header without quotes, e.g.
    /// `urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping`.
    pub soap_action: Option<String>,
    pub content_length: Option<usize>,
    /// `Connection: close` (or HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// Parses a request head; `Ok(None)` while it is incomplete.
pub fn request_head(buf: &[u8]) -> Result<Option<Head>, Unparsed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(head(len, None, req.version, req.headers)?)),
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok(None),
        _ => Err(Unparsed::BadHead),
    }
}

/// Parses a response head; `Ok(None)` while it is incomplete.
pub fn response_head(buf: &[u8]) -> Result<Option<Head>, Unparsed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            Ok(Some(head(len, resp.code, resp.version, resp.headers)?))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok(None),
        _ => Err(Unparsed::BadHead),
    }
}

fn head(
    len: usize,
    status: Option<u16>,
    version: Option<u8>,
    headers: &[httparse::Header<'_>],
) -> Result<Head, Unparsed> {
    if len > MAX_HEAD {
        return Err(Unparsed::BadHead);
    }
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let content_length = match value("content-length") {
        Some(v) => Some(v.parse::<usize>().map_err(|_| Unparsed::BadHead)?),
        None => None,
    };
    let connection = value("connection").unwrap_or_default().to_ascii_lowercase();
    let close =
        connection.contains("close") || (version == Some(0) && !connection.contains("keep-alive"));
    Ok(Head {
        len,
        status,
        soap_action: value("soapaction").map(|v| v.trim_matches('"').to_string()),
        content_length,
        close,
    })
}

impl Head {
    /// The body's length as the head declares it, within [`MAX_BODY`].
    pub fn body_len(&self) -> Result<usize, Unparsed> {
        match self.content_length {
            Some(n) if n <= MAX_BODY => Ok(n),
            Some(_) => Err(Unparsed::TooLong),
            None => Err(Unparsed::NoLength),
        }
    }
}

/// The port-mapping actions the table learns from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// AddPortMapping or (IGDv2) AddAnyPortMapping: `any` for the latter, where
    /// the IGD may grant another external port (its response says which).
    Add {
        any: bool,
        external_port: u16,
        transport: Transport,
        internal_port: u16,
        internal_client: Ipv4Addr,
        description: String,
        /// Seconds; 0 is a permanent lease (IGDv1).
        lease: u32,
    },
    Delete {
        external_port: u16,
        transport: Transport,
    },
}

/// Whether a SOAPAction header names an action the table learns from.
pub fn is_mapping_action(soap_action: &str) -> bool {
    matches!(
        action_name(soap_action),
        "AddPortMapping" | "AddAnyPortMapping" | "DeletePortMapping"
    )
}

/// The action's name in a SOAPAction header value (`service#Name`).
pub fn action_name(soap_action: &str) -> &str {
    soap_action.rsplit('#').next().unwrap_or_default()
}

/// Parses the SOAP body of a mapping action named in the SOAPAction header;
/// `Ok(None)` for any other action (not the table's business).
pub fn request(soap_action: &str, body: &[u8]) -> Result<Option<Action>, Unparsed> {
    let name = action_name(soap_action);
    let any = match name {
        "AddPortMapping" => false,
        "AddAnyPortMapping" => true,
        "DeletePortMapping" => {
            let args = arguments(body, name)?;
            return Ok(Some(Action::Delete {
                external_port: number(&args, "NewExternalPort")?,
                transport: transport(&args)?,
            }));
        }
        _ => return Ok(None),
    };
    let args = arguments(body, name)?;
    Ok(Some(Action::Add {
        any,
        external_port: number(&args, "NewExternalPort")?,
        transport: transport(&args)?,
        internal_port: number(&args, "NewInternalPort")?,
        internal_client: arg(&args, "NewInternalClient")?
            .parse()
            .map_err(|_| Unparsed::BadSoap)?,
        description: arg(&args, "NewPortMappingDescription")
            .unwrap_or_default()
            .to_string(),
        lease: number(&args, "NewLeaseDuration")?,
    }))
}

/// What the IGD answered to `action`: `Ok(Some(external port))` on success
/// (AddAnyPortMapping's NewReservedPort, else the port asked for), `Ok(None)`
/// for a refusal (a SOAP fault, any status but 200).
pub fn response(action: &Action, status: u16, body: &[u8]) -> Result<Option<u16>, Unparsed> {
    if status != 200 {
        return Ok(None);
    }
    match action {
        Action::Add { any: true, .. } => {
            let args = arguments(body, "AddAnyPortMappingResponse")?;
            Ok(Some(number(&args, "NewReservedPort")?))
        }
        Action::Add { external_port, .. } => {
            arguments(body, "AddPortMappingResponse")?;
            Ok(Some(*external_port))
        }
        Action::Delete { external_port, .. } => {
            arguments(body, "DeletePortMappingResponse")?;
            Ok(Some(*external_port))
        }
    }
}

/// The child elements of the first element `name` (any namespace prefix) anywhere in a
/// SOAP message, as (local name, text) pairs: lenient, for what an IGD answers.
pub fn arguments(body: &[u8], name: &str) -> Result<Vec<(String, String)>, Unparsed> {
    elements(body, name, 1, None)?
        .pop()
        .ok_or(Unparsed::BadSoap)
}

/// The arguments of a SOAP request calling action `name`, as (local name, text) pairs:
/// the children of the element `name` that is a child of the `Body` of the `Envelope` at
/// the root (any namespace prefixes). What the IGD serves: an action element elsewhere (in
/// a `Header`, under another root) is not a call, nor is a message with a DOCTYPE or one
/// that is not well-formed to its end.
pub fn action_arguments(body: &[u8], name: &str) -> Result<Vec<(String, String)>, Unparsed> {
    elements(body, name, 1, Some(&["Envelope", "Body"]))?
        .pop()
        .ok_or(Unparsed::BadSoap)
}

/// The child elements of the first `max` elements `name` (any namespace prefix), each as
/// (local name, text) pairs. An element `name` inside another is not looked for. With
/// `within`, only an element `name` whose ancestors are exactly those (local names, the
/// root first) counts.
fn elements(
    body: &[u8],
    name: &str,
    max: usize,
    within: Option<&[&str]>,
) -> Result<Vec<Vec<(String, String)>>, Unparsed> {
    let text = std::str::from_utf8(body).map_err(|_| Unparsed::BadSoap)?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth_in_action: Option<usize> = None;
    let mut depth = 0usize;
    // How many of the open elements, from the root, are `within`'s.
    let mut on_path = 0usize;
    // Whether an element `name` with `ancestors` open elements above it counts.
    let placed = |ancestors: usize, on_path: usize| {
        within.is_none_or(|w| ancestors == w.len() && on_path == w.len())
    };
    let mut current: Option<(String, String)> = None;
    let mut args = Vec::new();
    let mut found = Vec::new();
    loop {
        match reader.read_event().map_err(|_| Unparsed::BadSoap)? {
            Event::Start(e) => {
                depth = depth.checked_add(1).ok_or(Unparsed::BadSoap)?;
                let local = e.local_name().as_ref().to_string();
                let ancestors_on_path = on_path;
                if let Some(w) = within
                    && on_path == depth - 1
                    && w.get(on_path).is_some_and(|&n| n == local)
                {
                    on_path = depth;
                }
                match depth_in_action {
                    None if local == name
                        && found.len() < max
                        && placed(depth - 1, ancestors_on_path) =>
                    {
                        depth_in_action = Some(depth)
                    }
                    Some(d) if depth == d + 1 => current = Some((local, String::new())),
                    _ => {}
                }
            }
            Event::Empty(e) => {
                let local = e.local_name().as_ref().to_string();
                match depth_in_action {
                    None if local == name && found.len() < max && placed(depth, on_path) => {
                        found.push(Vec::new())
                    }
                    Some(d) if depth == d => args.push((local, String::new())),
                    _ => {}
                }
            }
            Event::Text(t) => {
                if let Some((_, value)) = &mut current {
                    value.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some((_, value)) = &mut current {
                    value.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                if let Some((_, value)) = &mut current {
                    let entity = format!("&{};", r.xml10_content());
                    let resolved =
                        quick_xml::escape::unescape(&entity).map_err(|_| Unparsed::BadSoap)?;
                    value.push_str(&resolved);
                }
            }
            Event::End(_) => {
                match depth_in_action {
                    Some(d) if depth == d + 1 => {
                        if let Some(arg) = current.take() {
                            args.push(arg);
                        }
                    }
                    Some(d) if depth == d => {
                        found.push(std::mem::take(&mut args));
                        depth_in_action = None;
                    }
                    _ => {}
                }
                if on_path == depth {
                    on_path = on_path.saturating_sub(1);
                }
                depth = depth.checked_sub(1).ok_or(Unparsed::BadSoap)?;
            }
            // SOAP 1.1 §3: a message MUST NOT contain a document type declaration. A call
            // with one is refused whole, whatever it declares (entities, external ones).
            Event::DocType(_) if within.is_some() => return Err(Unparsed::BadSoap),
            // A call is read to its end: it must be well-formed all through.
            Event::Eof if within.is_some() && depth != 0 => return Err(Unparsed::BadSoap),
            Event::Eof if !found.is_empty() => return Ok(found),
            Event::Eof => return Err(Unparsed::BadSoap),
            _ => {}
        }
        if found.len() >= max && within.is_none() {
            return Ok(found);
        }
    }
}

/// The children of every element `service` in a device description, as (local name, text)
/// pairs: `serviceType`, `controlURL`, ... (at most 64 services).
pub fn services(description: &[u8]) -> Result<Vec<Vec<(String, String)>>, Unparsed> {
    elements(description, "service", 64, None)
}

/// The connection services a control point of an IGD may use, best first.
pub const CONNECTION_SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// Where an IGD's connection service is controlled, as its device description says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionService {
    /// One of `CONNECTION_SERVICES`, exactly: it goes into the SOAPAction header.
    pub service: &'static str,
    pub server: SocketAddrV4,
    /// The control URL's path (and query), as a request line takes it (`http::uri`'s
    /// characters: no spaces, no line ends).
    pub control_path: String,
}

/// The best connection service that the device description `body`, served by `server`,
/// lists: its control URL relative to `server`, or absolute on the same address (a
/// description from the WAN side cannot send the control point to another host). `None`
/// when it lists none that qualifies.
pub fn connection_service(
    body: &[u8],
    server: SocketAddrV4,
) -> Result<Option<ConnectionService>, Unparsed> {
    let found = services(body)?
        .iter()
        .filter_map(|s| {
            let kind = argument(s, "serviceType")?;
            let rank = CONNECTION_SERVICES.iter().position(|k| *k == kind)?;
            let control = argument(s, "controlURL")?;
            let (server, control_path) = match parse_url(control) {
                Some((at, path)) if at.ip() == server.ip() => (at, path),
                Some(_) => return None,
                None => {
                    let path = format!("/{}", control.trim_start_matches('/'));
                    let path: http::uri::PathAndQuery = path.parse().ok()?;
                    (server, path.as_str().to_string())
                }
            };
            let service = CONNECTION_SERVICES[rank];
            Some((
                rank,
                ConnectionService {
                    service,
                    server,
                    control_path,
                },
            ))
        })
        .min_by_key(|(rank, _)| *rank);
    Ok(found.map(|(_, service)| service))
}

/// `http://a.b.c.d[:port][/path]` as (address, path and query); `None` for anything else:
/// a name, another scheme, user info (`http://a.b.c.d@other/` names another host than it
/// seems to), port 0, characters a URI may not have.
pub fn parse_url(url: &str) -> Option<(SocketAddrV4, String)> {
    let uri: http::Uri = url.trim().parse().ok()?;
    let authority = uri.authority()?;
    if uri.scheme_str() != Some("http") || authority.as_str().contains('@') {
        return None;
    }
    let host: Ipv4Addr = authority.host().parse().ok()?;
    let port = authority.port_u16().unwrap_or(80);
    if port == 0 {
        return None;
    }
    // `http://a.b.c.d?x` has the query without a path: a request target needs the `/`.
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    let path = match path.starts_with('/') {
        true => path.to_string(),
        false => format!("/{path}"),
    };
    Some((SocketAddrV4::new(host, port), path))
}

/// A SOAP request body calling `action` of `service` with `args` (values XML-escaped).
pub fn soap_request(service: &str, action: &str, args: &[(&str, String)]) -> String {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{service}\">"
    );
    for (name, value) in args {
        body += &format!(
            "<{name}>{}</{name}>",
            quick_xml::escape::escape(value.as_str())
        );
    }
    body += &format!("</u:{action}></s:Body></s:Envelope>\r\n");
    body
}

/// A SOAP response body to `action` of `service`, with `args`: values XML-escaped, but an
/// XML document (GetListOfPortMappings' listing) in CDATA, as miniupnpd sends it and
/// miniupnpc reads it (its parser does not unescape).
pub fn soap_response(service: &str, action: &str, args: &[(&str, String)]) -> String {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action}Response xmlns:u=\"{service}\">"
    );
    for (name, value) in args {
        if value.starts_with("<?xml") && !value.contains("]]>") {
            body += &format!("<{name}><![CDATA[{value}]]></{name}>");
        } else {
            body += &format!(
                "<{name}>{}</{name}>",
                quick_xml::escape::escape(value.as_str())
            );
        }
    }
    body += &format!("</u:{action}Response></s:Body></s:Envelope>\r\n");
    body
}

/// A SOAP fault body carrying UPnP error `code` (UPnP Device Architecture §3.2.2).
pub fn soap_fault(code: u16, description: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><s:Fault>\
         <faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>\
         <UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode>\
         <errorDescription>{description}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>\r\n"
    )
}

/// The UPnP error code of a SOAP fault (`<UPnPError><errorCode>`).
pub fn fault_code(body: &[u8]) -> Option<u16> {
    number(&arguments(body, "UPnPError").ok()?, "errorCode").ok()
}

/// An argument of an action's response.
pub fn argument<'a>(args: &'a [(String, String)], name: &str) -> Option<&'a str> {
    arg(args, name).ok()
}

fn arg<'a>(args: &'a [(String, String)], name: &str) -> Result<&'a str, Unparsed> {
    args.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.trim())
        .ok_or(Unparsed::BadSoap)
}

fn number<T: std::str::FromStr>(args: &[(String, String)], name: &str) -> Result<T, Unparsed> {
    arg(args, name)?.parse().map_err(|_| Unparsed::BadSoap)
}

fn transport(args: &[(String, String)]) -> Result<Transport, Unparsed> {
    match arg(args, "NewProtocol")?.to_ascii_uppercase().as_str() {
        "TCP" => Ok(Transport::Tcp),
        "UDP" => Ok(Transport::Udp),
        _ => Err(Unparsed::BadSoap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What libminiupnpc 2.2 sends for `upnpc -a 192.168.1.2 8484 9484 tcp`.
    const ADD: &str = "POST /ctl/IPConn HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nUser-Agent: Debian/12 UPnP/1.1 MiniUPnPc/2.2.4\r\nContent-Length: 600\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping\"\r\nConnection: Close\r\nCache-Control: no-cache\r\nPragma: no-cache\r\n\r\n";

    fn add_body(description: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewRemoteHost></NewRemoteHost><NewExternalPort>9484</NewExternalPort><NewProtocol>TCP</NewProtocol><NewInternalPort>8484</NewInternalPort><NewInternalClient>192.168.1.2</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>{description}</NewPortMappingDescription><NewLeaseDuration>0</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>\r\n"
        )
    }

    #[test]
    fn add_port_mapping_request() {
        let head = request_head(ADD.as_bytes()).unwrap().unwrap();
        assert_eq!(head.len, ADD.len());
        assert_eq!(head.content_length, Some(600));
        assert!(head.close);
        let soap_action = head.soap_action.unwrap();
        assert_eq!(action_name(&soap_action), "AddPortMapping");
        let action = request(&soap_action, add_body("game &amp; chat").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            action,
            Action::Add {
                any: false,
                external_port: 9484,
                transport: Transport::Tcp,
                internal_port: 8484,
                internal_client: Ipv4Addr::new(192, 168, 1, 2),
                description: "game & chat".into(),
                lease: 0,
            }
        );
        let ok = "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><u:AddPortMappingResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"/></s:Body></s:Envelope>\r\n";
        assert_eq!(response(&action, 200, ok.as_bytes()), Ok(Some(9484)));
        let fault = "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><detail><UPnPError><errorCode>718</errorCode></UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        assert_eq!(response(&action, 500, fault.as_bytes()), Ok(None));
        // A 200 without the action's response element is not a grant.
        assert_eq!(
            response(&action, 200, fault.as_bytes()),
            Err(Unparsed::BadSoap)
        );
    }

    #[test]
    fn add_any_and_delete() {
        let any = "<s:Envelope xmlns:s=\"x\"><s:Body><u:AddAnyPortMapping xmlns:u=\"y\"><NewRemoteHost/><NewExternalPort>9000</NewExternalPort><NewProtocol>udp</NewProtocol><NewInternalPort>9000</NewInternalPort><NewInternalClient>192.168.1.3</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>x</NewPortMappingDescription><NewLeaseDuration>3600</NewLeaseDuration></u:AddAnyPortMapping></s:Body></s:Envelope>";
        let action = request("urn:x#AddAnyPortMapping", any.as_bytes())
            .unwrap()
            .unwrap();
        assert!(matches!(
            action,
            Action::Add {
                any: true,
                transport: Transport::Udp,
                lease: 3600,
                ..
            }
        ));
        let granted = "<s:Envelope xmlns:s=\"x\"><s:Body><u:AddAnyPortMappingResponse xmlns:u=\"y\"><NewReservedPort>9001</NewReservedPort></u:AddAnyPortMappingResponse></s:Body></s:Envelope>";
        assert_eq!(response(&action, 200, granted.as_bytes()), Ok(Some(9001)));

        let delete = "<s:Envelope xmlns:s=\"x\"><s:Body><u:DeletePortMapping xmlns:u=\"y\"><NewRemoteHost></NewRemoteHost><NewExternalPort>9484</NewExternalPort><NewProtocol>TCP</NewProtocol></u:DeletePortMapping></s:Body></s:Envelope>";
        let action = request("urn:x#DeletePortMapping", delete.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            action,
            Action::Delete {
                external_port: 9484,
                transport: Transport::Tcp
            }
        );
    }

    #[test]
    fn a_call_is_the_action_in_the_envelope_body() {
        let call = add_body("x");
        let args = action_arguments(call.as_bytes(), "AddPortMapping").unwrap();
        assert_eq!(argument(&args, "NewInternalClient"), Some("192.168.1.2"));
        // Any prefixes, or none.
        let plain = "<Envelope><Body><AddPortMapping><NewProtocol>TCP</NewProtocol>\
                     </AddPortMapping></Body></Envelope>";
        assert!(action_arguments(plain.as_bytes(), "AddPortMapping").is_ok());
        let empty = "<a:Envelope xmlns:a=\"x\"><a:Body><u:GetStatusInfo xmlns:u=\"y\"/>\
                     </a:Body></a:Envelope>";
        assert_eq!(
            action_arguments(empty.as_bytes(), "GetStatusInfo"),
            Ok(Vec::new())
        );
        let args = "<NewProtocol>TCP</NewProtocol>";
        for wrong in [
            // No envelope, another root, the action in a Header or deeper in the Body.
            format!("<AddPortMapping>{args}</AddPortMapping>"),
            format!("<Letter><Body><AddPortMapping>{args}</AddPortMapping></Body></Letter>"),
            format!(
                "<Envelope><Header><AddPortMapping>{args}</AddPortMapping></Header>\
                 <Body/></Envelope>"
            ),
            format!(
                "<Envelope><Body><x><AddPortMapping>{args}</AddPortMapping></x></Body></Envelope>"
            ),
            format!("<Envelope><AddPortMapping>{args}</AddPortMapping></Envelope>"),
            format!("<Envelope><Body></Body><AddPortMapping>{args}</AddPortMapping></Envelope>"),
            // Broken after the action, or not closed.
            format!("<Envelope><Body><AddPortMapping>{args}</AddPortMapping></Bodx></Envelope>"),
            format!("<Envelope><Body><AddPortMapping>{args}</AddPortMapping></Body>"),
            format!("<Envelope><Body><AddPortMapping>{args}</AddPortMapping></Body></Envelope><"),
            "<Envelope><Body><AddPortMapping/></Body><Body/></Envelope>"
                .replace("AddPortMapping/", "Other/"),
        ] {
            assert_eq!(
                action_arguments(wrong.as_bytes(), "AddPortMapping"),
                Err(Unparsed::BadSoap),
                "{wrong}"
            );
            // What an IGD answers is read leniently.
            if wrong.contains("<AddPortMapping>") {
                assert!(
                    arguments(wrong.as_bytes(), "AddPortMapping").is_ok(),
                    "{wrong}"
                );
            }
        }
    }

    #[test]
    fn entities_are_neither_declared_nor_read() {
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">\
                    <!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">]>\
                    <Envelope><Body><AddPortMapping><NewPortMappingDescription>&lol2;\
                    </NewPortMappingDescription></AddPortMapping></Body></Envelope>";
        let external = "<?xml version=\"1.0\"?><!DOCTYPE e [<!ENTITY xxe SYSTEM \
                        \"file:///etc/passwd\">]><Envelope><Body><AddPortMapping>\
                        <NewPortMappingDescription>&xxe;</NewPortMappingDescription>\
                        </AddPortMapping></Body></Envelope>";
        // Declared but not referenced: still refused (SOAP has no DTD).
        let declared = external.replace("&xxe;", "x");
        for doc in [bomb, external, &declared] {
            assert_eq!(
                action_arguments(doc.as_bytes(), "AddPortMapping"),
                Err(Unparsed::BadSoap)
            );
        }
        // The predefined entities and character references are what XML has.
        let ok = "<Envelope><Body><A><D>&lt;&#65;&#x42;&amp;</D></A></Body></Envelope>";
        let args = action_arguments(ok.as_bytes(), "A").unwrap();
        assert_eq!(argument(&args, "D"), Some("<AB&"));
    }

    #[test]
    fn other_actions_and_bad_input() {
        assert_eq!(request("urn:x#GetExternalIPAddress", b"<not xml"), Ok(None));
        assert_eq!(
            request("urn:x#AddPortMapping", b"<a><b>"),
            Err(Unparsed::BadSoap)
        );
        assert_eq!(
            request("urn:x#AddPortMapping", &[0xff, 0xfe]),
            Err(Unparsed::BadSoap)
        );
        let port_too_big = add_body("x").replace("9484", "70000");
        assert_eq!(
            request("urn:x#AddPortMapping", port_too_big.as_bytes()),
            Err(Unparsed::BadSoap)
        );
        assert_eq!(request_head(b"POST / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(
            request_head(b"\x00\x01 garbage\r\n\r\n"),
            Err(Unparsed::BadHead)
        );
        assert_eq!(
            request_head(&vec![b'a'; MAX_HEAD + 1]),
            Err(Unparsed::BadHead)
        );
        let head = response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.status, head.body_len()),
            (Some(200), Err(Unparsed::TooLong))
        );
        let chunked = response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(chunked.body_len(), Err(Unparsed::NoLength));
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://192.0.0.1:5000/rootDesc.xml"),
            Some(("192.0.0.1:5000".parse().unwrap(), "/rootDesc.xml".into()))
        );
        assert_eq!(
            parse_url("http://192.0.0.1"),
            Some(("192.0.0.1:80".parse().unwrap(), "/".into()))
        );
        assert_eq!(
            parse_url("http://192.0.0.1?x=1"),
            Some(("192.0.0.1:80".parse().unwrap(), "/?x=1".into()))
        );
        for not in [
            "https://192.0.0.1/x",
            "http://igd.example/x",
            "http://192.0.0.1@203.0.113.5/x",
            "http://192.0.0.1:0/x",
            "http://192.0.0.1/a b",
            "http://192.0.0.1/x\r\nHost: evil",
            "/x",
        ] {
            assert_eq!(parse_url(not), None, "{not:?}");
        }
    }

    /// A device description from `192.0.0.1:5000` listing `services` (type, control URL).
    fn description(services: &[(&str, &str)]) -> String {
        let list: String = services
            .iter()
            .map(|(kind, control)| {
                format!(
                    "<service><serviceType>{kind}</serviceType><controlURL>{control}</controlURL></service>"
                )
            })
            .collect();
        format!(
            "<?xml version=\"1.0\"?><root xmlns=\"urn:schemas-upnp-org:device-1-0\"><device>\
             <deviceList><device><serviceList>{list}</serviceList></device></deviceList></device></root>"
        )
    }

    const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 0, 1), 5000);

    fn service(services: &[(&str, &str)]) -> Option<ConnectionService> {
        connection_service(description(services).as_bytes(), SERVER).unwrap()
    }

    #[test]
    fn a_description_names_its_best_connection_service() {
        let l3f = (
            "urn:schemas-upnp-org:service:Layer3Forwarding:1",
            "/ctl/L3F",
        );
        let ip1 = (CONNECTION_SERVICES[1], "ctl/IP1");
        let ip2 = (CONNECTION_SERVICES[0], "/ctl/IPConn");
        assert_eq!(
            service(&[l3f, ip1, ip2]),
            Some(ConnectionService {
                service: CONNECTION_SERVICES[0],
                server: SERVER,
                control_path: "/ctl/IPConn".into(),
            })
        );
        let found = service(&[l3f, ip1]).unwrap();
        assert_eq!(
            (found.service, found.control_path.as_str()),
            (CONNECTION_SERVICES[1], "/ctl/IP1")
        );
        let absolute = service(&[(CONNECTION_SERVICES[1], "http://192.0.0.1:5001/ctl")]).unwrap();
        assert_eq!(absolute.server.port(), 5001);
        assert_eq!(service(&[l3f]), None);
    }

    #[test]
    fn a_hostile_description_sends_the_control_point_nowhere_else() {
        let ip2 = CONNECTION_SERVICES[0];
        for (kind, control) in [
            // Another host.
            (ip2, "http://203.0.113.5/ctl"),
            // Line ends or spaces in what becomes the request line or SOAPAction.
            (ip2, "/ctl&#13;&#10;Host: evil"),
            (ip2, "/ctl x"),
            (
                "evil&#13;&#10;X: urn:schemas-upnp-org:service:WANIPConnection:2",
                "/ctl",
            ),
            ("x-urn:schemas-upnp-org:service:WANIPConnection:2", "/ctl"),
        ] {
            assert_eq!(service(&[(kind, control)]), None, "{kind} {control}");
        }
    }
}
