//! The whole stack on a real S3 server (SeaweedFS): a master uploaded over tus lands in the
//! bucket, its renditions are published there, and the edge serves them to a player. With S3
//! down when an upload finishes, nothing is lost: the last PATCH answers 503 but every byte
//! stays staged, the ingest answers 503, and once S3 is back the same ingest goes through and
//! the track plays.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "../../tests/support/seaweed.rs"]
mod seaweed;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cadenza::ingest::{TrackMeta, ingest_file, submit, wait_done};
use cadenza::stack::{Stack, StackConfig};
use cadenza_common::http::client;
use cadenza_common::http::full;
use cadenza_common::{Quality, Territories, TrackStatus, UploadReceipt, UploadStatus};
use cadenza_origin::{MIN_PART_BYTES, ObjectKey, ObjectStore, S3Config, S3Store};
use cadenza_player::PlayOptions;
use http::{Method, StatusCode};
use seaweed::Seaweed;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/flac")
        .join(name)
}

fn meta(title: &str) -> TrackMeta {
    TrackMeta {
        title: title.into(),
        artist: "Test".into(),
        territories: Territories::worldwide(),
        isrc: None,
        release: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_on_s3_survives_an_s3_outage_at_upload_time() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut weed) = Seaweed::start(&dir.path().join("weed"), 18300) else {
        return;
    };
    weed.wait_ready().await;
    let s3 = S3Config {
        endpoint: weed.endpoint.clone(),
        bucket: "cadenza".into(),
        region: "us-east-1".into(),
        access_key: seaweed::ACCESS_KEY.into(),
        secret_key: seaweed::SECRET_KEY.into(),
        path_style: true,
        part_bytes: MIN_PART_BYTES,
        prefix: String::new(),
    };
    let mut config = StackConfig::new(dir.path().join("data"));
    config.port_base = 0;
    config.s3 = Some(s3.clone());
    let stack = Stack::start(config).await.unwrap();
    let client = stack.client().unwrap();
    let bucket = S3Store::new(&s3);

    // Ingest and play with every object in the bucket and none on local disk.
    let view = ingest_file(
        &client,
        &stack.info,
        &fixture("stereo-44k1.flac"),
        &meta("On S3"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    for r in &view.renditions {
        let size = bucket
            .size(&ObjectKey::rendition(&r.file_id))
            .await
            .unwrap();
        assert_eq!(size, r.size);
    }
    assert!(!dir.path().join("data/objects/renditions").exists());
    let player = stack.info.player().await.unwrap();
    let report = player
        .play(&PlayOptions::new(view.track_id.clone(), Quality::High))
        .await
        .unwrap();
    assert!((report.decoded.duration().as_secs_f64() - 7.0).abs() < 0.05);

    // S3 goes away; a label uploads anyway. Every byte is accepted and staged, the
    // finishing PATCH cannot store the master, and the ingest says "unavailable".
    weed.kill();
    let master = fixture("mono.flac");
    let bytes = std::fs::read(&master).unwrap();
    let key = stack.info.label_key.as_str();
    let tus = |method: Method, url: &str, extra: &[(&'static str, String)], body: Vec<u8>| {
        let mut req = client::request(method, url, Some(key), full(body)).unwrap();
        req.headers_mut()
            .insert("tus-resumable", "1.0.0".parse().unwrap());
        for (k, v) in extra {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        req
    };
    let created = client
        .request(tus(
            Method::POST,
            &format!("{}/v1/uploads", stack.info.origin),
            &[("upload-length", bytes.len().to_string())],
            Vec::new(),
        ))
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let url = format!(
        "{}{}",
        stack.info.origin,
        created.headers()["location"].to_str().unwrap()
    );
    // The last PATCH cannot store the master: 503. Every byte is kept all the same.
    let patched = client
        .request(tus(
            Method::PATCH,
            &url,
            &[
                ("upload-offset", "0".into()),
                ("content-type", "application/offset+octet-stream".into()),
            ],
            bytes.clone(),
        ))
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::SERVICE_UNAVAILABLE);
    let head = client
        .request(tus(Method::HEAD, &url, &[], Vec::new()))
        .await
        .unwrap();
    assert_eq!(
        head.headers()["upload-offset"],
        bytes.len().to_string().as_str()
    );
    let status: UploadStatus = client::call_json::<(), _>(
        &client,
        Method::GET,
        &url,
        Some(key),
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(status.complete && !status.stored, "{status:?}");
    let receipt = UploadReceipt {
        upload_id: status.upload_id,
        size: status.length,
        sha256: status.sha256.unwrap(),
    };
    // The ingest cannot store it either while S3 is down.
    let err = submit(&client, &stack.info, &receipt, &meta("During the outage"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("503"), "{err:#}");

    // S3 returns: the same ingest now stores the staged master and the track plays.
    weed.restart().await;
    let created = submit(&client, &stack.info, &receipt, &meta("During the outage"))
        .await
        .unwrap();
    let view = wait_done(
        &client,
        &stack.info,
        &created.track_id,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    let stored = bucket
        .size(&ObjectKey::master(&receipt.upload_id))
        .await
        .unwrap();
    assert_eq!(stored, std::fs::metadata(&master).unwrap().len());
    let report = player
        .play(&PlayOptions::new(view.track_id.clone(), Quality::Low))
        .await
        .unwrap();
    assert!(report.decoded.frames > 0);
    stack.shutdown().await;
}
