//! `cargo xtask install [--socket-only] [--root DIR]`: installs portproxy as a systemd
//! service on a Debian-style router: the release binary, the unit (dist/systemd), for a build
//! with the fast path its drop-in with the capabilities that needs, and an options file.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{build, cmd};

const BINARY: &str = "usr/local/sbin/portproxy";
const UNIT: &str = "etc/systemd/system/portproxy.service";
const DROP_IN: &str = "etc/systemd/system/portproxy.service.d/fastpath.conf";
const OPTIONS: &str = "etc/default/portproxy";

const DEFAULT_OPTIONS: &str = "\
# Command-line options of portproxy (portproxy --help), read by portproxy.service.
# With the fast path: PORTPROXY_ARGS=\"--wan-iface softwire --xdp\"
PORTPROXY_ARGS=\"--wan-iface softwire\"
";

pub fn run(socket_only: bool, root: &Path) -> anyhow::Result<()> {
    if root == Path::new("/") {
        cmd::require_root("install")?;
    }
    let bin = if socket_only {
        build::socket_only_release()?
    } else {
        build::run(true)?
    };
    let repo = cmd::workspace_root();
    install(&bin, root, BINARY, 0o755)?;
    install(
        &repo.join("dist/systemd/portproxy.service"),
        root,
        UNIT,
        0o644,
    )?;
    let drop_in = root.join(DROP_IN);
    if socket_only {
        // A socket-only binary needs none of the fast path's capabilities.
        if drop_in.exists() {
            fs::remove_file(&drop_in).with_context(|| format!("removing {}", drop_in.display()))?;
            println!("removed {}", drop_in.display());
        }
    } else {
        install(
            &repo.join("dist/systemd/portproxy.service.d/fastpath.conf"),
            root,
            DROP_IN,
            0o644,
        )?;
    }
    let options = root.join(OPTIONS);
    if options.exists() {
        println!("kept {}", options.display());
    } else {
        write(&options, DEFAULT_OPTIONS, 0o644)?;
    }
    if root == Path::new("/") && Path::new("/run/systemd/system").exists() {
        cmd::run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    println!(
        "next: set the options in {}, then: systemctl enable --now portproxy",
        options.display()
    );
    Ok(())
}

/// Copies `from` to `root/path` with `mode`, creating directories.
fn install(from: &Path, root: &Path, path: &str, mode: u32) -> anyhow::Result<()> {
    let contents = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(&root.join(path), contents, mode)
}

fn write(to: &PathBuf, contents: impl AsRef<[u8]>, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Written beside and renamed over: a running binary cannot be written to (ETXTBSY).
    let new = to.with_extension("new");
    fs::write(&new, contents).with_context(|| format!("writing {}", new.display()))?;
    fs::set_permissions(&new, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", new.display()))?;
    fs::rename(&new, to)
        .with_context(|| format!("renaming {} to {}", new.display(), to.display()))?;
    println!("installed {}", to.display());
    Ok(())
}
