//! The service files in the repository stay in step with the command line: the OpenWrt
//! package (`openwrt/net/portproxy`: UCI configuration and procd init script) and the
//! systemd unit (`dist/systemd`). The init script runs under `openwrt/tests/render.sh`,
//! which stands in for rc.common, functions.sh and procd and prints what it asked procd for.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory as _, Parser as _};

use crate::cli::Options;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const PACKAGE: &str = "openwrt/net/portproxy/files";

/// What the init script asks procd for with UCI file `config` (relative to the repository).
struct Rendered {
    /// The instance's command line, program first; empty if no instance was started.
    command: Vec<String>,
    /// Every other line of render.sh's output.
    rest: Vec<String>,
}

fn render(config: &str) -> Rendered {
    let out = Command::new("sh")
        .arg(repo().join("openwrt/tests/render.sh"))
        .arg(repo().join(config))
        .output()
        .expect("running sh openwrt/tests/render.sh");
    let stdout = String::from_utf8(out.stdout).expect("render.sh prints UTF-8");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "render.sh {config}: {}\n{}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rendered = Rendered {
        command: Vec::new(),
        rest: Vec::new(),
    };
    for line in stdout.lines() {
        match line.strip_prefix("arg ") {
            Some(word) => rendered.command.push(word.to_string()),
            None => rendered.rest.push(line.to_string()),
        }
    }
    rendered
}

/// Every long option of the command line, e.g. "lan-iface" (not help and version).
fn long_options() -> Vec<String> {
    Options::command()
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version"))
        .map(str::to_string)
        .collect()
}

