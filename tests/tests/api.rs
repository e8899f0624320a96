//! The JSON API and the web page on the CPE's LAN address, from real clients: curl for the
//! API (every endpoint, every refusal), headless Chromium over WebDriver for the page.
//!
//! A refused request must change nothing: after every refusal the mapping is still at the
//! CGN, in the table and in the firewall. The WAN side (the CGN, the internet host) must
//! not reach the API at all. The API scenario runs on every data path and both softwire
//! kinds; see `api_web_page` and `api_read_only` for why those run on fewer.

#[macro_use]
mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{check_mapping, natpmpc_map, with_lab};
use serde_json::Value;
use tests::{
    CPE_SOFTWIRE_IP, CgnKind, Daemon, DataPath, LAN1_IP, Lab, Netns, PUBLIC_IP, Softwire,
    SoftwireStage, show_output,
};

const API_PORT: u16 = 8351;
const PASSWORD: &str = "correct horse battery staple";
/// The page's own origin, as a browser on the LAN sends it.
const ORIGIN: &str = "http://192.168.1.1:8351";
const JSON: &str = "Content-Type: application/json";

fn url(path: &str) -> String {
    format!("{ORIGIN}{path}")
}

/// One answer: status, head (lower-cased) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("not JSON ({}):\n{}", self.status, self.body))
    }

    /// The answer must have `status` and a JSON error whose message holds `needle`.
    fn refused(&self, status: u16, needle: &str) -> Result<()> {
        let error = self.json()?["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(
            self.status == status && error.contains(needle),
            "expected {status} with an error about {needle:?}, got {}:\n{}",
            self.status,
            self.body
        );
        Ok(())
    }
}

