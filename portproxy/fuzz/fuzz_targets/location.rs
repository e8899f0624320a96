//! LOCATION rewriting with arbitrary addresses: never panics, and the output differs from
//! the input in one line at most, a LOCATION line that now names `to` and the returned port.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use portproxy_fuzz::proto::location::rewrite;

fuzz_target!(|input: &[u8]| {
    if input.len() < 9 {
        return;
    }
    let (addrs, datagram) = input.split_at(8);
    let from = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
    // One byte in five: the same address on both sides.
    let to = if addrs[4] % 5 == 0 { from } else { Ipv4Addr::new(addrs[4], addrs[5], addrs[6], addrs[7]) };
    let Some((out, port)) = rewrite(datagram, from, to) else { return };
    let before = std::str::from_utf8(datagram).expect("rewrote a datagram that is not UTF-8");
    let after = std::str::from_utf8(&out).expect("rewrite produced invalid UTF-8");
    let old: Vec<&str> = before.split_inclusive('\n').collect();
    let new: Vec<&str> = after.split_inclusive('\n').collect();
    assert_eq!(old.len(), new.len(), "line count changed:\n{before:?}\n{after:?}");
    let changed: Vec<usize> = (0..old.len()).filter(|&i| old[i] != new[i]).collect();
    assert!(changed.len() <= 1, "lines {changed:?} changed:\n{before:?}\n{after:?}");
    // Exactly one LOCATION line was matched; it may come out byte-identical only if it
    // already was in the rewritten form.
    let line = changed.first().map_or_else(
        || {
            let needle = format!("http://{to}:{port}");
            new.iter().find(|l| l.contains(&needle)).copied().expect("rewritten line not found")
        },
        |&i| new[i],
    );
    let (name, value) = line.split_once(':').expect("LOCATION line without a colon");
    assert!(name.trim().eq_ignore_ascii_case("LOCATION"), "changed a {name:?} line");
    assert!(value.starts_with(&format!(" http://{to}:{port}")), "{line:?}");
    if let Some(i) = changed.first() {
        let (old_name, _) = old[*i].split_once(':').unwrap();
        assert_eq!(old_name, name, "header name changed");
        // The line ending is kept.
        assert_eq!(old[*i].ends_with('\n'), new[*i].ends_with('\n'));
    }
});
