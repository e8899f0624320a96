//! A router build of portproxy in the lab: `cargo xtask test` runs this file a second time
//! with PORTPROXY_BIN set to a static armv7 binary started under qemu-user (and once
//! natively, with the rest of the suite).
//!
//! What qemu-user 7.2 (Debian 12) translates decides the scenario: it has no RTM_NEWRULE
//! (the reply-capture rule of the NAT-PMP/PCP relay: "Not supported") and no IP_MULTICAST_IF
//! (the SSDP sockets: "Protocol not available"), so the binary runs the UPnP HTTP relay
//! alone, which needs neither: SOAP from a LAN host to the CPE, spliced to the CGN's IGD.

#[macro_use]
mod common;

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use common::{run_expect, with_lab};
use tests::{IGD_HTTP_PORT, LAN_GATEWAY, LAN1_IP, Lab, PUBLIC_IP, Softwire};

/// `upnpc -u http://192.168.1.1:5000/rootDesc.xml -a ...` in lan1: the mapping lands at the
/// CGN for lan1, and the internet host reaches lan1 through it.
fn upnp_http_relay_alone(softwire: Softwire) -> Result<()> {
    with_lab(Lab::builder(softwire), |lab| {
        let portproxy = lab.spawn_portproxy(&[
            "--lan-iface",
            "br-lan",
            "--wan-iface",
            "softwire",
            "--nat-pmp",
            "0",
            "--upnp-udp",
            "0",
            "--upnp-tcp",
            "1",
            "--state-dir",
            lab.dir().join("state").to_str().expect("UTF-8 lab dir"),
            "-vv",
        ])?;
        let result = (|| {
            let lan1 = lab.lan(1);
            let desc = format!("http://{LAN_GATEWAY}:{IGD_HTTP_PORT}/rootDesc.xml");
            let host = LAN1_IP.to_string();
            run_expect(
                lan1,
                "upnpc",
                &["-u", &desc, "-a", &host, "8585", "9585", "tcp"],
                &[&format!(
                    "external {PUBLIC_IP}:9585 TCP is redirected to internal {host}:8585"
                )],
            )?;
            let ruleset = run_expect(lab.cgn(), "nft", &["list", "table", "inet", "nat"], &[])?;
            ensure!(
                ruleset.contains(&format!("dport 9585 dnat ip to {host}:8585")),
                "the CGN has no mapping 9585 -> {host}:8585:\n{ruleset}"
            );
            let _server = lan1.serve_tcp(8585)?;
            let reply = lab
                .inet()
                .connect_tcp(SocketAddr::from((PUBLIC_IP, 9585)))?;
            ensure!(
                reply == lan1.role(),
                "inet reached {reply:?} instead of lan1"
            );
            Ok(())
        })();
        if result.is_err() {
            eprintln!("=== portproxy log\n{}", portproxy.log());
        }
        result
    })
}

both_softwires!(upnp_http_relay_alone: upnp_http_relay_alone_l2, upnp_http_relay_alone_l3);
