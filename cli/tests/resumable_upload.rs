//! Resumable uploads (tus 1.0): a real tus client (Python tuspy) interrupted and resumed
//! across an origin restart, the protocol's refusals, and an origin process killed mid-upload
//! whose upload resumes from what it had committed and completes with the right SHA-256;
//! and `cadenza up` stopping cleanly on SIGHUP.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cadenza::ingest::{TrackMeta, submit, wait_done};
use cadenza::stack::{ClusterInfo, Stack, StackConfig};
use cadenza::tus_client::{self, TusTarget};
use cadenza_common::http::client::{self, HttpClient};
use cadenza_common::http::{Body, empty, full};
use cadenza_common::{Territories, TrackStatus, UploadStatus, hex_encode};
use http::{HeaderMap, Method, Request, StatusCode};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/flac")
        .join(name)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex_encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// A Python interpreter with tuspy (`CADENZA_PYTHON`, or `python3`), or a skip notice —
/// a failure when `CADENZA_REQUIRE_PEERS` is set, as CI sets it.
fn tus_python() -> Option<String> {
    let python = std::env::var("CADENZA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import tusclient"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CADENZA_REQUIRE_PEERS").is_none(),
            "tuspy is required (CADENZA_REQUIRE_PEERS is set) but not importable by {python}"
        );
        eprintln!("SKIPPED: tuspy is not installed for {python}");
    }
    ok.then_some(python)
}