/// `curl -X METHOD ARGS URL` in `ns`; the answer, or an error when there is none.
fn curl(ns: &Netns, method: &str, url: &str, args: &[&str]) -> Result<Answer> {
    let mut all = vec![
        "-sS",
        "-i",
        "--connect-timeout",
        "3",
        "--max-time",
        "10",
        "-X",
        method,
    ];
    all.extend_from_slice(args);
    all.push(url);
    let output = ns.output("curl", &all, Duration::from_secs(15))?;
    ensure!(
        output.status.success(),
        "`curl {}` in {} got no answer:\n{}",
        all.join(" "),
        ns.role(),
        show_output(&output)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    Ok(Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// `curl` in `ns` to `url`, which must not answer (nothing listens there for `ns`).
fn unreachable(ns: &Netns, url: &str) -> Result<()> {
    let args = ["-sS", "--connect-timeout", "3", "--max-time", "5", url];
    let output = ns.output("curl", &args, Duration::from_secs(10))?;
    ensure!(
        !output.status.success() && output.stdout.is_empty(),
        "{} reached the API at {url}:\n{}",
        ns.role(),
        show_output(&output)
    );
    Ok(())
}

fn bearer(password: &str) -> String {
    format!("Authorization: Bearer {password}")
}

/// Logs in from `ns` as the page does; the cookie goes to `jar`.
fn login(ns: &Netns, jar: &Path, password: &str) -> Result<Answer> {
    let body = serde_json::json!({ "password": password }).to_string();
    let jar = jar.to_str().context("lab dir is not UTF-8")?;
    curl(
        ns,
        "POST",
        &url("/api/login"),
        &[
            "-c",
            jar,
            "-H",
            &format!("Origin: {ORIGIN}"),
            "-H",
            JSON,
            "--data",
            &body,
        ],
    )
}

/// Runs portproxy with the API's password and a leases file naming lan1 `nas`, in a lab
/// behind the fw4-like firewall, then `test`; prints portproxy's log on failure.
fn with_api(
    softwire: Softwire,
    path: DataPath,
    password: bool,
    test: impl FnOnce(&mut Lab, &mut Daemon) -> Result<()>,
) -> Result<()> {
    with_api_at(softwire, path, CgnKind::Everything, password, test)
}

/// `with_api` with a CGN that speaks `kind`.
fn with_api_at(
    softwire: Softwire,
    path: DataPath,
    kind: CgnKind,
    password: bool,
    test: impl FnOnce(&mut Lab, &mut Daemon) -> Result<()>,
) -> Result<()> {
    with_api_from(softwire, path, kind, password, None, test)
}

/// `with_api_at`, with the CPE's softwire only at `stage` when portproxy starts (`None`:
/// complete); then portproxy is started once it says what it waits for.
fn with_api_from(
    softwire: Softwire,
    path: DataPath,
    kind: CgnKind,
    password: bool,
    stage: Option<SoftwireStage>,
    test: impl FnOnce(&mut Lab, &mut Daemon) -> Result<()>,
) -> Result<()> {
    with_lab(Lab::builder(softwire).cgn(kind).cpe_firewall(), |lab| {
        let password_file = lab.dir().join("api-password");
        std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
        let leases = lab.dir().join("dhcp.leases");
        std::fs::write(
            &leases,
            format!("4102444800 02:00:00:00:00:02 {LAN1_IP} nas 01:02:00:00:00:00:02\n"),
        )?;
        let mut args = vec!["--lan-iface", "br-lan", "--wan-iface", "softwire", "-vv"];
        args.extend(["--leases-file", leases.to_str().context("lab dir")?]);
        if password {
            args.extend([
                "--api-password-file",
                password_file.to_str().context("lab dir")?,
            ]);
        }
        if let Some(stage) = stage {
            lab.undo_softwire(stage)?;
        }
        let started = if stage.is_some() {
            "waiting for"
        } else {
            "ready:"
        };
        let mut portproxy = lab.spawn_portproxy_on_until(path, &args, started)?;
        let result =
            test(lab, &mut portproxy).and_then(|()| lab.check_data_path(&portproxy, path, &[]));
        if result.is_err() {
            eprintln!("=== portproxy log\n{}", portproxy.log());
        }
        result
    })
}

/// The CGN's NAT rule for TCP `external` -> `host:internal`, present or not.
fn at_cgn(lab: &Lab, external: u16, internal: u16) -> Result<bool> {
    let out = lab.cgn().run("nft", &["list", "table", "inet", "nat"])?;
    let ruleset = String::from_utf8_lossy(&out.stdout);
    Ok(ruleset.contains(&format!("dport {external} dnat ip to {LAN1_IP}:{internal}")))
}

/// The mapping of lan1's TCP `internal` is everywhere it should be: at the CGN, in the API's
/// list and in the firewall.
fn still_mapped(lab: &Lab, external: u16, internal: u16) -> Result<()> {
    ensure!(at_cgn(lab, external, internal)?, "the CGN lost {external}");
    let listed = curl(lab.lan(1), "GET", &url("/api/mappings"), &[])?.json()?;
    ensure!(
        find(&listed, internal).is_some(),
        "the API no longer lists {internal}:\n{listed:#}"
    );
    ensure!(
        lab.holes()?.iter().any(|h| h.port == internal),
        "the hole for {internal} closed"
    );
    Ok(())
}

/// lan1's mapping of TCP `internal` in a mappings list.
fn find(list: &Value, internal: u16) -> Option<&Value> {
    list.as_array()?.iter().find(|m| {
        m["host"] == LAN1_IP.to_string() && m["internal_port"] == internal && m["protocol"] == "tcp"
    })
}

/// The mapping of lan1's TCP `internal` is gone: from the CGN, the table and the firewall.
fn gone(lab: &Lab, external: u16, internal: u16) -> Result<()> {
    ensure!(
        !at_cgn(lab, external, internal)?,
        "the CGN still maps {external}"
    );
    ensure!(
        find(&lab.portproxy_mappings()?, internal).is_none(),
        "portproxy still has {internal}"
    );
    ensure!(
        !lab.holes()?.iter().any(|h| h.port == internal),
        "the hole for {internal} is still open"
    );
    Ok(())
}

every_path!(api_endpoints);

/// Every endpoint, every refusal, deletes by the page's session and by a script's token.
fn api_endpoints(softwire: Softwire, path: DataPath) -> Result<()> {
    with_api(softwire, path, true, |lab, portproxy| {
        let (lan1, lan2) = (lab.lan(1), lab.lan(2));
        let jar = lab.dir().join("cookies");
        let (authorization, page_origin) = (bearer(PASSWORD), format!("Origin: {ORIGIN}"));

        // Status: the softwire, the CGN and what it speaks, the data path.
        let answer = curl(lan1, "GET", &url("/api/status"), &[])?;
        ensure!(answer.status == 200, "status: {}", answer.body);
        ensure!(
            answer
                .head
                .contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "no strict CSP:\n{}",
            answer.head
        );
        let status = answer.json()?;
        let data_path = match path {
            DataPath::FastPath => "fast_path",
            DataPath::Sockets | DataPath::Fallback => "sockets",
        };
        let kind = match softwire {
            Softwire::L2 => "veth",
            Softwire::L3 => "tun",
        };
        for (field, expected) in [
            (&status["state"], "relaying"),
            (&status["data_path"], data_path),
            (&status["mode"], "auto"),
            (&status["lan"]["address"], "192.168.1.1/24"),
            (&status["wan"]["iface"], "softwire"),
            (&status["softwire"]["kind"], kind),
            (&status["cgn_address"], "192.0.0.1"),
            (&status["version"], env!("CARGO_PKG_VERSION")),
        ] {
            ensure!(
                field == expected,
                "status: {field} is not {expected}:\n{status:#}"
            );
        }
        ensure!(
            status["wan"]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{CPE_SOFTWIRE_IP}/"))),
            "status: WAN address:\n{status:#}"
        );
        ensure!(
            status["cgn_speaks"]["pcp"] == true && status["started"].as_u64() > Some(0),
            "status: what the CGN speaks, up since:\n{status:#}"
        );

        // Counters: what `portproxy stats --json` shows.
        let counters = curl(lan1, "GET", &url("/api/counters"), &[])?.json()?;
        let stats = lab.portproxy_stats(portproxy)?;
        let ids = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect()
        };
        ensure!(
            !ids(&counters["counters"]).is_empty()
                && ids(&counters["counters"]) == ids(&stats["counters"]),
            "the API's counters are not `portproxy stats --json`'s:\n{counters:#}\n{stats:#}"
        );

        // Mappings: natpmpc's shows up, named from the leases, as `portproxy mappings` has it.
        natpmpc_map(lan1, 9080, 8080)?;
        let listed = curl(lan1, "GET", &url("/api/mappings"), &[])?.json()?;
        let mapping = find(&listed, 8080).with_context(|| format!("not listed:\n{listed:#}"))?;
        let cli = lab.portproxy_mappings()?;
        let cli = find(&cli, 8080).context("not in portproxy mappings")?;
        for field in [
            "external_address",
            "external_port",
            "origin",
            "upstream",
            "client",
        ] {
            ensure!(
                mapping[field] == cli[field],
                "{field}: {mapping:#} vs {cli:#}"
            );
        }
        ensure!(
            mapping["external_port"] == 9080 && mapping["host_name"] == "nas",
            "{mapping:#}"
        );

        // The page and its assets.
        let page = curl(lan1, "GET", &url("/"), &[])?;
        ensure!(
            page.status == 200
                && page.head.contains("content-type: text/html")
                && page.body.contains("<script src=\"/app.js\""),
            "the page: {}\n{}",
            page.head,
            page.body
        );
        ensure!(curl(lan1, "GET", &url("/app.js"), &[])?.status == 200);
        ensure!(curl(lan1, "GET", &url("/style.css"), &[])?.status == 200);

        // No credentials, wrong ones, and no login with them.
        let delete = url("/api/mappings/192.168.1.2/tcp/8080");
        curl(lan1, "DELETE", &delete, &[])?.refused(401, "log in first")?;
        curl(lan1, "DELETE", &delete, &["-H", &bearer("guess")])?.refused(401, "log in")?;
        login(lan1, &jar, "guess")?.refused(401, "wrong password")?;
        let jar_arg = ["-b", jar.to_str().context("lab dir")?];
        let session = curl(lan1, "GET", &url("/api/session"), &jar_arg)?.json()?;
        ensure!(
            session["logged_in"] == false,
            "a wrong password logged in: {session}"
        );
        // Bad bodies.
        let post = |args: &[&str]| curl(lan1, "POST", &url("/api/login"), args);
        post(&["--data", "{\"password\":\"x\"}"])?.refused(415, "application/json")?;
        post(&["-H", JSON, "--data", "password=x"])?.refused(400, "not the JSON expected")?;
        post(&["-H", JSON, "--data", "{\"password\":\"x\",\"admin\":true}"])?
            .refused(400, "unknown field")?;
        let long = format!("{{\"password\":\"{}\"}}", "x".repeat(2000));
        post(&["-H", JSON, "--data", &long])?.refused(413, "longer than")?;
        still_mapped(lab, 9080, 8080)?;

        // A login gives a session cookie the browser keeps to this site and from scripts.
        let answer = login(lan1, &jar, PASSWORD)?;
        ensure!(answer.status == 200, "login: {}", answer.body);
        let cookie = answer
            .head
            .lines()
            .find(|l| l.starts_with("set-cookie:"))
            .with_context(|| format!("no cookie:\n{}", answer.head))?;
        ensure!(
            cookie.contains("httponly") && cookie.contains("samesite=strict"),
            "{cookie}"
        );
        let session = curl(
            lan1,
            "GET",
            &url("/api/session"),
            &["-b", jar.to_str().unwrap()],
        )?;
        ensure!(session.json()?["logged_in"] == true, "{}", session.body);

        // CSRF: the cookie from another site's page, or with no Origin at all; DNS
        // rebinding: another name in Host, for reading as for changing.
        let with_cookie = ["-b", jar.to_str().unwrap()];
        let foreign = [&with_cookie[..], &["-H", "Origin: http://evil.example"]].concat();
        curl(lan1, "DELETE", &delete, &foreign)?.refused(403, "own page")?;
        curl(lan1, "DELETE", &delete, &with_cookie)?.refused(401, "log in first")?;
        let rebound = ["-H", "Host: evil.example:8351"];
        curl(lan1, "GET", &url("/api/mappings"), &rebound)?.refused(403, "not this router")?;
        let rebound_change = [&rebound[..], &["-H", &authorization]].concat();
        curl(lan1, "DELETE", &delete, &rebound_change)?.refused(403, "not this router")?;
        curl(lan1, "GET", &url("/"), &["-H", "Host: 192.168.1.1"])?
            .refused(403, "not this router")?;

        // Bad input with good credentials.
        let token = ["-H", &authorization];
        let other = |path: &str| url(&format!("/api/mappings/{path}"));
        curl(lan1, "DELETE", &other("192.168.1.2/sctp/8080"), &token)?
            .refused(400, "HOST/PROTOCOL/PORT")?;
        curl(lan1, "DELETE", &other("192.168.1.2/tcp/99999"), &token)?
            .refused(400, "HOST/PROTOCOL/PORT")?;
        curl(lan1, "DELETE", &other("192.168.1.2/tcp/8081"), &token)?.refused(404, "no mapping")?;
        curl(lan1, "POST", &url("/api/mappings"), &token)?.refused(405, "GET only")?;
        curl(lan1, "GET", &url("/api/nothing"), &[])?.refused(404, "no such endpoint")?;
        still_mapped(lab, 9080, 8080)?;

        api_forwards(lab, &with_cookie, &authorization)?;

        // The page's delete: its session, from its origin.
        let from_page = [&with_cookie[..], &["-H", &page_origin]].concat();
        let answer = curl(lan1, "DELETE", &delete, &from_page)?;
        ensure!(answer.status == 200, "delete: {}", answer.body);
        ensure!(answer.json()?["at_cgn"] == "deleted", "{}", answer.body);
        gone(lab, 9080, 8080)?;

        // A script's delete: the password as a bearer token.
        natpmpc_map(lan1, 9081, 8081)?;
        let answer = curl(lan1, "DELETE", &other("192.168.1.2/tcp/8081"), &token)?;
        ensure!(
            answer.status == 200 && answer.json()?["at_cgn"] == "deleted",
            "delete: {}",
            answer.body
        );
        gone(lab, 9081, 8081)?;

        // A logout ends the session.
        ensure!(curl(lan1, "POST", &url("/api/logout"), &from_page)?.status == 200);
        curl(lan1, "DELETE", &delete, &from_page)?.refused(401, "log in first")?;

        // Guessing is limited: five tries a minute per host, then even the password waits.
        let jar2 = lab.dir().join("cookies2");
        for _ in 0..5 {
            login(lan2, &jar2, "guess")?.refused(401, "wrong password")?;
        }
        let limited = login(lan2, &jar2, PASSWORD)?;
        limited.refused(429, "too many login attempts")?;
        ensure!(limited.head.contains("retry-after:"), "{}", limited.head);

        // The WAN side reaches nothing: not the LAN address through the CPE, not its WAN
        // address, not the public address.
        unreachable(lab.cgn(), &url("/api/status"))?;
        unreachable(
            lab.cgn(),
            &format!("http://{CPE_SOFTWIRE_IP}:{API_PORT}/api/status"),
        )?;
        unreachable(
            lab.inet(),
            &format!("http://{PUBLIC_IP}:{API_PORT}/api/status"),
        )?;
        Ok(())
    })
}

/// A forward's body as the page sends it.
fn forward_spec(internal: u16, external: Option<u16>, description: &str) -> String {
    serde_json::json!({
        "host": LAN1_IP, "internal_port": internal, "protocol": "tcp",
        "external_port": external, "description": description,
    })
    .to_string()
}

/// The forwards in `GET /api/forwards`, open to every LAN host.
fn forwards_listed(lab: &Lab) -> Result<Value> {
    let answer = curl(lab.lan(2), "GET", &url("/api/forwards"), &[])?;
    ensure!(answer.status == 200, "forwards: {}", answer.body);
    answer.json()
}

/// Waits until the API lists lan1's TCP forward of `internal` as active at the public
/// `external` port; then the internet host must reach it there.
fn forward_active(lab: &Lab, internal: u16, external: u16) -> Result<()> {
    let start = Instant::now();
    loop {
        let list = forwards_listed(lab)?;
        let status = find(&list, internal).map(|f| f["status"].clone());
        if let Some(status) = status.filter(|s| s["state"] == "active") {
            ensure!(
                status["external"] == format!("{PUBLIC_IP}:{external}"),
                "{status:#}"
            );
            return check_mapping(lab, external, lab.lan(1), internal);
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the forward of {internal} is not active:\n{list:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The forward endpoints (part of `api_endpoints`, with the session in `with_cookie`): every
/// refusal changes nothing; add, list, change and delete with the password as a token.
/// natpmpc's mapping of 8080 is there.
fn api_forwards(lab: &Lab, with_cookie: &[&str], authorization: &str) -> Result<()> {
    let lan1 = lab.lan(1);
    let forwards = url("/api/forwards");
    let one = url("/api/forwards/192.168.1.2/tcp/8301");
    let spec = forward_spec(8301, Some(9301), "web server");
    let send = |method: &str, url: &str, extra: &[&str], body: &str| {
        curl(
            lan1,
            method,
            url,
            &[extra, &["-H", JSON, "--data", body]].concat(),
        )
    };
    let token = ["-H", authorization];

    // No credentials, another site's page, the cookie without the page's Origin.
    let foreign = [with_cookie, &["-H", "Origin: http://evil.example"]].concat();
    for (method, target) in [("POST", &forwards), ("PUT", &one)] {
        send(method, target, &[], &spec)?.refused(401, "log in first")?;
        send(method, target, &foreign, &spec)?.refused(403, "own page")?;
        send(method, target, with_cookie, &spec)?.refused(401, "log in first")?;
    }
    curl(lan1, "DELETE", &one, &[])?.refused(401, "log in first")?;
    curl(lan1, "DELETE", &one, &foreign)?.refused(403, "own page")?;

    // Bad input with good credentials.
    for (body, status, needle) in [
        (forward_spec(0, None, ""), 400, "internal port 0"),
        (forward_spec(8301, Some(0), ""), 400, "external port 0"),
        (
            spec.replace("\"tcp\"", "\"sctp\""),
            400,
            "expected tcp or udp",
        ),
        (
            spec.replace("192.168.1.2", "10.9.9.9"),
            400,
            "not a host of the LAN",
        ),
        (
            spec.replace("192.168.1.2", "192.168.1.1"),
            400,
            "not a host of the LAN",
        ),
        (forward_spec(8301, None, "a\nb"), 400, "control characters"),
        (
            forward_spec(8301, None, &"x".repeat(300)),
            400,
            "at most 256",
        ),
        (
            forward_spec(8080, None, ""),
            409,
            "mapped by the host itself",
        ),
        (spec.replace("}", ",\"admin\":true}"), 400, "unknown field"),
        (
            spec.replace("8301", "\"8301\""),
            400,
            "not the JSON expected",
        ),
        ("[]".to_string(), 400, "not the JSON expected"),
        (
            format!("{{\"description\":\"{}\"}}", "x".repeat(2000)),
            413,
            "longer than",
        ),
    ] {
        send("POST", &forwards, &token, &body)?.refused(status, needle)?;
    }
    curl(
        lan1,
        "POST",
        &forwards,
        &[&token[..], &["--data", &spec]].concat(),
    )?
    .refused(415, "application/json")?;
    send("PUT", &one, &token, &spec)?.refused(404, "no forward")?;
    curl(lan1, "DELETE", &one, &token)?.refused(404, "no forward")?;
    curl(
        lan1,
        "DELETE",
        &url("/api/forwards/192.168.1.2/tcp/x"),
        &token,
    )?
    .refused(400, "HOST/PROTOCOL/PORT")?;
    curl(lan1, "PATCH", &one, &token)?.refused(405, "PUT, DELETE")?;
    let listed = forwards_listed(lab)?;
    ensure!(
        listed == serde_json::json!([]),
        "a refusal stored:\n{listed:#}"
    );
    still_mapped(lab, 9080, 8080)?;

    // Add: active at the CGN and reachable from the internet through the CPE's firewall.
    let answer = send("POST", &forwards, &token, &spec)?;
    ensure!(answer.status == 201, "add: {}", answer.body);
    forward_active(lab, 8301, 9301)?;
    send("POST", &forwards, &token, &spec)?.refused(409, "already")?;
    let other = forward_spec(8302, Some(9301), "");
    send("POST", &forwards, &token, &other)?.refused(409, "wants external port 9301")?;

    // Change: to another external port; the CGN follows.
    let changed = forward_spec(8301, Some(9302), "moved");
    let answer = send("PUT", &one, &token, &changed)?;
    ensure!(answer.status == 200, "change: {}", answer.body);
    let listed = forwards_listed(lab)?;
    let forward = find(&listed, 8301).with_context(|| format!("not listed:\n{listed:#}"))?;
    ensure!(
        forward["external_port"] == 9302 && forward["description"] == "moved",
        "{forward:#}"
    );
    forward_active(lab, 8301, 9302)?;

    // Delete: gone from the list, the CGN and the firewall.
    let answer = curl(lan1, "DELETE", &one, &token)?;
    ensure!(answer.status == 200, "delete: {}", answer.body);
    ensure!(
        forwards_listed(lab)? == serde_json::json!([]),
        "still listed"
    );
    gone_within(lab, 9302, 8301)?;
    still_mapped(lab, 9080, 8080)
}

/// `gone`, waited for (a forward's mapping leaves the CGN within a moment of its delete).
fn gone_within(lab: &Lab, external: u16, internal: u16) -> Result<()> {
    let start = Instant::now();
    loop {
        match gone(lab, external, internal) {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

every_path!(api_delete_proxied);

/// A mapping portproxy made itself: the CGN speaks PCP only, so natpmpc's request is answered
/// here and mapped with PCP. The API's delete goes to the CGN in PCP, with the nonce that
/// made the mapping (a relayed one, in `api_endpoints`, goes as the client's own NAT-PMP).
fn api_delete_proxied(softwire: Softwire, path: DataPath) -> Result<()> {
    with_api_at(softwire, path, CgnKind::PcpOnly, true, |lab, _| {
        let lan1 = lab.lan(1);
        natpmpc_map(lan1, 9080, 8080)?;
        let listed = curl(lan1, "GET", &url("/api/mappings"), &[])?.json()?;
        let mapping = find(&listed, 8080).with_context(|| format!("not listed:\n{listed:#}"))?;
        ensure!(mapping["upstream"] == "pcp-map", "{mapping:#}");
        still_mapped(lab, 9080, 8080)?;
        let token = bearer(PASSWORD);
        let delete = url("/api/mappings/192.168.1.2/tcp/8080");
        let answer = curl(lan1, "DELETE", &delete, &["-H", &token])?;
        ensure!(
            answer.status == 200 && answer.json()?["at_cgn"] == "deleted",
            "delete: {}",
            answer.body
        );
        gone(lab, 9080, 8080)
    })
}

/// Polls `GET /api/status` at `origin` from lan1 until its state is `want` (at most 10 s;
/// no answer counts as not yet); returns the status. Relaying counts once the data path
/// is built: a rebuild keeps the state but has no CGN for the moment.
fn status_becomes(lab: &Lab, origin: &str, want: &str) -> Result<Value> {
    let start = Instant::now();
    loop {
        let last = match curl(lab.lan(1), "GET", &format!("{origin}/api/status"), &[]) {
            Ok(answer) if answer.status == 200 => {
                let status = answer.json()?;
                let built = want != "relaying" || !status["cgn_address"].is_null();
                if status["state"] == want && built {
                    return Ok(status);
                }
                format!("{status:#}")
            }
            Ok(answer) => format!("{}: {}", answer.status, answer.body),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the API's status at {origin} is not {want} within 10 s; last:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where the CPE listens on the API's port (`ADDRESS%DEVICE:PORT`, from `ss`).
fn api_listeners(lab: &Lab) -> Result<Vec<String>> {
    let port = format!("sport = :{API_PORT}");
    let out = lab.cpe().run("ss", &["-Hltn", &port])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| Some(l.split_whitespace().nth(3)?.to_string()))
        .collect())
}

every_path!(api_while_waiting);

/// The API serves whenever the LAN has its address, whatever the softwire does: portproxy
/// starts with the softwire down (as at boot), and the status says what it waits for; a
/// forward added then waits, pending, and becomes active once the softwire is up. With the
/// softwire down again the mappings are still listed, and a delete takes one out of the
/// table and the firewall, saying the CGN was not asked. A new LAN address moves the API
/// there; nothing ever listens on the WAN side.
fn api_while_waiting(softwire: Softwire, path: DataPath) -> Result<()> {
    let down = Some(SoftwireStage::Down);
    with_api_from(softwire, path, CgnKind::Everything, true, down, |lab, _| {
        let lan1 = lab.lan(1);
        let token = ["-H", &bearer(PASSWORD)];
        let lan_only = vec![format!("192.168.1.1%br-lan:{API_PORT}")];

        // Waiting: the status says for what; nothing of the softwire's side is known yet.
        let status = status_becomes(lab, ORIGIN, "waiting_for")?;
        ensure!(
            status["detail"]
                .as_str()
                .is_some_and(|d| d.contains("softwire to come up"))
                && status["data_path"] == "stopped"
                && status["lan"]["address"] == "192.168.1.1/24"
                && status["wan"]["iface"] == "softwire"
                && status["wan"]["address"].is_null()
                && status["cgn_address"].is_null(),
            "status while waiting:\n{status:#}"
        );
        ensure!(api_listeners(lab)? == lan_only, "{:?}", api_listeners(lab)?);
        let page = curl(lan1, "GET", &url("/"), &[])?;
        ensure!(page.status == 200, "the page: {}", page.head);

        // A forward added now is kept, pending, until there is a CGN to ask.
        let spec = forward_spec(8301, Some(9301), "added while waiting");
        let args = [&token[..], &["-H", JSON, "--data", &spec]].concat();
        let answer = curl(lan1, "POST", &url("/api/forwards"), &args)?;
        ensure!(
            answer.status == 201 && answer.json()?["status"]["state"] == "pending",
            "add while waiting: {}",
            answer.body
        );

        // The softwire up: relaying, the forward active, a client's mapping as ever.
        lab.set_softwire_up(true)?;
        let status = status_becomes(lab, ORIGIN, "relaying")?;
        ensure!(
            status["cgn_address"] == "192.0.0.1"
                && status["wan"]["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("{CPE_SOFTWIRE_IP}/"))),
            "status once relaying:\n{status:#}"
        );
        forward_active(lab, 8301, 9301)?;
        natpmpc_map(lan1, 9080, 8080)?;
        still_mapped(lab, 9080, 8080)?;
        ensure!(api_listeners(lab)? == lan_only, "{:?}", api_listeners(lab)?);
        unreachable(
            lab.cgn(),
            &format!("http://{CPE_SOFTWIRE_IP}:{API_PORT}/api/status"),
        )?;

        // Down again: still served, the mappings still listed and held.
        lab.set_softwire_up(false)?;
        status_becomes(lab, ORIGIN, "waiting_for")?;
        still_mapped(lab, 9080, 8080)?;
        let listed = forwards_listed(lab)?;
        let forward = find(&listed, 8301).with_context(|| format!("not listed:\n{listed:#}"))?;
        ensure!(forward["status"]["state"] == "active", "{forward:#}");
        // A delete: out of the table and the firewall; the CGN, out of reach, keeps it until
        // it expires there.
        let delete = url("/api/mappings/192.168.1.2/tcp/8080");
        let answer = curl(lan1, "DELETE", &delete, &token)?;
        ensure!(
            answer.status == 200
                && answer.json()?["at_cgn"] == "not asked: waiting for softwire to come up",
            "delete while waiting: {}",
            answer.body
        );
        ensure!(
            find(&lab.portproxy_mappings()?, 8080).is_none(),
            "portproxy still has 8080"
        );
        ensure!(
            !lab.holes()?.iter().any(|h| h.port == 8080),
            "the hole for 8080 is still open"
        );
        ensure!(at_cgn(lab, 9080, 8080)?, "the CGN was asked without a line");

        // Up again: relaying, and mapping as before.
        lab.set_softwire_up(true)?;
        status_becomes(lab, ORIGIN, "relaying")?;
        natpmpc_map(lan1, 9081, 8081)?;
        still_mapped(lab, 9081, 8081)?;

        // A new LAN address: the API moves there, and back.
        let cpe = lab.cpe();
        cpe.ip("addr del 192.168.1.1/24 dev br-lan")?;
        cpe.ip("addr add 192.168.1.254/24 dev br-lan")?;
        status_becomes(lab, &format!("http://192.168.1.254:{API_PORT}"), "relaying")?;
        let moved = vec![format!("192.168.1.254%br-lan:{API_PORT}")];
        ensure!(api_listeners(lab)? == moved, "{:?}", api_listeners(lab)?);
        cpe.ip("addr del 192.168.1.254/24 dev br-lan")?;
        cpe.ip("addr add 192.168.1.1/24 dev br-lan")?;
        status_becomes(lab, ORIGIN, "relaying")?;
        ensure!(api_listeners(lab)? == lan_only, "{:?}", api_listeners(lab)?);
        Ok(())
    })
}

both_softwires!(api_read_only: api_read_only_l2, api_read_only_l3);

/// Without a password every change is refused with how to allow it, and `--api 0` turns the
/// API off. The data path plays no part in either (the refusal comes before any mapping is
/// touched), so this runs on sockets only.
fn api_read_only(softwire: Softwire) -> Result<()> {
    with_api(softwire, DataPath::Sockets, false, |lab, portproxy| {
        let lan1 = lab.lan(1);
        natpmpc_map(lan1, 9080, 8080)?;
        let session = curl(lan1, "GET", &url("/api/session"), &[])?.json()?;
        ensure!(session["password_set"] == false, "{session:#}");
        let delete = url("/api/mappings/192.168.1.2/tcp/8080");
        for args in [
            vec!["-H".to_string(), bearer(PASSWORD)],
            vec!["-H".to_string(), bearer("")],
            vec![],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(lan1, "DELETE", &delete, &args)?.refused(403, "--api-password-file")?;
        }
        login(lan1, &lab.dir().join("cookies"), PASSWORD)?.refused(403, "--api-password-file")?;
        still_mapped(lab, 9080, 8080)?;

        // Off: nothing listens on the API's port.
        portproxy.kill()?;
        *portproxy = lab.spawn_portproxy_on(
            DataPath::Sockets,
            &[
                "--lan-iface",
                "br-lan",
                "--wan-iface",
                "softwire",
                "-v",
                "--api",
                "0",
            ],
        )?;
        unreachable(lan1, &url("/api/status"))
    })
}

/// Where the page's screenshots go: `$SCREENSHOTS_DIR` (the README's come from
/// `SCREENSHOTS_DIR=$PWD/docs/page cargo xtask test -- api_web_page`), else the lab's directory.
fn screenshot_dir(lab: &Lab) -> PathBuf {
    std::env::var_os("SCREENSHOTS_DIR").map_or_else(|| lab.dir().to_path_buf(), PathBuf::from)
}

/// chromedriver in a namespace, on its loopback; stopped on drop.
struct ChromeDriver(Child);

const DRIVER_PORT: u16 = 9515;
/// How long chromedriver and Chromium get to start, and the page to show a change: the
/// page polls every 2 s.
const BROWSER_WAIT: Duration = Duration::from_secs(30);

impl ChromeDriver {
    fn start(ns: &Netns, log: &Path) -> Result<ChromeDriver> {
        let child = ns
            .command("chromedriver")
            .arg(format!("--port={DRIVER_PORT}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (cargo xtask setup installs it)")?;
        let driver = ChromeDriver(child);
        let start = Instant::now();
        while ns.enter(|| std::net::TcpStream::connect(("127.0.0.1", DRIVER_PORT)).is_err())? {
            if start.elapsed() > BROWSER_WAIT {
                bail!("chromedriver did not listen on {DRIVER_PORT} within {BROWSER_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(driver)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The page in headless Chromium, driven over WebDriver from lan1: log in, see natpmpc's
/// mapping in the table (named from the leases), delete it with its button, see it gone
/// from the page and from the CGN; add a manual forward with the form, see it active and
/// reach it from the internet host, delete it, see it gone at the CGN. Screenshots of the
/// page (with both) on a desktop and a phone.
///
/// Once, on sockets and the L2 softwire: the page only shows and asks the API, whose answers
/// `api_endpoints` checks on every data path and softwire; Chromium is the heaviest peer of
/// the suite on a 2-core machine.
#[test]
fn api_web_page() -> Result<()> {
    with_api(Softwire::L2, DataPath::Sockets, true, |lab, _| {
        let lan1 = lab.lan(1);
        natpmpc_map(lan1, 9080, 8080)?;
        let shots = screenshot_dir(lab);
        let profile = lab.dir().join("chromium");
        let _driver = ChromeDriver::start(lan1, &lab.dir().join("chromedriver.log"))?;
        let lab: &Lab = lab;
        let reachable = || check_mapping(lab, 9301, lan1, 8301);
        let forward_gone = || gone_within(lab, 9301, 8301);
        lan1.enter(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drive_page(&shots, &profile, &reachable, &forward_gone))
        })??;
        gone(lab, 9080, 8080)
    })
}

/// `reachable` checks the page's forward (lan1's TCP 8301 at 9301) from the internet host,
/// `forward_gone` that it is gone at the CGN and in the firewall.
async fn drive_page(
    shots: &Path,
    profile: &Path,
    reachable: &(dyn Fn() -> Result<()> + Sync),
    forward_gone: &(dyn Fn() -> Result<()> + Sync),
) -> Result<()> {
    use fantoccini::{ClientBuilder, Locator};
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                // As root in a namespace: Chromium's sandbox needs user namespaces of its own.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{DRIVER_PORT}"))
        .await
        .context("a WebDriver session with headless Chromium")?;
    let result = async {
        browser.goto(&url("/")).await?;
        let wait = || browser.wait().at_most(BROWSER_WAIT);
        // Log in with the labelled password field.
        let field = wait()
            .for_element(Locator::Css("#login input[type=password]"))
            .await
            .context("no password field")?;
        ensure!(
            browser
                .find(Locator::Css("label[for=password]"))
                .await?
                .text()
                .await?
                == "Password",
            "the password field has no label"
        );
        field.send_keys(PASSWORD).await?;
        browser
            .find(Locator::Css("#login button[type=submit]"))
            .await?
            .click()
            .await?;
        let logged_in = browser.find(Locator::Id("logged-in")).await?;
        wait_until(BROWSER_WAIT, "the page to say logged in", || {
            logged_in.is_displayed()
        })
        .await?;
        // natpmpc's mapping, named from the leases, with an enabled delete button.
        let button = Locator::Css("button[aria-label='Delete mapping 192.168.1.2:8080 tcp']");
        let delete = wait()
            .for_element(button)
            .await
            .context("no row for the mapping")?;
        let row = browser
            .find(Locator::XPath(
                "//table[@id='mappings']/tbody/tr[td='192.168.1.2']",
            ))
            .await?
            .text()
            .await?;
        ensure!(
            row.contains("nas") && row.contains("203.0.114.1:9080") && row.contains("nat-pmp"),
            "the row shows {row:?}"
        );
        wait_until(BROWSER_WAIT, "the delete button to be enabled", || {
            delete.is_enabled()
        })
        .await?;
        // Something for the counters' chart (NAT-PMP requests relayed, its first choice) to
        // draw over a few polls: public address requests, four a second.
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        for _ in 0..24 {
            socket.send_to(&[0, 0], ("192.168.1.1", 5351)).await?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // A manual forward, with the form's labelled fields.
        for (id, label, value) in [
            ("fw-host", "LAN host address", "192.168.1.2"),
            ("fw-port", "Internal port", "8301"),
            ("fw-external", "External port (empty: any)", "9301"),
            ("fw-description", "Description", "web server"),
        ] {
            let shown = browser
                .find(Locator::Css(&format!("label[for={id}]")))
                .await?
                .text()
                .await?;
            ensure!(shown == label, "the field {id} is labelled {shown:?}");
            browser
                .find(Locator::Id(id))
                .await?
                .send_keys(value)
                .await?;
        }
        browser
            .find(Locator::Id("fw-submit"))
            .await?
            .click()
            .await?;
        let active = wait()
            .for_element(Locator::Css(
                "tr[data-forward='192.168.1.2/tcp/8301'] td.status.active",
            ))
            .await
            .context("the forward did not become active on the page")?;
        let shown = active.text().await?;
        ensure!(
            shown == format!("active at {PUBLIC_IP}:9301"),
            "the forward's status shows {shown:?}"
        );
        reachable()?;
        std::fs::create_dir_all(shots)?;
        std::fs::write(shots.join("page.png"), browser.screenshot().await?)?;
        browser.set_window_size(390, 1400).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(shots.join("page-phone.png"), browser.screenshot().await?)?;
        browser.set_window_size(1280, 1100).await?;
        // Keyboard: the button takes focus and Enter presses it.
        let enter: char = fantoccini::key::Key::Enter.into();
        delete.send_keys(&enter.to_string()).await?;
        // The forward's own mapping stays: the row of natpmpc's goes.
        wait_until(BROWSER_WAIT, "the mapping's row to go", || async {
            Ok(browser.find_all(button).await?.is_empty())
        })
        .await?;
        let message = browser.find(Locator::Id("message")).await?.text().await?;
        ensure!(
            message.contains("at the CGN: deleted"),
            "the page says {message:?}"
        );
        // The forward's delete, by keyboard too.
        browser
            .find(Locator::Css(
                "button[aria-label='Delete forward 192.168.1.2:8301 tcp']",
            ))
            .await?
            .send_keys(&enter.to_string())
            .await?;
        let none = browser.find(Locator::Id("no-forwards")).await?;
        wait_until(BROWSER_WAIT, "the forwards to empty", || {
            none.is_displayed()
        })
        .await?;
        forward_gone()
    }
    .await;
    let closed = browser.close().await;
    result.and(closed.map_err(Into::into))
}

/// Polls `check` every 200 ms until it holds, for at most `within`.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, fantoccini::error::CmdError>>,
{
    let start = Instant::now();
    while !check().await? {
        if start.elapsed() > within {
            bail!("waited {within:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
