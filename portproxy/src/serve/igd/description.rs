//! The IGD's device descriptions (UPnP Device Architecture §2): an InternetGatewayDevice
//! of version 1 and one of version 2, each with its WANDevice and WANConnectionDevice, and
//! the services a control point looks for: WANIPConnection (port mappings) and
//! WANCommonInterfaceConfig (link and traffic figures). Both share the control URLs; the
//! service type a request names says which version answers.

use std::fmt::Write as _;

/// Where each document and control point lives on the IGD's HTTP port.
pub const DESCRIPTION_V1: &str = "/igd1.xml";
pub const DESCRIPTION_V2: &str = "/igd2.xml";
/// WANIPConnection:1's and :2's: a control point that reads :1's may call only what it lists.
pub const IP_CONNECTION_SCPD_V1: &str = "/WANIPCn1.xml";
pub const IP_CONNECTION_SCPD_V2: &str = "/WANIPCn2.xml";
pub const COMMON_IF_SCPD: &str = "/WANCfg.xml";
pub const IP_CONNECTION_CONTROL: &str = "/ctl/IPConn";
pub const COMMON_IF_CONTROL: &str = "/ctl/CmnIfCfg";
pub const IP_CONNECTION_EVENTS: &str = "/evt/IPConn";
pub const COMMON_IF_EVENTS: &str = "/evt/CmnIfCfg";

pub const IGD: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice";
pub const WAN_DEVICE: &str = "urn:schemas-upnp-org:device:WANDevice";
pub const WAN_CONNECTION_DEVICE: &str = "urn:schemas-upnp-org:device:WANConnectionDevice";
pub const IP_CONNECTION: &str = "urn:schemas-upnp-org:service:WANIPConnection";
pub const COMMON_IF: &str = "urn:schemas-upnp-org:service:WANCommonInterfaceConfig";

/// The device types of one IGD version, outermost first, with the suffix of their UUID
/// (the root device's UUID, then -0, -1 or -2).
pub fn devices(version: u8) -> [(String, &'static str); 3] {
    [
        (format!("{IGD}:{version}"), "-0"),
        (format!("{WAN_DEVICE}:{version}"), "-1"),
        (format!("{WAN_CONNECTION_DEVICE}:{version}"), "-2"),
    ]
}

/// The service types of one IGD version (WANCommonInterfaceConfig has only version 1).
pub fn services(version: u8) -> [String; 2] {
    [
        format!("{IP_CONNECTION}:{version}"),
        format!("{COMMON_IF}:1"),
    ]
}

/// The device description of IGD `version` (1 or 2) for `uuid` (see `devices`).
pub fn document(version: u8, uuid: &str) -> String {
    let [igd, wan, conn] = devices(version);
    let [ip, common] = services(version);
    let mut xml = String::new();
    let _ = write!(
        xml,
        "<?xml version=\"1.0\"?>\r\n<root xmlns=\"urn:schemas-upnp-org:device-1-0\">\
         <specVersion><major>1</major><minor>{minor}</minor></specVersion>\
         <device><deviceType>{igd}</deviceType>{names}<UDN>uuid:{uuid}{root}</UDN>\
         <deviceList><device><deviceType>{wan}</deviceType>{names}<UDN>uuid:{uuid}{wan_id}</UDN>\
         <serviceList>{common_svc}</serviceList>\
         <deviceList><device><deviceType>{conn}</deviceType>{names}<UDN>uuid:{uuid}{conn_id}</UDN>\
         <serviceList>{ip_svc}</serviceList></device></deviceList>\
         </device></deviceList></device></root>\r\n",
        minor = if version == 2 { 1 } else { 0 },
        names = "<friendlyName>portproxy</friendlyName><manufacturer>portproxy</manufacturer>\
                 <modelName>portproxy IGD</modelName>",
        root = igd.1,
        igd = igd.0,
        wan = wan.0,
        wan_id = wan.1,
        conn = conn.0,
        conn_id = conn.1,
        common_svc = service(
            &common,
            "CmnIfCfg1",
            COMMON_IF_SCPD,
            COMMON_IF_CONTROL,
            COMMON_IF_EVENTS
        ),
        ip_svc = service(
            &ip,
            "IPConn1",
            if version == 2 {
                IP_CONNECTION_SCPD_V2
            } else {
                IP_CONNECTION_SCPD_V1
            },
            IP_CONNECTION_CONTROL,
            IP_CONNECTION_EVENTS
        ),
    );
    xml
}

fn service(kind: &str, id: &str, scpd: &str, control: &str, events: &str) -> String {
    format!(
        "<service><serviceType>{kind}</serviceType><serviceId>urn:upnp-org:serviceId:{id}</serviceId>\
         <SCPDURL>{scpd}</SCPDURL><controlURL>{control}</controlURL><eventSubURL>{events}</eventSubURL></service>"
    )
}

/// An action's argument: its name, whether it is an output, its state variable.
pub type Argument<'a> = (&'a str, bool, &'a str);
/// A state variable: its name, data type, and whether it is evented.
pub type Variable<'a> = (&'a str, &'a str, bool);

/// The service description (SCPD) of WANIPConnection or WANCommonInterfaceConfig: the
/// actions this IGD answers with their arguments, and the state variables they refer to.
pub fn scpd(actions: &[(&str, &[Argument])], variables: &[Variable]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\"?>\r\n<scpd xmlns=\"urn:schemas-upnp-org:service-1-0\">\
         <specVersion><major>1</major><minor>0</minor></specVersion><actionList>",
    );
    for (name, args) in actions {
        let _ = write!(xml, "<action><name>{name}</name><argumentList>");
        for (arg, out, variable) in *args {
            let direction = if *out { "out" } else { "in" };
            let _ = write!(
                xml,
                "<argument><name>{arg}</name><direction>{direction}</direction>\
                 <relatedStateVariable>{variable}</relatedStateVariable></argument>"
            );
        }
        xml += "</argumentList></action>";
    }
    xml += "</actionList><serviceStateTable>";
    for (name, kind, evented) in variables {
        let events = if *evented { "yes" } else { "no" };
        let _ = write!(
            xml,
            "<stateVariable sendEvents=\"{events}\"><name>{name}</name><dataType>{kind}</dataType></stateVariable>"
        );
    }
    xml += "</serviceStateTable></scpd>\r\n";
    xml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::upnp;

    #[test]
    fn a_control_point_finds_the_connection_service_in_each_version() {
        for version in [1, 2] {
            let doc = document(version, "5f1a0000-0000-4000-8000-000000000000");
            let services = upnp::services(doc.as_bytes()).unwrap();
            let ip = services
                .iter()
                .find(|s| {
                    upnp::argument(s, "serviceType") == Some(&format!("{IP_CONNECTION}:{version}"))
                })
                .expect("WANIPConnection listed");
            assert_eq!(
                upnp::argument(ip, "controlURL"),
                Some(IP_CONNECTION_CONTROL)
            );
            assert!(doc.contains(&format!("<deviceType>{IGD}:{version}</deviceType>")));
            assert!(doc.contains("uuid:5f1a0000-0000-4000-8000-000000000000-2"));
        }
    }
}
