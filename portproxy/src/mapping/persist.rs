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
//! than the lifetime it was last granted.

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Backing, Entry, Grant, Key, Origin, hex};
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
    /// `relayed`, `pcp-map`, `nat-pmp`, `upnp`.
    upstream: String,
    /// The nonce portproxy's own PCP MAP used (hex).
    upstream_nonce: Option<String>,
    client: SocketAddrV4,
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
            expires_unix: e
                .expires
                .map(|t| unix.saturating_add(t.saturating_sub(now).as_secs())),
            origin: e.origin.name().to_string(),
            nonce: e.origin.nonce_hex(),
            description: e.origin.description().map(str::to_string),
            upstream: e.backing.name().to_string(),
            upstream_nonce,
            client: e.client,
        }
    }

    /// The grant that puts this mapping back at `unix`, for the time it has left (at most its
    /// lifetime); `None` if it expired or the file does not make sense.
    fn grant(&self, unix: u64) -> Option<Grant> {
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
        let lifetime = match self.expires_unix {
            None => 0,
            Some(expires) => {
                let left = u32::try_from(expires.checked_sub(unix)?).unwrap_or(u32::MAX);
                match left {
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
        })
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
/// crash leaves the old file or the new one (the forwards file is written the same way).
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

/// The grants that restore the mappings saved in `path`, at most `limit` of them; none if
/// there is no file yet.
pub fn load(path: &Path, limit: usize) -> Result<Vec<Grant>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: File<Vec<Saved>> = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a mappings file", path.display()))?;
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
        .filter_map(|s| s.grant(unix))
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
                },
                Backing::Relayed,
                None,
            ),
            // Expired: not restored.
            entry(Origin::NatPmp, Backing::NatPmp, Some(now)),
        ];
        save(&path, entries.iter(), now).unwrap();
        let grants = load(&path, 10).unwrap();
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
        assert_eq!(load(&path, 1).unwrap().len(), 1, "at most the table's size");
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            load(&path, 10).unwrap().is_empty(),
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
        assert_eq!(saved.grant(0).unwrap().lifetime, 600);
        saved.protocol = "sctp".into();
        assert!(
            saved.grant(0).is_none(),
            "nonsense is skipped, not restored"
        );
    }
}
