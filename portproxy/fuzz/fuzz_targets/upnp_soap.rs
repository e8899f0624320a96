//! The IGD's SOAP as portproxy serves it to LAN hosts: a call read with
//! `upnp::action_arguments` for every action the IGD answers (and ones it does not) never
//! panics, and what it takes is a SOAP call to the lenient reader too; a value the IGD
//! answers with (a host's mapping description, a port listing) reads back as it was; the
//! device descriptions it serves (`serve/igd/description.rs`) list their services to a
//! control point (`upnp::services`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portproxy_fuzz::description::{self, COMMON_IF_CONTROL, IP_CONNECTION_CONTROL};
use portproxy_fuzz::proto::upnp;

/// Every action of WANIPConnection:1/2 and WANCommonInterfaceConfig:1 the IGD answers, and
/// two it does not.
const ACTIONS: [&str; 18] = [
    "AddPortMapping",
    "AddAnyPortMapping",
    "DeletePortMapping",
    "DeletePortMappingRange",
    "GetSpecificPortMappingEntry",
    "GetGenericPortMappingEntry",
    "GetListOfPortMappings",
    "GetExternalIPAddress",
    "GetStatusInfo",
    "GetConnectionTypeInfo",
    "GetNATRSIPStatus",
    "GetCommonLinkProperties",
    "GetTotalBytesSent",
    "GetTotalBytesReceived",
    "GetTotalPacketsSent",
    "GetTotalPacketsReceived",
    "SetConnectionType",
    "",
];
const SERVICE: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let action = ACTIONS[usize::from(pick) % ACTIONS.len()];

    // A LAN host's call.
    if let Ok(args) = upnp::action_arguments(body, action) {
        // Every argument is an element: at least `<a/>`.
        assert!(args.len() <= body.len() / 4);
        assert!(upnp::arguments(body, action).is_ok());
    }

    // What the IGD answers with, read back as a control point reads it, exactly (a
    // carriage return is escaped, so XML's end-of-line handling leaves it be; a listing
    // goes in CDATA as it is).
    if let Ok(value) = std::str::from_utf8(body) {
        let name = "NewPortMappingDescription";
        let expected = [(name.to_string(), value.to_string())];
        let request = upnp::soap_request(SERVICE, action, &[(name, value.to_string())]);
        let args = upnp::action_arguments(request.as_bytes(), action)
            .unwrap_or_else(|e| panic!("our own call does not read back: {e:?}\n{request}"));
        assert_eq!(args, expected, "{request}");

        let response = upnp::soap_response(SERVICE, action, &[(name, value.to_string())]);
        let args = upnp::arguments(response.as_bytes(), &format!("{action}Response"))
            .unwrap_or_else(|e| panic!("our own answer does not read back: {e:?}\n{response}"));
        assert_eq!(args, expected, "{response}");
    }

    // The description of IGD:1 or :2 for a UUID made of the input.
    let hex: String = body.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let hex = format!("{hex:0<32}");
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let version = 1 + (pick & 1);
    let document = description::document(version, &uuid);
    let services = upnp::services(document.as_bytes()).expect("our description reads back");
    assert_eq!(services.len(), 2);
    let [ip, common] = description::services(version);
    for (kind, control) in [(ip, IP_CONNECTION_CONTROL), (common, COMMON_IF_CONTROL)] {
        let service = services
            .iter()
            .find(|s| upnp::argument(s, "serviceType") == Some(kind.as_str()))
            .unwrap_or_else(|| panic!("{kind} not listed:\n{document}"));
        assert_eq!(upnp::argument(service, "controlURL"), Some(control));
    }
});
