//! The whole path in one process on ephemeral ports: a label ingests a real FLAC master, the
//! transcoder makes three renditions, a player plays each through the edge, and the edge's
//! bytes are checked against the stored objects with our client, curl and ogginfo.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "../../tests/support/get.rs"]
mod get;
#[path = "../../tests/support/peers.rs"]
mod peers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cadenza::ingest::{TrackMeta, ingest_file};
use cadenza::stack::{Stack, StackConfig};
use cadenza_common::http::client::{self, HttpClient};
use cadenza_common::http::empty;
use cadenza_common::{PlaybackGrant, Quality, Territories, TrackStatus, TrackView};
use cadenza_player::{PlayOptions, Player};
use get::get_headed as fetch;
use http::{Method, StatusCode, header};
use peers::skip_or_fail;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/flac")
        .join(name)
}

/// (frames, rate) from a FLAC file's STREAMINFO block, read here without any decoder.
fn flac_streaminfo(path: &Path) -> (u64, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"fLaC");
    let info = &b[8..8 + 34];
    let rate =
        (u32::from(info[10]) << 12) | (u32::from(info[11]) << 4) | (u32::from(info[12]) >> 4);
    let frames = (u64::from(info[13] & 0x0f) << 32)
        | (u64::from(info[14]) << 24)
        | (u64::from(info[15]) << 16)
        | (u64::from(info[16]) << 8)
        | u64::from(info[17]);
    (frames, rate)
}

/// A client and a player for `stack`, and `master` ingested there and ready.
async fn ready_track(stack: &Stack, master: &str, title: &str) -> (HttpClient, Player, TrackView) {
    let client = stack.client().unwrap();
    let view = ingest_file(&client, &stack.info, &fixture(master), &meta(title), false)
        .await
        .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    let player = stack.info.player().await.unwrap();
    (client, player, view)
}

/// Asks `stack` for a grant of `track` for a listener at `xff`, as the trusted proxy in
/// front of the control plane would: the status and the JSON body.
async fn grant_at(
    client: &HttpClient,
    stack: &Stack,
    track: &cadenza_common::TrackId,
    xff: &str,
) -> (StatusCode, serde_json::Value) {
    let url = format!("{}/v1/playback", stack.info.control_plane);
    let token = stack
        .info
        .player()
        .await
        .unwrap()
        .access_token()
        .await
        .unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "track_id": track })).unwrap();
    let mut req = client::request(
        Method::POST,
        &url,
        Some(&token),
        cadenza_common::http::full(body),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    req.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = client::read_all(resp.into_body(), &url).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

/// A Python interpreter that has `niquests` (set `CADENZA_PYTHON`, or `python3` on PATH).
fn h3_python() -> Option<String> {
    let python = std::env::var("CADENZA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import niquests, qh3"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// Asserts that vorbis-tools' `ogginfo` finds `path` a clean Ogg Vorbis stream.
fn ogginfo_accepts(path: &Path) {
    match Command::new("ogginfo").arg(path).output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success()
                    && !text.contains("WARNING")
                    && text.contains("Vorbis stream 1"),
                "ogginfo on {}:\n{text}",
                path.display()
            );
        }
        Err(_) => skip_or_fail("ogginfo (vorbis-tools)"),
    }
}

async fn start(dir: &Path) -> Stack {
    let mut config = StackConfig::new(dir);
    config.port_base = 0;
    // Small slices so a few-hundred-KB rendition spans many of them.
    config.slice_bytes = 16 * 1024;
    Stack::start(config).await.unwrap()
}

