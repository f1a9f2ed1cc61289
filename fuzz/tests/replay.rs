//! Every fuzz target over its seeds (`fuzz/seeds/<target>`), the findings kept after they were
//! fixed (`fuzz/regressions/<target>`), and the repository's fixtures it can take (GeoIP
//! databases, the starts of FLAC masters, good and damaged): with the ordinary tests, on
//! stable Rust, so a fixed finding stays fixed without libFuzzer.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};

fn here(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The files in `dir` (none when it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

/// Runs `check` over the target's seeds and regressions, returning what it said of each.
fn replay<T: std::fmt::Debug>(target: &str, check: fn(&[u8]) -> T) -> Vec<(String, T)> {
    let mut inputs = files(&here(&format!("seeds/{target}")));
    inputs.extend(files(&here(&format!("regressions/{target}"))));
    inputs
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let said = check(&std::fs::read(path).unwrap());
            eprintln!("{target}/{name}: {said:?}");
            (name, said)
        })
        .collect()
}

fn said<'a, T>(results: &'a [(String, T)], name: &str) -> &'a T {
    &results.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn h1_head() {
    let heads = replay("h1_head", cadenza_fuzz::h1_head);
    assert!(heads.iter().filter(|(_, accepted)| *accepted).count() >= 3);
}

#[test]
fn h1_conn() {
    let conns = replay("h1_conn", cadenza_fuzz::h1_conn);
    // Four pipelined requests, the last closing; a ranged GET, then a POST with a body
    // (refused, and answered); a bare HTTP/1.0 GET.
    assert_eq!(*said(&conns, "pipelined"), 4);
    assert_eq!(*said(&conns, "body_refused"), 2);
    assert_eq!(*said(&conns, "http10"), 1);
    // A head over the 4,096-byte limit gets its 431; one of exactly 4,096 bytes is served,
    // and so is the request after it.
    assert_eq!(*said(&conns, "long_head"), 1);
    assert_eq!(*said(&conns, "head_at_limit"), 2);
}

#[test]
fn ranges() {
    assert!(replay("ranges", cadenza_fuzz::ranges).len() >= 2);
}

