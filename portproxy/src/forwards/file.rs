//! The forwards on disk (`--forwards-file`): what people asked for, never the CGN's grants
//! (those are in the mappings file). Written whole after every change, through a temporary
//! file and a rename; read once at start.
//!
//! ```json
//! { "version": 1, "forwards": [
//!   { "host": "192.168.1.2", "internal_port": 8080, "protocol": "tcp",
//!     "external_port": null, "description": "web server", "granted_port": 8080 } ] }
//! ```

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Forward, MAX_FORWARDS, Spec};
use crate::mapping;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    forwards: Vec<Saved>,
}

/// A forward and the external port the CGN last gave it.
#[derive(Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    spec: Spec,
    #[serde(default)]
    granted_port: Option<u16>,
}

/// The forwards in `path`, each with the external port last granted; none if there is no
/// file yet. Anything else it cannot take
/// whole (not JSON, another version, a forward that makes no sense, two of the same) is an
/// error that names the file and the forward.
pub fn load(path: &Path) -> Result<Vec<(Forward, Option<u16>)>> {
    let Some(file) = mapping::read_json::<File>(path, "forwards")? else {
        return Ok(Vec::new());
    };
    if file.version != VERSION {
        bail!(
            "{}: version {} is not {VERSION}",
            path.display(),
            file.version
        );
    }
    if file.forwards.len() > MAX_FORWARDS {
        bail!(
            "{}: {} forwards, at most {MAX_FORWARDS}",
            path.display(),
            file.forwards.len()
        );
    }
    let mut forwards: Vec<(Forward, Option<u16>)> = Vec::with_capacity(file.forwards.len());
    for Saved { spec, granted_port } in &file.forwards {
        let forward = spec
            .forward()
            .with_context(|| format!("{}: {spec:?}", path.display()))?;
        if forwards.iter().any(|(f, _)| f.key == forward.key) {
            bail!("{}: {} is there twice", path.display(), forward.key);
        }
        forwards.push((forward, granted_port.filter(|p| *p != 0)));
    }
    Ok(forwards)
}

/// Writes `forwards` (with the port last granted) to `path`.
pub fn save<'a>(
    path: &Path,
    forwards: impl Iterator<Item = (&'a Forward, Option<u16>)>,
) -> Result<()> {
    let file = File {
        version: VERSION,
        forwards: forwards
            .map(|(forward, granted_port)| Saved {
                spec: Spec::from(forward),
                granted_port,
            })
            .collect(),
    };
    mapping::write_json(path, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "portproxy-forwards-file-{name}-{}",
            std::process::id()
        ))
    }

    #[test]
    fn saved_forwards_come_back_as_they_were() {
        let dir = dir("roundtrip");
        let path = dir.join("sub/forwards.json");
        assert!(load(&path).unwrap().is_empty(), "no file: no forwards");
        let forwards: Vec<(Forward, Option<u16>)> = [
            (r#"{"host":"192.168.1.2","internal_port":8080,"protocol":"tcp","external_port":9080,"description":"web"}"#, Some(9080)),
            (r#"{"host":"192.168.1.3","internal_port":53,"protocol":"udp"}"#, None),
        ]
        .iter()
        .map(|(json, port)| {
            let spec = serde_json::from_str::<Spec>(json).unwrap();
            (spec.forward().unwrap(), *port)
        })
        .collect();
        save(&path, forwards.iter().map(|(f, p)| (f, *p))).unwrap();
        assert_eq!(load(&path).unwrap(), forwards);
        assert!(!path.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_it_cannot_take_whole_is_an_error_naming_it() {
        let dir = dir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("forwards.json");
        let forward = r#"{"host":"192.168.1.2","internal_port":8080,"protocol":"tcp"}"#;
        for (text, expected) in [
            ("not json".to_string(), "is not a forwards file"),
            (r#"{"version":2,"forwards":[]}"#.to_string(), "version 2"),
            (
                r#"{"version":1,"forwards":[{"host":"192.168.1.2","internal_port":0,"protocol":"tcp"}]}"#
                    .to_string(),
                "internal port 0",
            ),
            (
                format!(r#"{{"version":1,"forwards":[{forward},{forward}]}}"#),
                "there twice",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", load(&path).unwrap_err());
            assert!(err.contains(expected) && err.contains("forwards.json"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
