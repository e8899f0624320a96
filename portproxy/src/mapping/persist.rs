//! The table on disk (`--mappings-file`), so that mappings survive a restart of portproxy and
//! a reboot of the router: restored at start, holes opened again, and asked for at the CGN
//! again (by the keeper) in case it lost them too.
//!
//! Router flash wears: the file is written only when the table changed (a mapping added,
//! deleted, expired or moved to another external port) at most every `SAVE_CHANGED`, and
//! for renewals alone at most every `SAVE_RENEWED`; always whole, through a temporary file
//! and a rename, so a crash leaves the old or the new one. It holds at most the table
//! (`--max-mappings`), a few hundred bytes a mapping.
//!
//! Times are stored as Unix time, the only clock that survives a reboot. A router without
//! a real-time clock may start with its clock behind: a restored mapping never gets more
//! than the lifetime it was last granted, nor a UPnP lease more than it was asked for.
//!
//! A mapping made by portproxy's IGD keeps its lease (`Lease`): restored while the lease
//! lasts, even when what the CGN granted ran out meanwhile (the keeper asks the CGN again,
//! and the IGD goes on renewing it). Files written before leases were kept (no `lease_secs`)
//! still load: their UPnP mappings last what the CGN granted, as they did then.

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Backing, Entry, Grant, Key, Lease, Origin, hex};
use crate::proto::Transport;

pub const SAVE_CHANGED: Duration = Duration::from_secs(10);
pub const SAVE_RENEWED: Duration = Duration::from_secs(600);
const VERSION: u32 = 1;

/// The file: `Vec<Saved>` when read, `Saving` when written.
#[derive(Debug, Serialize, Deserialize)]
struct File<M> {
    version: u32,
    mappings: M,
}

/// The table's entries, serialized one by one as they are turned into `Saved`.
struct Saving<I> {
    entries: I,
    now: Duration,
    unix: u64,
}

