//! Names for LAN hosts, for the page: from the DHCP server's leases (dnsmasq's file,
//! `/tmp/dhcp.leases` on OpenWrt, `--leases-file`) by address, or, for a host whose
//! address changed since its lease, by the hardware address the neighbour table has for it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// What is known of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Known {
    #[serde(rename = "host_name")]
    pub name: Option<String>,
    pub mac: Option<String>,
}

/// A lease: hardware address and name (`*` in the file when the client gave none).
struct Lease {
    mac: String,
    ip: Ipv4Addr,
    name: Option<String>,
}

/// Longest leases file read: a few thousand leases.
const MAX_LEASES_FILE: u64 = 256 * 1024;

/// dnsmasq's lease lines: `EXPIRY MAC IP NAME CLIENT-ID`. Lines of another shape are skipped.
fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (_expiry, mac, ip, name) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            Some(Lease {
                mac: mac.to_ascii_lowercase(),
                ip: ip.parse().ok()?,
                name: (name != "*").then(|| name.to_string()),
            })
        })
        .collect()
}

fn read_leases(file: &Path) -> Vec<Lease> {
    use std::io::Read as _;
    let mut text = String::new();
    // No leases file (no DHCP server here, or none given) is no error: hosts go unnamed.
    if let Ok(f) = std::fs::File::open(file) {
        let _ = f.take(MAX_LEASES_FILE).read_to_string(&mut text);
    }
    parse_leases(&text)
}

/// What is known of each of `hosts`, from the leases in `file` and `neighbours` (address,
/// hardware address).
pub fn known(
    hosts: &[Ipv4Addr],
    file: &Path,
    neighbours: &[(Ipv4Addr, String)],
) -> HashMap<Ipv4Addr, Known> {
    let leases = read_leases(file);
    let neighbours: HashMap<Ipv4Addr, &str> = neighbours
        .iter()
        .map(|(ip, mac)| (*ip, mac.as_str()))
        .collect();
    hosts
        .iter()
        .map(|&host| {
            let mac = neighbours.get(&host).map(|m| m.to_string());
            let lease = leases.iter().find(|l| l.ip == host).or_else(|| {
                let mac = mac.as_deref()?;
                leases.iter().find(|l| l.mac == mac)
            });
            let known = Known {
                name: lease.and_then(|l| l.name.clone()),
                mac: mac.or_else(|| lease.map(|l| l.mac.clone())),
            };
            (host, known)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_named_by_lease_or_by_their_neighbour_entry() {
        let dir = std::env::temp_dir().join(format!("portproxy-leases-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dhcp.leases");
        std::fs::write(
            &file,
            "1700000000 aa:bb:cc:00:00:02 192.168.1.2 nas 01:aa:bb:cc:00:00:02\n\
             1700000000 AA:BB:CC:00:00:03 192.168.1.30 laptop *\n\
             1700000000 aa:bb:cc:00:00:04 192.168.1.4 * *\n\
             garbage line\n",
        )
        .unwrap();
        let (nas, moved, nameless, stranger) = (
            Ipv4Addr::new(192, 168, 1, 2),
            Ipv4Addr::new(192, 168, 1, 3),
            Ipv4Addr::new(192, 168, 1, 4),
            Ipv4Addr::new(192, 168, 1, 5),
        );
        let neighbours = [(moved, "aa:bb:cc:00:00:03".to_string())];
        let known = known(&[nas, moved, nameless, stranger], &file, &neighbours);
        assert_eq!(known[&nas].name.as_deref(), Some("nas"));
        assert_eq!(known[&nas].mac.as_deref(), Some("aa:bb:cc:00:00:02"));
        assert_eq!(known[&moved].name.as_deref(), Some("laptop"));
        assert_eq!(
            known[&nameless],
            Known {
                name: None,
                mac: Some("aa:bb:cc:00:00:04".into())
            }
        );
        assert_eq!(known[&stranger], Known::default());
        // No file: nothing named, nothing failed.
        let none = super::known(&[nas], &dir.join("missing"), &[]);
        assert_eq!(none[&nas], Known::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
