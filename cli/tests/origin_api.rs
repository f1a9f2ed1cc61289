//! The origin's label API against bad input: oversized uploads refused before the body is
//! read, path tricks refused, other labels' keys refused, and nothing half-made left behind.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use cadenza::stack::{Stack, StackConfig};
use cadenza_common::http::client;
use cadenza_common::http::{empty, full};
use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.max_upload_bytes = 1024 * 1024;
    let stack = Stack::start(config).await.unwrap();
    let c = stack.client().unwrap();
    let origin = &stack.info.origin;
    let key = stack.info.label_key.as_str();

    // Over the limit by its Content-Length: a real client (curl, HTTP/1.1, Expect:
    // 100-continue) gets 413 before it sends the body.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 3 * 1024 * 1024]).unwrap();
    match std::process::Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_upload}",
            "--cacert",
        ])
        .arg(&stack.info.ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {key}"),
            "-H",
            "Expect: 100-continue",
        ])
        .args(["--expect100-timeout", "30", "--data-binary"])
        .arg(format!("@{}", big.display()))
        .arg(format!("{origin}/v1/uploads"))
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let (code, uploaded) = text.split_once(' ').unwrap();
            assert_eq!(code, "413", "{text}");
            assert_eq!(uploaded, "0", "body sent before the refusal: {text}");
        }
        Err(_) => assert!(
            std::env::var_os("CADENZA_REQUIRE_PEERS").is_none(),
            "curl missing"
        ),
    }

    // Over the limit without a declared length (streamed): 413 once the limit is crossed.
    let req = client::request(
        Method::POST,
        &format!("{origin}/v1/uploads"),
        Some(key),
        full(vec![7u8; 2 * 1024 * 1024]),
    )
    .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Wrong key: 401.
    let req = client::request(
        Method::POST,
        &format!("{origin}/v1/uploads"),
        Some("nope"),
        full(vec![1u8; 10]),
    )
    .unwrap();
    assert_eq!(
        c.request(req).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // Path tricks never reach the store: ids are validated hex.
    for path in [
        "/v1/objects/..%2F..%2Fsecrets.json",
        "/v1/objects/../secrets.json",
        "/internal/v1/masters/%00",
        "/v1/tracks/..",
    ] {
        let req = client::request(Method::GET, &format!("{origin}{path}"), Some(key), empty());
        let Ok(req) = req else { continue };
        let status = c.request(req).await.unwrap().status();
        assert!(
            matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED
            ),
            "{path}: {status}"
        );
    }

    // A rendition whose bytes do not hash to its name is refused.
    let id = "0123456789abcdef0123456789abcdef01234567";
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("secrets.json")).unwrap()).unwrap();
    let service = secrets["service_token"].as_str().unwrap();
    let req = client::request(
        Method::PUT,
        &format!("{origin}/internal/v1/objects/{id}"),
        Some(service),
        full(b"not it".to_vec()),
    )
    .unwrap();
    assert_eq!(
        c.request(req).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    // Nothing was stored, and the staging area is empty again.
    let count = |sub: &str| {
        std::fs::read_dir(dir.path().join("objects").join(sub))
            .unwrap()
            .count()
    };
    assert_eq!(count("masters"), 0);
    assert_eq!(count("renditions"), 0);
    assert_eq!(count(".staging"), 0);
    stack.shutdown().await;
}