impl<'a, I: Iterator<Item = &'a Entry> + Clone> Serialize for Saving<I> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (now, unix) = (self.now, self.unix);
        serializer.collect_seq(self.entries.clone().map(|e| Saved::of(e, now, unix)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    host: Ipv4Addr,
    protocol: String,
    internal_port: u16,
    external: SocketAddrV4,
    /// The lifetime last granted, in seconds (0: until deleted).
    lifetime: u32,
    /// Unix time; `None` until deleted.
    expires_unix: Option<u64>,
    /// `nat-pmp`, `pcp-map`, `upnp-add`, `upnp-add-any`, `manual`.
    origin: String,
    /// PCP MAP's nonce (hex).
    nonce: Option<String>,
    description: Option<String>,
    /// The UPnP lease in seconds (0: until deleted), for a mapping made by portproxy's IGD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_secs: Option<u32>,
    /// When that lease ends, Unix time (none when it lasts until deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_ends_unix: Option<u64>,
    /// `relayed`, `pcp-map`, `nat-pmp`, `upnp`.
    upstream: String,
    /// The nonce portproxy's own PCP MAP used (hex).
    upstream_nonce: Option<String>,
    client: SocketAddrV4,
    /// Double NAT: the router's port forwarded to the host (absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local_port: Option<u16>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unhex(s: &str) -> Option<[u8; 12]> {
    let mut out = [0u8; 12];
    if s.len() != 24 || !s.is_ascii() {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Saved {
    fn of(e: &Entry, now: Duration, unix: u64) -> Saved {
        let unix_of = |t: Duration| unix.saturating_add(t.saturating_sub(now).as_secs());
        let lease = match &e.origin {
            Origin::Upnp { lease, .. } => *lease,
            _ => None,
        };
        let upstream_nonce = match &e.backing {
            Backing::Pcp { nonce } => Some(hex(nonce)),
            _ => None,
        };
        Saved {
            host: e.key.host,
            protocol: e.key.proto.name().to_string(),
            internal_port: e.key.internal_port,
            external: e.external,
            lifetime: e.lifetime,
            expires_unix: e.expires.map(unix_of),
            origin: e.origin.name().to_string(),
            nonce: e.origin.nonce_hex(),
            description: e.origin.description().map(str::to_string),
            lease_secs: lease.map(|l| l.secs),
            lease_ends_unix: lease.and_then(|l| l.ends).map(unix_of),
            upstream: e.backing.name().to_string(),
            upstream_nonce,
            client: e.client,
            local_port: e.local_port,
        }
    }

    /// The grant that puts this mapping back at `unix` (`now` on the boot clock), for the
    /// time it has left (at most its lifetime); `None` if it expired (and its lease, if it has
    /// one, is over) or the file does not make sense.
    fn grant(&self, unix: u64, now: Duration) -> Option<Grant> {
        let proto = match self.protocol.as_str() {
            "tcp" => Transport::Tcp,
            "udp" => Transport::Udp,
            _ => return None,
        };
        let nonce = |n: &Option<String>| n.as_deref().and_then(unhex);
        let origin = match self.origin.as_str() {
            "nat-pmp" => Origin::NatPmp,
            "pcp-map" => Origin::PcpMap {
                nonce: nonce(&self.nonce)?,
            },
            "upnp-add" | "upnp-add-any" => Origin::Upnp {
                any: self.origin == "upnp-add-any",
                description: self.description.clone().unwrap_or_default(),
                lease: self.lease(unix, now)?,
            },
            "manual" => Origin::Manual {
                description: self.description.clone().unwrap_or_default(),
            },
            _ => return None,
        };
        let backing = match self.upstream.as_str() {
            "relayed" => Backing::Relayed,
            "nat-pmp" => Backing::NatPmp,
            "upnp" => Backing::Upnp,
            "pcp-map" => Backing::Pcp {
                nonce: nonce(&self.upstream_nonce)?,
            },
            _ => return None,
        };
        let leased = matches!(origin, Origin::Upnp { lease: Some(_), .. });
        let lifetime = match self.expires_unix {
            None => 0,
            Some(expires) => {
                let left = expires.saturating_sub(unix);
                match u32::try_from(left).unwrap_or(u32::MAX) {
                    // Gone at the CGN, but the lease lasts: asked for again for as long
                    // as it was last granted.
                    0 if leased => self.lifetime.max(1),
                    0 => return None,
                    left => left.min(self.lifetime.max(1)),
                }
            }
        };
        Some(Grant {
            key: Key {
                host: self.host,
                proto,
                internal_port: self.internal_port,
            },
            external: self.external,
            lifetime,
            origin,
            backing,
            client: self.client,
            local_port: self.local_port,
        })
    }

    /// The UPnP lease as it stands at `unix` (`now` on the boot clock): `Some(None)` for a
    /// mapping without one, `None` when it is over or makes no sense.
    fn lease(&self, unix: u64, now: Duration) -> Option<Option<Lease>> {
        let Some(secs) = self.lease_secs else {
            return Some(None);
        };
        let ends = match (secs, self.lease_ends_unix) {
            (0, _) => None,
            (_, None) => return None,
            (secs, Some(ends)) => {
                let left = ends.checked_sub(unix).filter(|&left| left > 0)?;
                let left = Duration::from_secs(left.min(u64::from(secs)));
                Some(now.checked_add(left)?)
            }
        };
        Some(Some(Lease { secs, ends }))
    }
}

/// Writes `entries` (times on the boot clock, `now` being the present) to `path`.
pub fn save<'a>(
    path: &Path,
    entries: impl Iterator<Item = &'a Entry> + Clone,
    now: Duration,
) -> Result<()> {
    let file = File {
        version: VERSION,
        mappings: Saving {
            entries,
            now,
            unix: unix_now(),
        },
    };
    write_json(path, &file)
}

/// Writes `value` to `path` as JSON, whole: through a temporary file and a rename, so a
/// crash leaves the old file or the new one (the forwards file is written and read the
/// same way).
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let write = || -> Result<()> {
        let mut out = std::io::BufWriter::new(fs::File::create(&tmp)?);
        serde_json::to_writer_pretty(&mut out, value)?;
        out.flush()?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Reads the JSON file `path` that `write_json` wrote, `what` naming it in errors; `None`
/// if there is no file yet.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not a {what} file", path.display()))
}

/// The grants that restore the mappings saved in `path`, at most `limit` of them, `now`
/// being the present on the boot clock; none if there is no file yet.
pub fn load(path: &Path, limit: usize, now: Duration) -> Result<Vec<Grant>> {
    let Some(file) = read_json::<File<Vec<Saved>>>(path, "mappings")? else {
        return Ok(Vec::new());
    };
    if file.version != VERSION {
        bail!(
            "{}: version {} is not {VERSION}",
            path.display(),
            file.version
        );
    }
    let unix = unix_now();
    Ok(file
        .mappings
        .iter()
        .filter_map(|s| s.grant(unix, now))
        .take(limit)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(origin: Origin, backing: Backing, expires: Option<Duration>) -> Entry {
        Entry {
            key: Key {
                host: Ipv4Addr::new(192, 168, 1, 2),
                proto: Transport::Udp,
                internal_port: 5000,
            },
            external: SocketAddrV4::new(Ipv4Addr::new(203, 0, 114, 1), 6000),
            lifetime: 600,
            expires,
            origin,
            backing,
            client: SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 40000),
            local_port: None,
            first_seen: Duration::ZERO,
            last_seen: Duration::ZERO,
        }
    }

    #[test]
    fn saved_mappings_come_back_with_the_time_they_have_left() {
        let dir = std::env::temp_dir().join(format!("portproxy-persist-{}", std::process::id()));
        let path = dir.join("sub/mappings.json");
        let now = Duration::from_secs(1000);
        let entries = [
            entry(
                Origin::NatPmp,
                Backing::Pcp { nonce: [7; 12] },
                Some(now + Duration::from_secs(300)),
            ),
            entry(
                Origin::PcpMap { nonce: [9; 12] },
                Backing::Relayed,
                Some(now + Duration::from_secs(600)),
            ),
            entry(
                Origin::Upnp {
                    any: false,
                    description: "game".into(),
                    lease: None,
                },
                Backing::Relayed,
                None,
            ),
            // Expired: not restored.
            entry(Origin::NatPmp, Backing::NatPmp, Some(now)),
        ];
        save(&path, entries.iter(), now).unwrap();
        let grants = load(&path, 10, now).unwrap();
        assert_eq!(grants.len(), 3);
        assert!(
            (299..=300).contains(&grants[0].lifetime),
            "{}",
            grants[0].lifetime
        );
        assert_eq!(grants[0].backing, Backing::Pcp { nonce: [7; 12] });
        assert_eq!(grants[1].origin, Origin::PcpMap { nonce: [9; 12] });
        assert_eq!(grants[2].lifetime, 0, "until deleted");
        assert_eq!(grants[2].external.port(), 6000);
        assert_eq!(
            load(&path, 1, now).unwrap().len(),
            1,
            "at most the table's size"
        );
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            load(&path, 10, now).unwrap().is_empty(),
            "no file: nothing to restore"
        );
    }

    #[test]
    fn a_clock_behind_gives_no_more_than_the_lifetime() {
        let mut saved = Saved::of(
            &entry(
                Origin::NatPmp,
                Backing::NatPmp,
                Some(Duration::from_secs(600)),
            ),
            Duration::ZERO,
            1_000_000,
        );
        assert_eq!(saved.grant(0, Duration::ZERO).unwrap().lifetime, 600);
        saved.protocol = "sctp".into();
        assert!(
            saved.grant(0, Duration::ZERO).is_none(),
            "nonsense is skipped, not restored"
        );
    }

    fn leased(secs: u32, ends: Option<Duration>) -> Entry {
        let origin = Origin::Upnp {
            any: false,
            description: "game".into(),
            lease: Some(Lease { secs, ends }),
        };
        // Made by the IGD at the CGN for an hour at most.
        let mut e = entry(origin, Backing::Pcp { nonce: [3; 12] }, None);
        e.lifetime = 3600;
        e
    }

    #[test]
    fn a_lease_outlives_the_cgn_grant_and_its_end_is_kept() {
        let (unix, now) = (1_000_000, Duration::from_secs(50));
        let mut permanent = leased(0, None);
        permanent.expires = Some(now + Duration::from_secs(1800));
        let mut day = leased(86_400, Some(now + Duration::from_secs(80_000)));
        day.expires = Some(now + Duration::from_secs(3000));
        let saved = |e: &Entry| Saved::of(e, now, unix);
        let lease_of = |g: &Grant| match &g.origin {
            Origin::Upnp { lease, .. } => *lease,
            other => panic!("{other:?}"),
        };

        // A restart 100 s later, on a boot clock at 7 s: the lease ends where it did.
        let later = Duration::from_secs(7);
        let g = saved(&day).grant(unix + 100, later).unwrap();
        assert_eq!(g.lifetime, 2900);
        assert_eq!(
            lease_of(&g),
            Some(Lease {
                secs: 86_400,
                ends: Some(later + Duration::from_secs(79_900))
            })
        );
        // Two hours later: the CGN's hour is over, the lease is not. Asked for again.
        let g = saved(&permanent).grant(unix + 7200, later).unwrap();
        assert_eq!(
            (g.lifetime, lease_of(&g)),
            (
                3600,
                Some(Lease {
                    secs: 0,
                    ends: None
                })
            )
        );
        let g = saved(&day).grant(unix + 7200, later).unwrap();
        assert_eq!(g.lifetime, 3600);
        // A day later the day's lease is over: not restored.
        assert!(saved(&day).grant(unix + 80_000, later).is_none());
        // A clock far behind gives no more lease than was asked for.
        let g = saved(&day).grant(0, later).unwrap();
        assert_eq!(
            lease_of(&g),
            Some(Lease {
                secs: 86_400,
                ends: Some(later + Duration::from_secs(86_400))
            })
        );
    }

    #[test]
    fn a_file_from_before_leases_still_loads() {
        let json = r#"{"version":1,"mappings":[{"host":"192.168.1.2","protocol":"tcp",
            "internal_port":8080,"external":"203.0.114.1:9080","lifetime":600,
            "expires_unix":1000300,"origin":"upnp-add","nonce":null,"description":"old",
            "upstream":"pcp-map","upstream_nonce":"030303030303030303030303",
            "client":"192.168.1.2:40000"}]}"#;
        let file: File<Vec<Saved>> = serde_json::from_str(json).unwrap();
        let g = file.mappings[0].grant(1_000_000, Duration::ZERO).unwrap();
        assert_eq!(g.lifetime, 300);
        assert_eq!(
            g.origin,
            Origin::Upnp {
                any: false,
                description: "old".into(),
                lease: None
            }
        );
        // And a lease comes back only from a file that has one.
        assert!(file.mappings[0].grant(1_000_300, Duration::ZERO).is_none());
    }
}