fn tuspy(
    python: &str,
    info: &ClusterInfo,
    file: &Path,
    chunk: u64,
    stop_at: i64,
    url: Option<&str>,
) -> serde_json::Value {
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tus_upload.py"))
        .arg(&info.origin)
        .arg(&info.label_key)
        .arg(file)
        .arg(chunk.to_string())
        .arg(stop_at.to_string())
        .env("REQUESTS_CA_BUNDLE", &info.ca);
    if let Some(u) = url {
        cmd.arg(u);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "tuspy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn config(dir: &Path, workers: usize) -> StackConfig {
    let mut config = StackConfig::new(dir);
    config.port_base = 0;
    config.workers = workers;
    config.max_upload_bytes = 64 * 1024 * 1024;
    config
}

async fn status(c: &HttpClient, info: &ClusterInfo, path: &str) -> UploadStatus {
    client::call_json::<(), _>(
        c,
        Method::GET,
        &format!("{}{path}", info.origin),
        Some(&info.label_key),
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuspy_resumes_an_upload_across_an_origin_restart() {
    let Some(python) = tus_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let master = fixture("stereo-44k1.flac");
    let bytes = std::fs::read(&master).unwrap();
    let len = bytes.len() as u64;

    // First run: tuspy sends 64 KiB checksummed chunks and stops partway, as if cut off.
    let stack = Stack::start(config(dir.path(), 0)).await.unwrap();
    let first = tuspy(&python, &stack.info, &master, 65536, 200_000, None);
    let reached = first["offset"].as_u64().unwrap();
    assert!(reached > 0 && reached < len, "{first}");
    let url = first["url"].as_str().unwrap();
    let path = &url[url.find("/v1/uploads/").unwrap()..];
    stack.shutdown().await;

    // The origin restarts (new ports, same data); tuspy resumes the same upload from the
    // offset the restarted origin reports, and finishes it.
    let stack = Stack::start(config(dir.path(), 1)).await.unwrap();
    let resumed_url = format!("{}{path}", stack.info.origin);
    let second = tuspy(&python, &stack.info, &master, 65536, -1, Some(&resumed_url));
    assert_eq!(second["start"].as_u64(), Some(reached), "{second}");
    assert_eq!(second["offset"].as_u64(), Some(len), "{second}");

    let c = stack.client().unwrap();
    let st = status(&c, &stack.info, path).await;
    assert!(st.complete && st.stored, "{st:?}");
    assert_eq!(st.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    assert_eq!(st.filename.as_deref(), Some("stereo-44k1.flac"));

    // The resumed master is intact: it ingests and transcodes.
    let receipt = cadenza_common::UploadReceipt {
        upload_id: st.upload_id,
        size: len,
        sha256: st.sha256.unwrap(),
    };
    let meta = TrackMeta {
        title: "Resumed".into(),
        artist: "Test".into(),
        territories: Territories::worldwide(),
        isrc: None,
        release: Default::default(),
    };
    let track = submit(&c, &stack.info, &receipt, &meta).await.unwrap();
    let view = wait_done(&c, &stack.info, &track.track_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    stack.shutdown().await;
}

fn tus_req(
    method: Method,
    url: &str,
    key: &str,
    headers: &[(&'static str, &str)],
    body: Body,
) -> Request<Body> {
    let mut req = client::request(method, url, Some(key), body).unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    req
}

async fn answer(c: &HttpClient, req: Request<Body>) -> (StatusCode, HeaderMap) {
    let resp = c.request(req).await.unwrap();
    (resp.status(), resp.headers().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_s_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(config(dir.path(), 0)).await.unwrap();
    let c = stack.client().unwrap();
    let (origin, key) = (stack.info.origin.as_str(), stack.info.label_key.as_str());
    let uploads = format!("{origin}/v1/uploads");
    const V: (&str, &str) = ("tus-resumable", "1.0.0");

    // Discovery.
    let (st, h) = answer(&c, tus_req(Method::OPTIONS, &uploads, key, &[], empty())).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(h["tus-version"], "1.0.0");
    assert!(h["tus-extension"].to_str().unwrap().contains("checksum"));
    assert_eq!(h["tus-max-size"], (64 * 1024 * 1024).to_string().as_str());
    assert!(
        h["tus-checksum-algorithm"]
            .to_str()
            .unwrap()
            .contains("sha256")
    );

    // Creation: a wrong version is 412 naming ours; over the limit is 413; a wrong key 401.
    let (st, h) = answer(
        &c,
        tus_req(
            Method::POST,
            &uploads,
            key,
            &[("tus-resumable", "0.2.2"), ("upload-length", "10")],
            empty(),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);
    assert_eq!(h["tus-version"], "1.0.0");
    let (st, _) = answer(
        &c,
        tus_req(
            Method::POST,
            &uploads,
            key,
            &[V, ("upload-length", "999999999999")],
            empty(),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    let (st, _) = answer(
        &c,
        tus_req(
            Method::POST,
            &uploads,
            "wrong",
            &[V, ("upload-length", "10")],
            empty(),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let (st, h) = answer(
        &c,
        tus_req(
            Method::POST,
            &uploads,
            key,
            &[V, ("upload-length", "11")],
            empty(),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    assert!(h.contains_key("upload-expires"));
    let url = format!("{origin}{}", h["location"].to_str().unwrap());
    let patch = |offset: &str, sum: Option<String>, ctype: &'static str, body: &'static [u8]| {
        let mut headers = vec![V, ("upload-offset", offset), ("content-type", ctype)];
        let sum = sum.unwrap_or_default();
        if !sum.is_empty() {
            headers.push(("upload-checksum", sum.as_str()));
        }
        tus_req(Method::PATCH, &url, key, &headers, full(body))
    };
    let sha = |b: &[u8]| {
        format!(
            "sha256 {}",
            STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, b))
        )
    };
    const OCTETS: &str = "application/offset+octet-stream";
    let head = || tus_req(Method::HEAD, &url, key, &[V], empty());

    let (st, h) = answer(&c, patch("0", Some(sha(b"hello")), OCTETS, b"hello")).await;
    assert_eq!(
        (st, h["upload-offset"].to_str().unwrap()),
        (StatusCode::NO_CONTENT, "5")
    );
    // Wrong offset: 409. Wrong checksum: 460, and the chunk is not kept. Wrong type: 415.
    let (st, _) = answer(&c, patch("0", None, OCTETS, b" world")).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = answer(&c, patch("5", Some(sha(b"other")), OCTETS, b" world")).await;
    assert_eq!(st.as_u16(), 460);
    let (st, _) = answer(&c, patch("5", None, "application/octet-stream", b" world")).await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // More than the declared length: 413, nothing kept.
    let (st, _) = answer(&c, patch("5", None, OCTETS, b" world, and more")).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    let (st, h) = answer(&c, head()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h["upload-offset"], "5");
    assert_eq!(h["upload-length"], "11");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["tus-resumable"], "1.0.0");
    // No version header on a PATCH: 412.
    let (st, _) = answer(
        &c,
        tus_req(
            Method::PATCH,
            &url,
            key,
            &[("upload-offset", "5"), ("content-type", OCTETS)],
            full(&b" world"[..]),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);
    // The ingest of an unfinished upload is refused with the reason.
    let id = url.rsplit('/').next().unwrap().parse().unwrap();
    let receipt = cadenza_common::UploadReceipt {
        upload_id: id,
        size: 11,
        sha256: String::new(),
    };
    let meta = TrackMeta {
        title: "Half".into(),
        artist: "Test".into(),
        territories: Territories::worldwide(),
        isrc: None,
        release: Default::default(),
    };
    let err = submit(&c, &stack.info, &receipt, &meta).await.unwrap_err();
    assert!(format!("{err:#}").contains("409"), "{err:#}");

    // Termination: 204, then the upload is gone.
    let (st, _) = answer(&c, tus_req(Method::DELETE, &url, key, &[V], empty())).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, h) = answer(&c, head()).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(!h.contains_key("upload-offset"));
    // Nothing is left on disk.
    let left = std::fs::read_dir(dir.path().join("objects/.uploads"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
    stack.shutdown().await;
}

/// Waits (bounded) until `cadenza up` in `data` has written its cluster file and answers.
async fn wait_up(data: &Path, c: Option<&HttpClient>) -> (ClusterInfo, HttpClient) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(info) = ClusterInfo::load(data) {
            let client = c.cloned().unwrap_or_else(|| info.client().unwrap());
            let url = format!("{}/healthz", info.origin);
            let req = client::request(Method::GET, &url, None, empty()).unwrap();
            if client::send(&client, req, Duration::from_secs(2))
                .await
                .is_ok()
            {
                return (info, client);
            }
        }
        assert!(Instant::now() < deadline, "cadenza up did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_up(data: &Path) -> std::process::Child {
    let _ = std::fs::remove_file(data.join("cluster.json"));
    Command::new(env!("CARGO_BIN_EXE_cadenza"))
        .args(["up", "--port-base", "0", "--workers", "0", "--data"])
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn head_offset(c: &HttpClient, info: &ClusterInfo, path: &str) -> Option<u64> {
    let req = tus_req(
        Method::HEAD,
        &format!("{}{path}", info.origin),
        &info.label_key,
        &[("tus-resumable", "1.0.0")],
        empty(),
    );
    let resp = c.request(req).await.ok()?;
    resp.headers()
        .get("upload-offset")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_killed_mid_upload_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("master.bin");
    // 40 MiB of noise, so compression or zero pages hide nothing.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..40 * 1024 * 1024 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    let book = dir.path().join("resume.json");

    let mut up = start_up(&data);
    let (info, c) = wait_up(&data, None).await;
    let target = TusTarget {
        origin: &info.origin,
        key: &info.label_key,
        chunk: 1024 * 1024,
        resume_book: Some(book.clone()),
    };
    let uploading = {
        let (c, info, file, book) = (c.clone(), info.clone(), file.clone(), book.clone());
        tokio::spawn(async move {
            let target = TusTarget {
                origin: &info.origin,
                key: &info.label_key,
                chunk: 1024 * 1024,
                resume_book: Some(book),
            };
            tus_client::upload(&c, &target, &file, Arc::new(AtomicU64::new(0))).await
        })
    };
    // Kill the origin (SIGKILL) once it has committed at least 8 MiB.
    let deadline = Instant::now() + Duration::from_secs(60);
    let path = loop {
        let remembered = std::fs::read(&book)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["uploads"].as_object().and_then(|m| {
                    m.values()
                        .next()
                        .and_then(|p| p.as_str().map(str::to_owned))
                })
            });
        if let Some(path) = remembered
            && head_offset(&c, &info, &path)
                .await
                .is_some_and(|o| o >= 8 << 20)
        {
            break path;
        }
        assert!(Instant::now() < deadline, "the upload made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    up.kill().unwrap();
    up.wait().unwrap();
    uploading.abort();
    let _ = uploading.await;
    drop(target);

    // A restarted origin reports what it had committed; the client resumes there.
    let mut up = start_up(&data);
    let (info, c) = wait_up(&data, Some(&c)).await;
    let committed = head_offset(&c, &info, &path).await.unwrap();
    assert!(
        committed >= 8 << 20 && committed < bytes.len() as u64,
        "{committed}"
    );
    let target = TusTarget {
        origin: &info.origin,
        key: &info.label_key,
        chunk: 4 * 1024 * 1024,
        resume_book: Some(book.clone()),
    };
    let receipt = tus_client::upload(&c, &target, &file, Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    assert_eq!(receipt.sha256, sha256_hex(&bytes));
    assert_eq!(receipt.upload_id.as_str(), path.rsplit('/').next().unwrap());
    let st = status(&c, &info, &path).await;
    assert!(st.stored, "{st:?}");
    assert_eq!(st.sha256.as_deref(), Some(receipt.sha256.as_str()));
    // The master in the store is byte-identical.
    let stored = std::fs::read(
        data.join("objects/masters")
            .join(receipt.upload_id.as_str()),
    )
    .unwrap();
    assert!(stored == bytes, "stored master differs");
    // The resume book forgot the finished upload.
    let book_text = std::fs::read_to_string(&book).unwrap();
    assert!(!book_text.contains(&path), "{book_text}");
    up.kill().unwrap();
    up.wait().unwrap();
}

/// Sends `child` SIGHUP and waits (60 s at most) for it to exit.
async fn hung_up(child: &mut std::process::Child) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 60 s after SIGHUP");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A terminal's closing sends SIGHUP: `cadenza up` stops as on SIGTERM (its shutdown runs and
/// it exits 0) instead of dying by the signal's default, whether it is serving or still
/// starting, and starts again on the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cadenza_up_stops_cleanly_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = start_up(&data);
    wait_up(&data, None).await;
    let status = hung_up(&mut up).await;
    assert_eq!(status.code(), Some(0), "cadenza up after SIGHUP: {status}");

    // Sent while it is still starting: it finishes starting, then stops the same way (before,
    // no handler was in place yet and the signal's default killed it mid-start).
    let mut starting = Command::new(env!("CARGO_BIN_EXE_cadenza"))
        .args(["up", "--port-base", "0", "--workers", "0", "--data"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = starting.stderr.take().unwrap();
    let (began, beginning) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.contains("cadenza up: starting") {
                let _ = began.send(());
            }
        }
    });
    let said = beginning.recv_timeout(Duration::from_secs(30));
    if said.is_err() {
        let _ = starting.kill();
        panic!("cadenza up never said it was starting");
    }
    let status = hung_up(&mut starting).await;
    assert_eq!(status.code(), Some(0), "SIGHUP during start-up: {status}");

    let mut again = start_up(&data);
    wait_up(&data, None).await;
    let _ = again.kill();
    let _ = again.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labels_web_uploader_speaks_tus_from_its_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 0);
    config.cors =
        cadenza_control_plane::CorsOrigins::Only(vec!["https://upload.label.example".into()]);
    let stack = Stack::start(config).await.unwrap();
    let c = stack.client().unwrap();
    let (origin, key) = (stack.info.origin.as_str(), stack.info.label_key.as_str());
    let uploads = format!("{origin}/v1/uploads");
    let page = ("origin", "https://upload.label.example");
    const V: (&str, &str) = ("tus-resumable", "1.0.0");
    let allowed = |h: &HeaderMap| h.get("access-control-allow-origin").cloned();

    // The browser's preflight (no key) from a page on `from`, before a `method` request.
    let preflight = |url: String, from: &'static str, method: &'static str| {
        let c = c.clone();
        async move {
            let mut req = client::request(Method::OPTIONS, &url, None, empty()).unwrap();
            for (k, v) in [
                ("origin", from),
                ("access-control-request-method", method),
                (
                    "access-control-request-headers",
                    "authorization,tus-resumable,upload-length",
                ),
            ] {
                req.headers_mut().insert(k, v.parse().unwrap());
            }
            answer(&c, req).await
        }
    };
    // The creation POST's: tus's headers allowed.
    let (st, h) = preflight(uploads.clone(), page.1, "POST").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(allowed(&h).unwrap(), page.1);
    let asked = h["access-control-allow-headers"].to_str().unwrap();
    for name in [
        "Authorization",
        "Tus-Resumable",
        "Upload-Length",
        "Upload-Offset",
        "Upload-Checksum",
    ] {
        assert!(asked.contains(name), "{name} not in {asked}");
    }
    // Creation: the page may read where its upload lives.
    let (st, h) = answer(
        &c,
        tus_req(
            Method::POST,
            &uploads,
            key,
            &[V, page, ("upload-length", "10")],
            empty(),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(allowed(&h).unwrap(), page.1);
    let exposed = h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        exposed.contains("Location") && exposed.contains("Upload-Offset"),
        "{exposed}"
    );
    let location = h["location"].to_str().unwrap().to_owned();
    let upload = if location.starts_with("http") {
        location
    } else {
        format!("{origin}{location}")
    };
    // The preflight for PATCH on the upload needs no key either (tus's OPTIONS discovery,
    // without Access-Control-Request-Method, is answered as before).
    let (st, h) = preflight(upload.clone(), page.1, "PATCH").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
    let (st, h) = answer(
        &c,
        tus_req(
            Method::PATCH,
            &upload,
            key,
            &[
                V,
                page,
                ("upload-offset", "0"),
                ("content-type", "application/offset+octet-stream"),
            ],
            cadenza_common::http::full(b"0123456789".to_vec()),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(allowed(&h).unwrap(), page.1);
    assert_eq!(h["upload-offset"], "10");
    let discovery = tus_req(Method::OPTIONS, &uploads, key, &[page], empty());
    let (st, h) = answer(&c, discovery).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(h["tus-version"], "1.0.0");
    assert_eq!(allowed(&h).unwrap(), page.1);

    // Another origin's page is refused at the preflight and not let read.
    let (st, h) = preflight(uploads.clone(), "https://elsewhere.example", "POST").await;
    assert_eq!((st, allowed(&h)), (StatusCode::FORBIDDEN, None));
    // The edges' and the services' endpoints are never offered to pages.
    for path in [
        "/v1/objects/0123456789abcdef0123456789abcdef01234567",
        "/internal/v1/objects/x",
    ] {
        let (st, h) = preflight(format!("{origin}{path}"), page.1, "GET").await;
        assert_ne!(st, StatusCode::NO_CONTENT, "{path}");
        assert_eq!(allowed(&h), None, "{path}");
    }
    stack.shutdown().await;
}