#[test]
fn proxy_header() {
    let headers = replay("proxy_header", cadenza_fuzz::proxy_header);
    let source = |name: &str| match said(&headers, name) {
        Ok(Some(header)) => header.source.map(|s| s.to_string()),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(source("v1_tcp4").as_deref(), Some("81.2.69.142:56324"));
    assert_eq!(source("v1_tcp6").as_deref(), Some("[2001:218::1]:1234"));
    assert_eq!(source("v1_unknown"), None);
    assert_eq!(
        source("v2_tcp4_tlv").as_deref(),
        Some("89.160.20.112:40000")
    );
    assert_eq!(source("v2_tcp6").as_deref(), Some("[2001:218::1]:40000"));
    assert_eq!(source("v2_local"), None);
    assert!(said(&headers, "client_hello").is_err());
}

#[test]
fn client_fields() {
    assert!(!replay("client_fields", cadenza_fuzz::client_fields).is_empty());
}

#[test]
fn geoip() {
    replay("geoip", cadenza_fuzz::geoip);
    let dir = here("../tests/fixtures/geoip");
    let load = |name: &str| cadenza_fuzz::geoip(&std::fs::read(dir.join(name)).unwrap());
    // The good databases load and place some of the probes; the broken ones are refused.
    assert!(load("GeoIP2-Country-Test.mmdb").is_some_and(|found| found >= 2));
    assert!(load("GeoLite2-Country-Test.mmdb").is_some());
    for broken in [
        "MaxMind-DB-test-broken-pointers-24.mmdb",
        "MaxMind-DB-test-broken-search-tree-24.mmdb",
        "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
    ] {
        assert_eq!(load(broken), None, "{broken}");
    }
}

#[test]
fn master() {
    // A quarter or a twentieth of a second in each container and codec the transcoder takes
    // (WAV, AIFF, FLAC, MP3, Ogg Vorbis, AAC and ALAC in MP4), made with ffmpeg: all decode.
    for (name, frames) in replay("master", cadenza_fuzz::master) {
        if !name.starts_with("crash-") {
            assert!(frames.is_some_and(|n| n > 1000), "{name}: {frames:?}");
        }
    }
    let masters: Vec<PathBuf> = files(&here("../tests/fixtures/flac"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "flac"))
        .collect();
    assert!(masters.len() >= 3);
    let mut decoded = 0;
    for path in masters {
        let bytes = std::fs::read(&path).unwrap();
        // Whole, and cut where a fuzzer's seed is cut.
        let whole = cadenza_fuzz::master(&bytes);
        let start = cadenza_fuzz::master(&bytes[..bytes.len().min(32 * 1024)]);
        eprintln!(
            "master: {}: {whole:?}, first 32 KiB {start:?}",
            path.display()
        );
        decoded += whole.unwrap_or(0);
    }
    assert!(decoded > 500_000, "{decoded} frames from the good masters");
}

#[test]
fn tls_hello() {
    let hellos = replay("tls_hello", cadenza_fuzz::tls_hello);
    // rustls's own ClientHellos, one offering h2 and one not, read as such.
    assert_eq!(*said(&hellos, "h2"), Some(true));
    assert_eq!(*said(&hellos, "h1"), Some(false));
}

#[test]
fn tus_headers() {
    let uploads = replay("tus_headers", cadenza_fuzz::tus_headers);
    assert!(*said(&uploads, "all"));
    assert!(!*said(&uploads, "refused"), "a repeated key is refused");
}

#[test]
fn coalesce() {
    let scripts = replay("coalesce", cadenza_fuzz::coalesce);
    // Deferring: 640 and 3,200 bytes held; a 96,000-byte write finds the socket taking 9
    // bytes, then none, so it waits (not taken) and the held bytes go at the next send; then
    // 160 more.
    assert_eq!(*said(&scripts, "deferred"), 4000);
    // Not deferring: each write goes through as far as the socket takes it.
    assert_eq!(*said(&scripts, "direct"), 195);
}

#[test]
fn tls_conn() {
    let conns = replay("tls_conn", cadenza_fuzz::tls_conn);
    // As `h1_conn`'s seeds, over TLS: small records in small segments, and large ones.
    assert_eq!(*said(&conns, "pipelined"), 4);
    assert_eq!(*said(&conns, "big_records"), 4);
    assert_eq!(*said(&conns, "body_refused"), 2);
    assert_eq!(*said(&conns, "http10"), 1);
}

#[test]
fn h3_request() {
    let requests = replay("h3_request", cadenza_fuzz::h3_request);
    let answered = |name: &str| said(&requests, name).unwrap_or(0);
    // With the seeds' token the edge serves the object through its cache: 5,000 bytes of a
    // range, the whole 10,000, a HEAD (headers only), a suffix range even with DATA after
    // the headers; without one, a short 403.
    assert!(answered("ranged_get") > 5000, "{requests:?}");
    assert!(answered("whole_get") > 10_000, "{requests:?}");
    assert!((1..500).contains(&answered("head")), "{requests:?}");
    assert!((1..500).contains(&answered("no_token")), "{requests:?}");
}

#[test]
fn h3_control() {
    let streams = replay("h3_control", cadenza_fuzz::h3_control);
    assert_eq!(*said(&streams, "settings_then_grease"), None);
    assert_eq!(
        *said(&streams, "long_reserved_frame"),
        Some((0x21, 1 << 30))
    );
    // A 16-byte frame at a bound of 19 passes; the 20-byte one after it, in two-byte
    // varints, does not.
    assert_eq!(*said(&streams, "long_after_short"), Some((0x21, 20)));
    assert_eq!(*said(&streams, "qpack_encoder"), None);
}