fn meta(title: &str) -> TrackMeta {
    TrackMeta {
        title: title.into(),
        artist: "Test Artist".into(),
        territories: "GB,SE,US".parse::<Territories>().unwrap(),
        isrc: Some("GBAYE6300001".into()),
        release: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_plays_through_the_edge_at_every_quality() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path()).await;
    let client = stack.client().unwrap();

    let master = fixture("stereo-44k1.flac");
    let view = ingest_file(&client, &stack.info, &master, &meta("Stereo"), false)
        .await
        .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    assert_eq!(view.renditions.len(), 3);
    let (frames, rate) = flac_streaminfo(&master);
    let master_secs = frames as f64 / f64::from(rate);

    let player = stack.info.player().await.unwrap();
    for quality in Quality::ALL {
        let mut options = PlayOptions::new(view.track_id.clone(), quality);
        options.wav_out = Some(dir.path().join(format!("{}.wav", quality.as_str())));
        let report = player.play(&options).await.unwrap();
        assert_eq!(report.grant.quality, quality);
        assert_eq!(report.grant.loudness, view.loudness);
        assert!(view.loudness.is_some());
        let features = view.features.unwrap();
        assert!(
            features.spectral_centroid_hz > 100.0 && features.energy_dbfs > -60.0,
            "{features:?}"
        );
        assert_eq!(report.bytes, report.grant.size);
        let decoded = report.decoded.duration().as_secs_f64();
        assert!(
            (decoded - master_secs).abs() <= 0.030,
            "{quality:?}: decoded {decoded:.4} s, master {master_secs:.4} s"
        );
        assert_eq!(report.decoded.sample_rate, 44_100);
        assert_eq!(report.decoded.channels, 2);
        assert!(
            report.time_to_first_audio > Duration::ZERO
                && report.time_to_first_audio <= report.total_time
        );
        let wav_len = std::fs::metadata(options.wav_out.as_ref().unwrap())
            .unwrap()
            .len();
        assert_eq!(wav_len, 44 + report.decoded.frames * 4);

        // The stored rendition, decrypted with the grant's key, passes ogginfo.
        let stored = dir
            .path()
            .join("objects/renditions")
            .join(report.grant.file_id.as_str());
        let mut plain = std::fs::read(stored).unwrap();
        assert_eq!(plain.len() as u64, report.grant.size);
        report.grant.key.apply_at(0, &mut plain);
        let ogg = dir.path().join(format!("{}.ogg", quality.as_str()));
        std::fs::write(&ogg, &plain).unwrap();
        ogginfo_accepts(&ogg);
    }

    // Seeking: start 3 s in through the grant's seek index, with the headers and one jump.
    let mut options = PlayOptions::new(view.track_id.clone(), Quality::Normal);
    options.start_at = Some(Duration::from_secs(3));
    let report = player.play(&options).await.unwrap();
    let total = report.grant.seek_index.frames;
    assert!(
        report.start_frame > 2 * 44_100 && report.start_frame <= 3 * 44_100,
        "{}",
        report.start_frame
    );
    assert!(
        report.bytes < report.grant.size * 3 / 4,
        "{} of {}",
        report.bytes,
        report.grant.size
    );
    let resumed = report.start_frame + report.decoded.frames;
    assert!(
        resumed <= total && total - resumed <= 2048,
        "resumed {resumed} of {total}"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_ranges_equal_the_stored_bytes_and_tokens_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path()).await;
    let client = stack.client().unwrap();
    let view = ingest_file(
        &client,
        &stack.info,
        &fixture("mono.flac"),
        &meta("Mono"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);

    let player = stack.info.player().await.unwrap();
    let grant: PlaybackGrant = player.grant(&view.track_id, Quality::High).await.unwrap();
    let stored = std::fs::read(
        dir.path()
            .join("objects/renditions")
            .join(grant.file_id.as_str()),
    )
    .unwrap();
    assert_eq!(stored.len() as u64, grant.size);
    let len = stored.len() as u64;
    let url = format!("{}/a/{}", stack.info.edge, grant.file_id);
    let token = grant.token.0.as_str();

    // Random ranges, deterministic from a fixed seed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let start = x % len;
        let end = (start + (x >> 32) % 70_000).min(len - 1);
        let (status, headers, body) =
            fetch(&client, &url, token, Some(&format!("bytes={start}-{end}"))).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            headers[header::CONTENT_RANGE],
            format!("bytes {start}-{end}/{len}").as_str()
        );
        assert_eq!(
            body,
            stored[start as usize..=end as usize],
            "bytes={start}-{end}"
        );
    }
    let (status, headers, body) = fetch(&client, &url, token, Some("bytes=-1000")).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &stored[stored.len() - 1000..])
    );
    assert!(
        headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(
        headers[header::ETAG],
        format!("\"{}\"", grant.file_id).as_str()
    );
    let (status, _, body) = fetch(&client, &url, token, None).await;
    assert_eq!((status, body.len()), (StatusCode::OK, stored.len()));
    assert_eq!(body, stored);
    let (status, headers, _) = fetch(&client, &url, token, Some(&format!("bytes={len}-"))).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        headers[header::CONTENT_RANGE],
        format!("bytes */{len}").as_str()
    );

    // Conditional requests: the player's cached copy is still good (304, no body); a stale
    // If-Range gets the whole file instead of a part.
    let etag = format!("\"{}\"", grant.file_id);
    let mut req = client::request(Method::GET, &url, Some(token), empty()).unwrap();
    req.headers_mut()
        .insert(header::IF_NONE_MATCH, etag.parse().unwrap());
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    let mut req = client::request(Method::GET, &url, Some(token), empty()).unwrap();
    req.headers_mut()
        .insert(header::RANGE, "bytes=0-9".parse().unwrap());
    req.headers_mut()
        .insert(header::IF_RANGE, "\"stale\"".parse().unwrap());
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        client::read_all(resp.into_body(), &url)
            .await
            .unwrap()
            .len(),
        stored.len()
    );

    // Refusals: a flipped byte in the signature, a token for another file, no token.
    let mut tampered = token.to_owned().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (status, _, body) = fetch(&client, &url, &tampered, Some("bytes=0-9")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("token_bad_signature"));
    let other = player.grant(&view.track_id, Quality::Low).await.unwrap();
    let (status, _, body) = fetch(&client, &url, &other.token.0, Some("bytes=0-9")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("token_wrong_file"));
    let (status, _, _) = fetch(&client, &url, "", Some("bytes=0-9")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Every slice was fetched from the origin once, whatever the number of requests.
    let slices = len.div_ceil(16 * 1024);
    assert_eq!(stack.edge.cache().origin_fetches(), slices);

    // The edge remembers a token once its signature checked out (above, for the wrong file);
    // remembered, it opens its own file and still not this one.
    let other_url = format!("{}/a/{}", stack.info.edge, other.file_id);
    let (status, _, _) = fetch(&client, &other_url, &other.token.0, Some("bytes=0-9")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let (status, _, body) = fetch(&client, &url, &other.token.0, Some("bytes=0-9")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("token_wrong_file"));

    // HTTP/3: an independent client (Python niquests over qh3), forced onto QUIC, fetches
    // ranges from the same port's UDP side.
    match h3_python() {
        Some(python) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h3_get.py");
            for (start, end) in [
                (0u64, 99u64),
                (1000, 70_000.min(len - 1)),
                (len - 500, len - 1),
            ] {
                let out_path = dir.path().join("h3.bin");
                let out = Command::new(&python)
                    .arg(&script)
                    .arg(&url)
                    .arg(token)
                    .arg(&stack.info.ca)
                    .arg(format!("bytes={start}-{end}"))
                    .arg(&out_path)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "h3 client: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(report["status"], 206, "{report}");
                assert_eq!(report["http_version"], 30, "not HTTP/3: {report}");
                assert_eq!(
                    report["content_range"],
                    format!("bytes {start}-{end}/{len}")
                );
                let body = std::fs::read(&out_path).unwrap();
                assert_eq!(
                    body,
                    stored[start as usize..=end as usize],
                    "h3 bytes={start}-{end}"
                );
            }
        }
        None => skip_or_fail("python with niquests (HTTP/3 client)"),
    }
    // TCP answers advertise HTTP/3 on the same port.
    let (_, headers, _) = fetch(&client, &url, token, Some("bytes=0-0")).await;
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
    assert_eq!(
        headers[header::ALT_SVC],
        format!("h3=\":{port}\"; ma=86400").as_str()
    );

    // The admin listener: metrics, stats, purge and pre-warm.
    let admin = &stack.info.edge_admin;
    let admin_token = stack.info.admin_token.as_str();
    let (status, _, body) = fetch(&client, &format!("{admin}/metrics"), "", None).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("cadenza_edge_requests_total{protocol=\"h2\",status=\"206\"}"),
        "{text}"
    );
    assert!(text.contains("cadenza_edge_cache_hits_total"), "{text}");
    let (status, _, _) = fetch(&client, &format!("{admin}/admin/v1/stats"), "wrong", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = fetch(
        &client,
        &format!("{admin}/admin/v1/stats"),
        admin_token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        stats["hits"].as_u64().unwrap() > 0 && stats["cache_bytes"].as_u64().unwrap() >= len,
        "{stats}"
    );
    let before_purge = stack.edge.cache().origin_fetches();
    let purge = serde_json::json!({"file_ids": [grant.file_id]});
    let purged: serde_json::Value = client::call_json(
        &client,
        Method::POST,
        &format!("{admin}/admin/v1/purge"),
        Some(admin_token),
        Some(&purge),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(purged["purged"], 1);
    let (status, _, body) = fetch(&client, &url, token, Some("bytes=0-9")).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &stored[..10])
    );
    let m = stack.edge.cache().metrics();
    assert!(
        stack.edge.cache().origin_fetches() > before_purge,
        "purged slice served without refetch: hits {} misses {} disk {} collapsed {}",
        m.hits.get(),
        m.misses.get(),
        m.disk_hits.get(),
        m.collapsed.get()
    );
    let warmed: serde_json::Value = client::call_json(
        &client,
        Method::POST,
        &format!("{admin}/admin/v1/prewarm"),
        Some(admin_token),
        Some(&serde_json::json!({"file_ids": [grant.file_id]})),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(warmed["slices"], slices);

    // The decrypted file is a valid Ogg Vorbis stream by an independent checker.
    let mut plain = stored.clone();
    grant.key.apply_at(0, &mut plain);
    let ogg = dir.path().join("high.ogg");
    std::fs::write(&ogg, &plain).unwrap();
    ogginfo_accepts(&ogg);

    // curl, an independent HTTP client, over HTTP/1.1 and HTTP/2.
    for proto in ["--http1.1", "--http2"] {
        let out = match Command::new("curl")
            .args(["-sS", proto, "--cacert"])
            .arg(&stack.info.ca)
            .args([
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-r",
                "100-4195",
                "-o",
                "-",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ])
            .output()
        {
            Ok(out) => out,
            Err(_) => {
                skip_or_fail("curl");
                break;
            }
        };
        assert!(
            out.status.success(),
            "curl {proto}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, trailer) = out.stdout.split_at(out.stdout.len().min(4096));
        let trailer = String::from_utf8_lossy(trailer);
        let expected_version = if proto == "--http2" {
            "2 206"
        } else {
            "1.1 206"
        };
        assert_eq!(trailer.trim(), expected_version, "{proto}");
        assert_eq!(body, &stored[100..4196], "{proto}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_master_is_refused_with_a_reason_and_never_playable() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path()).await;
    let client = stack.client().unwrap();
    let broken = dir.path().join("broken.flac");
    let whole = std::fs::read(fixture("stereo-44k1.flac")).unwrap();
    std::fs::write(&broken, &whole[..whole.len() / 3]).unwrap();
    let view = ingest_file(&client, &stack.info, &broken, &meta("Broken"), false)
        .await
        .unwrap();
    assert_eq!(view.status, TrackStatus::Failed);
    let reason = view.failure.unwrap_or_default();
    assert!(reason.contains("master refused"), "{reason}");
    assert!(view.renditions.is_empty());
    let player = stack.info.player().await.unwrap();
    let err = player
        .grant(&view.track_id, Quality::Normal)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
    // Nothing half-made was published.
    assert_eq!(
        std::fs::read_dir(dir.path().join("objects/renditions"))
            .unwrap()
            .count(),
        0
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synthesised_demo_master_ingests_and_plays() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("demo.wav");
    cadenza::synth::write_demo_master(&master, 3).unwrap();
    let stack = start(dir.path()).await;
    let client = stack.client().unwrap();
    let view = ingest_file(&client, &stack.info, &master, &meta("Demo"), false)
        .await
        .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    assert_eq!(view.duration_ms, Some(3000));
    let player = stack.info.player().await.unwrap();
    let report = player
        .play(&PlayOptions::new(view.track_id, Quality::Low))
        .await
        .unwrap();
    assert_eq!(report.decoded.frames, 3 * 44_100);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn territories_are_enforced_at_the_edge_behind_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.geoip = Some(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/geoip/GeoIP2-Country-Test.mmdb"),
    );
    // The test client connects from 127.0.0.1, playing a load balancer in front of the edge,
    // which it reaches on the cleartext listener, as a TLS-terminating balancer would.
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config.edge_cleartext = true;
    let stack = Stack::start(config).await.unwrap();
    let (client, player, view) = ready_track(&stack, "mono.flac", "Licensed").await;
    let grant = player.grant(&view.track_id, Quality::Low).await.unwrap();
    let edge = stack.info.edge_cleartext.clone().unwrap();
    assert!(edge.starts_with("http://"));
    let url = format!("{edge}/a/{}", grant.file_id);
    let from = |xff: &'static str| {
        let mut req = client::request(Method::GET, &url, Some(&grant.token.0), empty()).unwrap();
        req.headers_mut()
            .insert(header::RANGE, "bytes=0-9".parse().unwrap());
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        req
    };
    // Sweden and Britain are licensed (GB,SE,US); Japan is not.
    for (xff, want) in [
        ("89.160.20.112", StatusCode::PARTIAL_CONTENT),
        ("2.125.160.216", StatusCode::PARTIAL_CONTENT),
        ("2001:218::1", StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS),
        // A spoofed entry on the left does not help: the proxy appended the real client.
        (
            "89.160.20.112, 2001:218::1",
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
        ),
    ] {
        let resp = client.request(from(xff)).await.unwrap();
        assert_eq!(resp.status(), want, "X-Forwarded-For: {xff}");
        if want == StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS {
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        }
    }
    stack.shutdown().await;
}

/// Licence windows are decided per country at grant time, from the listener's address: the
/// grant's token names only the territories licensed now, so the edge holds the same line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licence_windows_decide_grants_per_country() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.geoip = Some(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/geoip/GeoIP2-Country-Test.mmdb"),
    );
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config.edge_cleartext = true;
    let stack = Stack::start(config).await.unwrap();
    let client = stack.client().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut licensed = meta("Windows");
    licensed.release.licences = vec![
        "SE".parse().unwrap(),
        format!("GB@{}..{}", now - 7200, now - 3600)
            .parse()
            .unwrap(),
        format!("JP@{}..", now + 3600).parse().unwrap(),
    ];
    let view = ingest_file(
        &client,
        &stack.info,
        &fixture("mono.flac"),
        &licensed,
        false,
    )
    .await
    .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    assert_eq!(view.licences.len(), 3);
    let grant_from = |xff: &'static str| grant_at(&client, &stack, &view.track_id, xff);
    // Sweden: licensed, and the token is good for Sweden only.
    let (status, grant) = grant_from("89.160.20.112").await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let grant: PlaybackGrant = serde_json::from_value(grant).unwrap();
    for (xff, code) in [
        ("2.125.160.216", "licence_ended"),
        ("2001:218::1", "not_yet_licensed"),
        ("2001:220::1", "not_licensed"),
    ] {
        let (status, body) = grant_from(xff).await;
        assert_eq!(
            status,
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
            "{xff}: {body}"
        );
        assert_eq!(body["error"], code, "{xff}: {body}");
    }
    let edge = stack.info.edge_cleartext.clone().unwrap();
    let url = format!("{edge}/a/{}", grant.file_id);
    for (xff, want) in [
        ("89.160.20.112", StatusCode::PARTIAL_CONTENT),
        // Britain's window closed: a Swedish grant carried to Britain does not play there.
        ("2.125.160.216", StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS),
    ] {
        let mut req = client::request(Method::GET, &url, Some(&grant.token.0), empty()).unwrap();
        req.headers_mut()
            .insert(header::RANGE, "bytes=0-9".parse().unwrap());
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        assert_eq!(client.request(req).await.unwrap().status(), want, "{xff}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_fails_over_past_a_dead_origin_and_opens_its_breaker() {
    // A port nothing listens on: connections are refused at once.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("https://{}", dead.local_addr().unwrap());
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.slice_bytes = 4096;
    config.extra_origins = vec![dead_url];
    config.extra_origins_first = true;
    let stack = Stack::start(config).await.unwrap();
    let (_client, player, view) = ready_track(&stack, "mono.flac", "Failover").await;
    let report = player
        .play(&PlayOptions::new(view.track_id, Quality::Low))
        .await
        .unwrap();
    assert_eq!(report.bytes, report.grant.size);
    // The dead origin failed three times in a row and now goes last.
    assert!(stack.edge.cache().origin_circuit_open(0));
    assert!(!stack.edge.cache().origin_circuit_open(1));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_edge_serves_its_disk_cache_and_refetches_a_corrupt_slice() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = StackConfig::new(dir.path());
        c.port_base = 0;
        c.slice_bytes = 4096;
        c
    };
    let stack = Stack::start(config()).await.unwrap();
    let (client, player, view) = ready_track(&stack, "mono.flac", "Disk").await;
    let grant = player.grant(&view.track_id, Quality::High).await.unwrap();
    let stored = std::fs::read(
        dir.path()
            .join("objects/renditions")
            .join(grant.file_id.as_str()),
    )
    .unwrap();
    let slices = (stored.len() as u64).div_ceil(4096);
    let (status, headers, body) = fetch(
        &client,
        &format!("{}/a/{}", stack.info.edge, grant.file_id),
        &grant.token.0,
        None,
    )
    .await;
    assert_eq!((status, body.len()), (StatusCode::OK, stored.len()));
    assert_eq!(headers["cache-status"], "cadenza; fwd=miss; stored");
    // Disk writes happen in the background; wait (bounded) until every slice is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.edge.cache().disk_usage().await.map(|u| u.1) != Some(slices) {
        assert!(
            std::time::Instant::now() < deadline,
            "slices never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.shutdown().await;

    // Damage one slice while the edge is down.
    let victim = dir
        .path()
        .join("edge-cache")
        .join(grant.file_id.as_str())
        .join("2");
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();

    let stack = Stack::start(config()).await.unwrap();
    let client = stack.client().unwrap();
    let url = format!("{}/a/{}", stack.info.edge, grant.file_id);
    let (status, headers, body) = fetch(&client, &url, &grant.token.0, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, stored, "served bytes differ after restart");
    // The first slice came off the disk; now it is in memory as well.
    assert_eq!(headers["cache-status"], "cadenza; hit; detail=disk");
    let (_, headers, _) = fetch(&client, &url, &grant.token.0, Some("bytes=0-99")).await;
    assert_eq!(headers["cache-status"], "cadenza; hit");
    // Only the damaged slice went back to the origin.
    assert_eq!(stack.edge.cache().origin_fetches(), 1);
    assert_eq!(stack.edge.cache().metrics().disk_corrupt.get(), 1);
    assert_eq!(stack.edge.cache().metrics().disk_hits.get(), slices - 1);
    // The start-up scan (run while the edge served) indexed every slice, the refetched one
    // written back; the gauges say so.
    let m = stack.edge.cache().metrics().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.edge.cache().disk_usage().await.map(|u| u.1) != Some(slices)
        || m.disk_scanning.get() != 0
    {
        assert!(std::time::Instant::now() < deadline, "the scan never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.disk_slices.get(), slices as i64);
    assert!(m.disk_bytes.get() > stored.len() as i64);
    assert!(m.disk_index_bytes.get() > 0);
    stack.shutdown().await;
}

/// `/openapi.json` passes an OpenAPI validator not written here, and every path it describes
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_is_valid_and_every_path_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path()).await;
    let (client, _player, view) = ready_track(&stack, "mono.flac", "Described").await;
    let base = &stack.info.control_plane;
    let get = |path: String| {
        let client = client.clone();
        async move {
            let url = format!("{base}{path}");
            let resp = client
                .request(client::request(Method::GET, &url, None, empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let body = client::read_all(resp.into_body(), &url).await.unwrap();
            (status, body)
        }
    };
    let (status, body) = get("/openapi.json".into()).await;
    assert_eq!(status, StatusCode::OK);
    let spec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let python = std::env::var("CADENZA_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python)
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            skip_or_fail("openapi-spec-validator (Python)")
        }
        Ok(out) => panic!(
            "the OpenAPI validator refused /openapi.json:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => skip_or_fail("python"),
    }
    // Every described GET answers something other than "no such endpoint".
    let track = view.track_id.to_string();
    let album = view
        .album_id
        .clone()
        .map_or_else(|| "0".repeat(24), |a| a.to_string());
    let artist = view.artist_id.clone().unwrap().to_string();
    for (path, item) in spec["paths"].as_object().unwrap() {
        if item.get("get").is_none() {
            continue;
        }
        let concrete = match path.as_str() {
            "/v1/tracks/{id}" => format!("/v1/tracks/{track}"),
            "/v1/albums/{id}" => format!("/v1/albums/{album}"),
            "/v1/artists/{id}" => format!("/v1/artists/{artist}"),
            "/v1/search" => "/v1/search?q=described".into(),
            p => p.to_owned(),
        };
        let (status, body) = get(concrete.clone()).await;
        let needs_token = item["get"].get("security").is_some();
        assert!(
            status.is_success()
                || (path == "/v1/albums/{id}" && status == StatusCode::NOT_FOUND)
                || (needs_token && status == StatusCode::UNAUTHORIZED),
            "{concrete}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    stack.shutdown().await;
}

/// Sign-up, OAuth 2.0 password, refresh and client-credentials grants over HTTPS, a user's
/// export and deletion, and the token endpoint's rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_sign_up_get_tokens_export_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path()).await;
    let client = stack.client().unwrap();
    let base = stack.info.control_plane.clone();
    let service = cadenza::stack::service_token(dir.path()).unwrap();
    let call = |method: Method,
                path: &str,
                bearer: Option<String>,
                body: Option<(&'static str, String)>| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let payload = body
                .as_ref()
                .map_or_else(Vec::new, |(_, b)| b.clone().into_bytes());
            let mut req = client::request(
                method,
                &url,
                bearer.as_deref(),
                cadenza_common::http::full(payload),
            )
            .unwrap();
            if let Some((ct, _)) = body {
                req.headers_mut()
                    .insert(header::CONTENT_TYPE, ct.parse().unwrap());
            }
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
            let bytes = client::read_all(resp.into_body(), &url).await.unwrap();
            let json = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
            (status, json, retry_after)
        }
    };
    let json = |v: serde_json::Value| Some(("application/json", v.to_string()));
    let form = |s: String| Some(("application/x-www-form-urlencoded", s));

    let (status, made, _) = call(
        Method::POST,
        "/v1/accounts",
        None,
        json(serde_json::json!({"email": "ann@example.com", "password": "correct horse"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let (status, _, _) = call(
        Method::POST,
        "/v1/accounts",
        None,
        json(serde_json::json!({"email": "ANN@example.com", "password": "other password"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, app, _) = call(
        Method::POST,
        "/internal/v1/oauth-clients",
        Some(service.clone()),
        json(serde_json::json!({"name": "Player", "kind": "first_party"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let app_id = app["client_id"].as_str().unwrap().to_owned();

    // The password grant, form-encoded as RFC 6749 has it (`+` and `%40` decoded).
    let (status, tokens, _) = call(
        Method::POST,
        "/oauth/token",
        None,
        form(format!(
            "grant_type=password&username=ann%40example.com&password=correct+horse&client_id={app_id}"
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, wrong, _) = call(
        Method::POST,
        "/oauth/token",
        None,
        form(format!(
            "grant_type=password&username=ann%40example.com&password=wrong&client_id={app_id}"
        )),
    )
    .await;
    assert_eq!(
        (status, wrong["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let (status, export, _) = call(Method::GET, "/v1/me/export", Some(access.clone()), None).await;
    assert_eq!(status, StatusCode::OK, "{export}");
    assert_eq!(export["email"], "ann@example.com");
    assert_eq!(export["sessions"].as_array().unwrap().len(), 1);
    let (status, _, _) = call(
        Method::GET,
        "/v1/me/export",
        Some("at1.forged.x".into()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A refresh token is good once.
    let refresh_with = |t: &str| {
        form(format!(
            "grant_type=refresh_token&refresh_token={t}&client_id={app_id}"
        ))
    };
    let (status, rotated, _) =
        call(Method::POST, "/oauth/token", None, refresh_with(&refresh)).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_ne!(rotated["refresh_token"], tokens["refresh_token"]);
    let (status, again, _) = call(Method::POST, "/oauth/token", None, refresh_with(&refresh)).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Client credentials for a service; a first-party app may not use them.
    let (_, svc, _) = call(
        Method::POST,
        "/internal/v1/oauth-clients",
        Some(service.clone()),
        json(serde_json::json!({"name": "Label backend", "kind": "service"})),
    )
    .await;
    let (status, svc_token, _) = call(
        Method::POST,
        "/oauth/token",
        None,
        json(serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": svc["client_id"],
            "client_secret": svc["client_secret"],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{svc_token}");
    assert!(svc_token.get("refresh_token").is_none());
    // A service token is not a user's.
    let (status, _, _) = call(
        Method::GET,
        "/v1/me/export",
        svc_token["access_token"].as_str().map(str::to_owned),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Grants are for signed-in listeners: without a token, with a service's or a forged one
    // the request is refused before the catalogue is read; a listener's token gets as far
    // as the catalogue (which has no such track).
    let nowhere = json(serde_json::json!({ "track_id": cadenza_common::TrackId::random() }));
    for token in [
        None,
        svc_token["access_token"].as_str().map(str::to_owned),
        Some("at1.forged.x".to_owned()),
    ] {
        let (status, refused, _) = call(Method::POST, "/v1/playback", token, nowhere.clone()).await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
    }
    let (status, missing, _) =
        call(Method::POST, "/v1/playback", Some(access.clone()), nowhere).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    let (status, _, _) = call(
        Method::POST,
        "/oauth/token",
        None,
        form(format!("grant_type=client_credentials&client_id={app_id}")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Deleting the account ends it; its refresh token no longer works.
    let (status, _, _) = call(Method::DELETE, "/v1/me", Some(access.clone()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(Method::GET, "/v1/me/export", Some(access.clone()), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        Method::POST,
        "/oauth/token",
        None,
        refresh_with(rotated["refresh_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The token endpoint limits each client: a burst, then 429 with Retry-After.
    let mut limited = None;
    for _ in 0..30 {
        let (status, _, retry) = call(
            Method::POST,
            "/oauth/token",
            None,
            form("grant_type=password&username=x&password=y&client_id=cl_nobody".into()),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = retry;
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let retry: u64 = limited
        .expect("rate limited")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry), "{retry}");
    stack.shutdown().await;
}

/// A grant lists the edges for the listener's country first, healthy before failing: a
/// Swede gets this stack's edge and a Swedish edge, with a dead Swedish edge last; a Briton
/// gets the worldwide edge first. The Swedish edge is a real `edge_node` serving the track.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_list_the_listeners_healthy_edges_first() {
    use cadenza::edge_node::{self, EdgeListeners, EdgeNodeConfig};
    let dir = tempfile::tempdir().unwrap();
    let se_main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let se_url = format!("https://{}", se_main.local_addr().unwrap());
    let dead_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.geoip = Some(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/geoip/GeoIP2-Country-Test.mmdb"),
    );
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config.edge_sites = vec![
        format!("{dead_url}@SE,NO").parse().unwrap(),
        format!("{se_url}@SE,NO").parse().unwrap(),
    ];
    config.edge_probe_every = Duration::from_millis(200);
    let stack = Stack::start(config).await.unwrap();
    let join = cadenza::stack::join_info(dir.path()).unwrap();
    let (trigger, shutdown) = cadenza_common::http::Shutdown::new();
    let se_edge = edge_node::start(
        EdgeNodeConfig::joining(&join),
        EdgeListeners {
            main: se_main,
            admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            cleartext: None,
            udp: None,
        },
        shutdown,
    )
    .await
    .unwrap();
    let (client, _player, view) = ready_track(&stack, "mono.flac", "Edges").await;

    // Wait until the probes have seen all three: two up, the dead one down.
    let service = cadenza::stack::service_token(dir.path()).unwrap();
    let edges_url = format!("{}/internal/v1/edges", stack.info.control_plane);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen: serde_json::Value = client::call_json(
            &client,
            Method::GET,
            &edges_url,
            Some(&service),
            None::<&()>,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let up: Vec<bool> = seen["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["up"].as_bool().unwrap() && !e["rtt_ms"].is_null())
            .collect();
        let failures = seen["edges"][1]["failures"].as_u64().unwrap();
        if up == [true, false, true] && failures >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probes never settled: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let edges_for = |xff: &'static str| {
        let grant = grant_at(&client, &stack, &view.track_id, xff);
        async move {
            let (status, grant) = grant.await;
            assert_eq!(status, StatusCode::OK, "{grant}");
            serde_json::from_value::<PlaybackGrant>(grant).unwrap()
        }
    };
    let sweden = edges_for("89.160.20.112").await;
    assert_eq!(sweden.edges.len(), 3);
    assert_eq!(sweden.edges[2], dead_url, "{:?}", sweden.edges);
    let mut healthy = sweden.edges[..2].to_vec();
    healthy.sort();
    let mut want = vec![stack.info.edge.clone(), se_url.clone()];
    want.sort();
    assert_eq!(healthy, want);
    let britain = edges_for("2.125.160.216").await;
    assert_eq!(
        britain.edges,
        [stack.info.edge.clone(), se_url.clone(), dead_url.clone()]
    );

    // The Swedish edge serves the granted file.
    let url = format!("{se_url}/a/{}", sweden.file_id);
    let (status, _, body) = fetch(&client, &url, &sweden.token.0, Some("bytes=0-99")).await;
    assert_eq!((status, body.len()), (StatusCode::PARTIAL_CONTENT, 100));
    trigger.trigger();
    for task in se_edge.tasks {
        let _ = task.await;
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_player_on_an_allowed_origin_gets_a_grant_and_the_audio() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.cors = cadenza_control_plane::CorsOrigins::Only(vec!["https://player.example".into()]);
    let stack = Stack::start(config).await.unwrap();
    let (client, player, view) = ready_track(&stack, "mono.flac", "Web").await;
    let access = player.access_token().await.unwrap();
    let service = cadenza::stack::service_token(dir.path()).unwrap();
    let (ours, theirs) = ("https://player.example", "https://elsewhere.example");
    // A request as a page's script makes it: with its origin, and what the caller adds.
    let send =
        |method: Method, url: String, origin: &str, extra: Vec<(&'static str, String)>, body| {
            let client = client.clone();
            let origin = origin.to_owned();
            async move {
                let mut req =
                    client::request(method, &url, None, cadenza_common::http::full(body)).unwrap();
                req.headers_mut()
                    .insert(header::ORIGIN, origin.parse().unwrap());
                for (name, value) in extra {
                    req.headers_mut().insert(
                        name.parse::<header::HeaderName>().unwrap(),
                        value.parse().unwrap(),
                    );
                }
                let resp = client.request(req).await.unwrap();
                let (parts, body) = resp.into_parts();
                let bytes = client::read_all(body, &url).await.unwrap();
                (parts.status, parts.headers, bytes)
            }
        };
    let allowed = |h: &http::HeaderMap| {
        h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let playback = format!("{}/v1/playback", stack.info.control_plane);
    let grant_body = serde_json::to_vec(&serde_json::json!({ "track_id": view.track_id })).unwrap();
    let bearer = ("authorization", format!("Bearer {access}"));
    let json = ("content-type", "application/json".to_owned());

    // The browser's preflight for the grant: no token, and the page's script may send one
    // with a JSON body.
    let asks = vec![
        ("access-control-request-method", "POST".to_owned()),
        (
            "access-control-request-headers",
            "authorization,content-type".to_owned(),
        ),
    ];
    let (status, h, _) = send(
        Method::OPTIONS,
        playback.clone(),
        ours,
        asks.clone(),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(allowed(&h).as_deref(), Some(ours));
    assert_eq!(h[header::VARY], "Origin");
    let methods = h[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let headers = h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
    assert!(headers.contains("Authorization") && headers.contains("Content-Type"));
    // The grant, readable by the page; then the audio from the edge it names, likewise.
    let extra = vec![bearer.clone(), json.clone()];
    let (status, h, body) = send(
        Method::POST,
        playback.clone(),
        ours,
        extra,
        grant_body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(allowed(&h).as_deref(), Some(ours));
    let grant: PlaybackGrant = serde_json::from_slice(&body).unwrap();
    let audio = format!("{}/a/{}", grant.edges[0], grant.file_id);
    let ranged = vec![
        ("authorization", format!("Bearer {}", grant.token.0)),
        ("range", "bytes=0-99".to_owned()),
    ];
    let (status, h, bytes) = send(Method::GET, audio.clone(), ours, ranged.clone(), vec![]).await;
    assert_eq!((status, bytes.len()), (StatusCode::PARTIAL_CONTENT, 100));
    assert_eq!(allowed(&h).as_deref(), Some(ours));
    // An error is readable too, so the script can show why.
    let forged = vec![
        ("authorization", "Bearer at1.forged.x".to_owned()),
        json.clone(),
    ];
    let (status, h, _) = send(
        Method::POST,
        playback.clone(),
        ours,
        forged,
        grant_body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(allowed(&h).as_deref(), Some(ours));

    // Another origin's page is told no at the preflight, and is not let read (the token
    // still works from anywhere that is not a browser page).
    let (status, h, body) = send(Method::OPTIONS, playback.clone(), theirs, asks, vec![]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("cors_origin_not_allowed"));
    assert_eq!(allowed(&h), None);
    let extra = vec![bearer.clone(), json.clone()];
    let (status, h, _) = send(Method::POST, playback.clone(), theirs, extra, grant_body).await;
    assert_eq!((status, allowed(&h)), (StatusCode::OK, None));
    let (status, h, _) = send(Method::GET, audio, theirs, ranged, vec![]).await;
    assert_eq!((status, allowed(&h)), (StatusCode::PARTIAL_CONTENT, None));

    // The services' endpoints are never offered to pages.
    let edges = format!("{}/internal/v1/edges", stack.info.control_plane);
    let (status, h, _) = send(Method::OPTIONS, edges.clone(), ours, vec![], vec![]).await;
    assert_ne!(status, StatusCode::NO_CONTENT);
    assert_eq!(allowed(&h), None);
    let as_service = vec![("authorization", format!("Bearer {service}"))];
    let (status, h, _) = send(Method::GET, edges, ours, as_service, vec![]).await;
    assert_eq!((status, allowed(&h)), (StatusCode::OK, None));
    stack.shutdown().await;
}