/// `sh -n`, then shellcheck as dash (OpenWrt's busybox ash, like dash, has `local`;
/// shellcheck 0.9 knows no busybox dialect).
#[test]
fn the_init_script_is_valid_shell() {
    for script in [
        format!("{PACKAGE}/portproxy.init"),
        "openwrt/tests/render.sh".into(),
    ] {
        let status = Command::new("sh")
            .arg("-n")
            .arg(repo().join(&script))
            .status()
            .expect("running sh -n");
        assert!(status.success(), "sh -n {script}: {status}");
        let out = Command::new("shellcheck")
            .args(["--shell=dash", "--format=gcc"])
            .arg(repo().join(&script))
            .output()
            .expect("running shellcheck (Debian package shellcheck; cargo xtask setup)");
        assert!(
            out.status.success(),
            "shellcheck {script}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The shipped /etc/config/portproxy names every command-line option (set or commented),
/// under the original's names with underscores.
#[test]
fn the_uci_config_names_every_option() {
    let config = std::fs::read_to_string(repo().join(PACKAGE).join("portproxy.config"))
        .expect("reading portproxy.config");
    let named: Vec<&str> = config
        .lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches('#');
            line.strip_prefix("option ")?.split_whitespace().next()
        })
        .collect();
    for long in long_options() {
        let uci = long.replace('-', "_");
        assert!(
            named.contains(&uci.as_str()),
            "portproxy.config has no `option {uci}` for --{long}"
        );
    }
}

#[test]
fn the_shipped_config_starts_the_socket_relay_on_the_softwire() {
    let rendered = render(&format!("{PACKAGE}/portproxy.config"));
    assert_eq!(
        rendered.command,
        [
            "/usr/sbin/portproxy",
            "--lan-iface",
            "br-lan",
            "--wan-iface",
            "ds-wan",
            "--mappings-file",
            "/etc/portproxy/mappings.json",
            "--forwards-file",
            "/etc/portproxy/forwards.json",
            "--api-hosts",
            "openwrt.lan",
            "--state-dir",
            "/var/run/portproxy",
            "--nat-pmp",
            "1",
            "--upnp-udp",
            "1",
            "--upnp-tcp",
            "0",
            "--api",
            "1",
        ]
    );
    Options::try_parse_from(&rendered.command).expect("the command line parses");
    for line in [
        "param respawn 3600 5 0",
        "trigger reload portproxy",
        "trigger interface interface.*.up wan /etc/init.d/portproxy reload",
        "json add_string src wan",
        "json add_string src_ip 192.0.0.1",
        "json add_string src_port 1900",
        "json add_string target ACCEPT",
    ] {
        assert!(
            rendered.rest.iter().any(|l| l == line),
            "no `{line}` in {:#?}",
            rendered.rest
        );
    }
}

/// A configuration with every option set gives every option to the program, with the
/// values it means.
#[test]
fn every_uci_option_reaches_the_command_line() {
    let rendered = render("openwrt/tests/full.config");
    let expected = [
        "/usr/sbin/portproxy",
        "--lan-iface",
        "br-home",
        "--wan-iface",
        "ds-wan6",
        "--lan-addr",
        "192.168.7.1",
        "--wan-addr",
        "192.0.0.2",
        "--cgn-addr",
        "192.0.0.9",
        "--nat-pmp-port",
        "5352",
        "--upnp-udp-port",
        "1901",
        "--upnp-tcp-port1",
        "5001",
        "--upnp-tcp-port2",
        "2870",
        "--timeout",
        "30",
        "--max-clients",
        "1024",
        "--rate-limit",
        "0",
        "--firewall",
        "nft",
        "--max-mappings",
        "512",
        "--max-mappings-per-host",
        "16",
        "--mode",
        "proxy",
        "--double-nat",
        "on",
        "--mappings-file",
        "/etc/pp/mappings.json",
        "--forwards-file",
        "/etc/pp/forwards.json",
        "--api-port",
        "8352",
        "--api-password-file",
        "/etc/pp/api-password",
        "--api-hosts",
        "router.lan,gw",
        "--leases-file",
        "/tmp/pp.leases",
        "--hooks",
        "tc",
        "--pin-dir",
        "/sys/fs/bpf/pp",
        "--state-dir",
        "/tmp/pp",
        "--nat-pmp",
        "1",
        "--upnp-udp",
        "1",
        "--upnp-tcp",
        "1",
        "--api",
        "0",
        "--xdp",
        "-vv",
    ];
    assert_eq!(rendered.command, expected);
    for long in long_options() {
        let given = rendered.command.contains(&format!("--{long}"));
        assert!(
            given || long == "verbose",
            "--{long} is not set by full.config"
        );
    }
    let o = Options::try_parse_from(&rendered.command).expect("the command line parses");
    assert_eq!(o.cgn_addr, Some(std::net::Ipv4Addr::new(192, 0, 0, 9)));
    assert!(o.nat_pmp && o.upnp_udp && o.upnp_tcp && o.xdp && !o.api);
    assert_eq!(o.api_hosts, ["router.lan", "gw"]);
    assert_eq!((o.max_clients, o.rate_limit, o.verbose), (1024, 0, 2));
    for line in [
        "trigger interface interface.*.up wan6 /etc/init.d/portproxy reload",
        "json add_string src cgn",
        "json add_string src_ip 192.0.0.9",
    ] {
        assert!(rendered.rest.iter().any(|l| l == line), "no `{line}`");
    }
}

#[test]
fn relays_switched_off_need_no_firewall_rule() {
    let rendered = render("openwrt/tests/minimal.config");
    assert_eq!(
        rendered.command,
        [
            "/usr/sbin/portproxy",
            "--wan-iface",
            "ds-wan",
            "--upnp-udp",
            "0",
            "--upnp-tcp",
            "0",
        ]
    );
    let o = Options::try_parse_from(&rendered.command).expect("the command line parses");
    assert!(o.nat_pmp && !o.upnp_udp && !o.upnp_tcp);
    assert!(!rendered.rest.iter().any(|l| l.starts_with("json ")));
}

#[test]
fn a_disabled_service_starts_nothing() {
    let rendered = render("openwrt/tests/disabled.config");
    assert!(rendered.command.is_empty(), "{:?}", rendered.command);
    assert!(!rendered.rest.iter().any(|l| l.starts_with("param ")));
}

const UNIT: &str = "dist/systemd/portproxy.service";
const FASTPATH_DROP_IN: &str = "dist/systemd/portproxy.service.d/fastpath.conf";

/// `systemd-analyze verify` of the unit (with `drop_ins` appended, as systemd merges them)
/// must pass without a word: it warns about unknown or misspelt settings but exits 0.
fn verify_unit(drop_ins: &[&str]) {
    let mut unit = std::fs::read_to_string(repo().join(UNIT)).expect("reading the unit");
    for drop_in in drop_ins {
        unit += &std::fs::read_to_string(repo().join(drop_in)).expect("reading a drop-in");
    }
    // verify checks that ExecStart's program exists: point it at this test binary.
    let exe = std::env::current_exe().expect("the test binary's path");
    let unit = unit.replace(
        "ExecStart=/usr/local/sbin/portproxy",
        &format!("ExecStart={}", exe.display()),
    );
    let dir = std::env::temp_dir().join(format!("portproxy-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    let path = dir.join(format!("portproxy-{}.service", drop_ins.len()));
    std::fs::write(&path, unit).expect("writing the unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("running systemd-analyze (Debian package systemd; cargo xtask setup)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {UNIT} + {drop_ins:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_systemd_unit_verifies() {
    verify_unit(&[]);
    verify_unit(&[FASTPATH_DROP_IN]);
}
