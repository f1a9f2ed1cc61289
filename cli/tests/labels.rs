//! Label access: two labels with their own API keys cannot see, resume, terminate or ingest
//! each other's uploads, nor read each other's tracks; a revoked key stops working; ingest is
//! idempotent on the upload and on (ISRC, master), and the metadata a label sends comes back.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use cadenza::ingest::{Release, TrackMeta, submit, upload, wait_done};
use cadenza::stack::{ClusterInfo, Stack, StackConfig};
use cadenza_common::http::client::{self, HttpClient};
use cadenza_common::http::{empty, full};
use cadenza_common::{LabelKey, Territories, TrackStatus, TrackView};
use http::{Method, StatusCode};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/flac")
        .join(name)
}

async fn new_label(c: &HttpClient, info: &ClusterInfo, service: &str, name: &str) -> LabelKey {
    client::call_json(
        c,
        Method::POST,
        &format!("{}/internal/v1/labels", info.control_plane),
        Some(service),
        Some(&serde_json::json!({ "name": name })),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// The stack's client info as seen by a label holding `key`.
fn as_label(info: &ClusterInfo, key: &str) -> ClusterInfo {
    let mut info = info.clone();
    info.label_key = key.to_owned();
    // Each label keeps its own resume book.
    info.data_dir = None;
    info
}

async fn status_of(c: &HttpClient, url: &str, method: Method, key: &str) -> StatusCode {
    let mut req = client::request(method, url, Some(key), empty()).unwrap();
    req.headers_mut()
        .insert("tus-resumable", "1.0.0".parse().unwrap());
    c.request(req).await.unwrap().status()
}

/// "ok", or the error code the control plane refused a grant with.
async fn grant(c: &HttpClient, info: &ClusterInfo, track: &cadenza_common::TrackId) -> String {
    let url = format!("{}/v1/playback", info.control_plane);
    let token = info.player().await.unwrap().access_token().await.unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "track_id": track })).unwrap();
    let resp = c
        .request(client::request(Method::POST, &url, Some(&token), full(body)).unwrap())
        .await
        .unwrap();
    if resp.status().is_success() {
        return "ok".into();
    }
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let bytes = client::read_all(resp.into_body(), &url).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

/// Ids of the tracks `GET /v1/search?q=…` finds.
async fn search_tracks(c: &HttpClient, info: &ClusterInfo, q: &str) -> Vec<String> {
    let url = format!("{}/v1/search?q={q}&limit=10", info.control_plane);
    let resp = c
        .request(client::request(Method::GET, &url, None, cadenza_common::http::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = client::read_all(resp.into_body(), &url).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "track")
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}

fn meta(title: &str, isrc: Option<&str>) -> TrackMeta {
    TrackMeta {
        title: title.into(),
        artist: "Test".into(),
        territories: Territories::worldwide(),
        isrc: isrc.map(str::to_owned),
        release: Release {
            album: Some("Fixtures, Vol. 1".into()),
            track_number: Some(3),
            featuring: vec!["Guest One".into(), "Guest Two".into()],
            release_at: Some(1_800_000_000),
            ..Default::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_see_only_their_own_uploads_and_tracks() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    let stack = Stack::start(config).await.unwrap();
    let c = stack.client().unwrap();
    let service = cadenza::stack::service_token(dir.path()).unwrap();
    let a = new_label(&c, &stack.info, &service, "Label A").await;
    let b = new_label(&c, &stack.info, &service, "Label B").await;
    assert_ne!(a.label_id, b.label_id);
    let (info_a, info_b) = (
        as_label(&stack.info, &a.api_key),
        as_label(&stack.info, &b.api_key),
    );

    // A uploads and ingests a master with full metadata.
    let master = fixture("stereo-44k1.flac");
    let receipt = upload(&c, &info_a, &master, Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    let created = submit(
        &c,
        &info_a,
        &receipt,
        &meta("Mine", Some("gb-aye-63-00001")),
    )
    .await
    .unwrap();
    assert!(!created.duplicate);
    let view = wait_done(&c, &info_a, &created.track_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    assert_eq!(view.label_id.as_deref(), Some(a.label_id.as_str()));
    assert_eq!(
        view.isrc.as_deref(),
        Some("GBAYE6300001"),
        "ISRC normalised"
    );
    assert_eq!(view.album.as_deref(), Some("Fixtures, Vol. 1"));
    assert_eq!(view.track_number, Some(3));
    assert_eq!(view.featuring, ["Guest One", "Guest Two"]);
    assert_eq!(view.release_at, Some(1_800_000_000));

    // B cannot see A's upload (HEAD, GET, PATCH, DELETE all look like "no such upload"),
    // cannot ingest it, and cannot read A's track.
    let upload_url = format!("{}/v1/uploads/{}", stack.info.origin, receipt.upload_id);
    for method in [Method::HEAD, Method::GET, Method::DELETE] {
        assert_eq!(
            status_of(&c, &upload_url, method.clone(), &b.api_key).await,
            StatusCode::NOT_FOUND,
            "{method}"
        );
    }
    let mut patch = client::request(
        Method::PATCH,
        &upload_url,
        Some(&b.api_key),
        full(&b"x"[..]),
    )
    .unwrap();
    for (k, v) in [
        ("tus-resumable", "1.0.0"),
        ("upload-offset", "0"),
        ("content-type", "application/offset+octet-stream"),
    ] {
        patch.headers_mut().insert(k, v.parse().unwrap());
    }
    assert_eq!(
        c.request(patch).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let err = submit(&c, &info_b, &receipt, &meta("Stolen", None))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("404"), "{err:#}");
    let track_url = format!("{}/v1/tracks/{}", stack.info.origin, created.track_id);
    assert_eq!(
        status_of(&c, &track_url, Method::GET, &b.api_key).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&c, &track_url, Method::GET, &a.api_key).await,
        StatusCode::OK
    );

    // Resubmitting the same upload, or the same ISRC with the same master in a new upload,
    // returns the same track without a second transcode.
    let again = submit(&c, &info_a, &receipt, &meta("Mine", Some("GBAYE6300001")))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.track_id, created.track_id);
    let second = upload(&c, &info_a, &master, Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    assert_ne!(second.upload_id, receipt.upload_id);
    let again = submit(
        &c,
        &info_a,
        &second,
        &meta("Mine again", Some("GB-AYE-63-00001")),
    )
    .await
    .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.track_id, created.track_id);
    // The same ISRC and master from label B is a conflict, not B's copy of A's track.
    let theirs = upload(&c, &info_b, &master, Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    let err = submit(&c, &info_b, &theirs, &meta("Copy", Some("GBAYE6300001")))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("409"), "{err:#}");
    // Without an ISRC, a different upload of the same bytes is a new track.
    let mut released = meta("Theirs", None);
    released.release.release_at = Some(1_700_000_000); // in the past: playable
    let fresh = submit(&c, &info_b, &theirs, &released).await.unwrap();
    assert!(!fresh.duplicate);
    let view = wait_done(&c, &info_b, &fresh.track_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    let store = stack.control_plane.store();
    let view: TrackView = store.track(&fresh.track_id).await.unwrap().unwrap();
    assert_eq!(view.label_id.as_deref(), Some(b.label_id.as_str()));

    // Search finds B's track within a second of its being ready, with a typo in the
    // prefix ("Thiers" for "Theirs": a transposition); A's embargoed track is not found.
    let ready_at = std::time::Instant::now();
    loop {
        let found = search_tracks(&c, &stack.info, "thiers").await;
        if found == [fresh.track_id.to_string()] {
            break;
        }
        assert!(
            ready_at.elapsed() < Duration::from_secs(1),
            "not searchable a second after ready: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(search_tracks(&c, &stack.info, "mine").await.is_empty());

    // Rights at grant time: A's track is embargoed until its release time; B's plays.
    assert_eq!(grant(&c, &stack.info, &created.track_id).await, "embargoed");
    assert_eq!(grant(&c, &stack.info, &fresh.track_id).await, "ok");
    // Each grant is a play, written to the catalogue in batches.
    assert_eq!(stack.control_plane.flush_plays().await.unwrap(), 1);
    assert_eq!(stack.control_plane.flush_plays().await.unwrap(), 0);
    let docs = store.search_docs(0).await.unwrap();
    let played = docs
        .iter()
        .find(|d| d.hit.id == fresh.track_id.as_str())
        .unwrap();
    assert_eq!(played.hit.popularity, 1);
    // A cannot take B's track down; B can, and from then on no grant is issued.
    let theirs_url = format!("{}/v1/tracks/{}", stack.info.origin, fresh.track_id);
    assert_eq!(
        status_of(&c, &theirs_url, Method::DELETE, &a.api_key).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(grant(&c, &stack.info, &fresh.track_id).await, "ok");
    assert_eq!(
        status_of(&c, &theirs_url, Method::DELETE, &b.api_key).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(grant(&c, &stack.info, &fresh.track_id).await, "taken_down");
    assert!(search_tracks(&c, &stack.info, "theirs").await.is_empty());
    let view = store.track(&fresh.track_id).await.unwrap().unwrap();
    assert!(view.taken_down_at.is_some());

    // Unknown and revoked keys are refused.
    assert_eq!(
        status_of(
            &c,
            &track_url,
            Method::GET,
            "cdz_0000000000000000_000000000000000000000000000000000000000000000000"
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    let revoked: serde_json::Value = client::call_json(
        &c,
        Method::POST,
        &format!("{}/internal/v1/label-keys/revoke", stack.info.control_plane),
        Some(&service),
        Some(&serde_json::json!({ "api_key": b.api_key })),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(revoked["revoked"], true);
    assert!(store.verify_label_key(&b.api_key).await.unwrap().is_none());
    stack.shutdown().await;
    // An origin that has not vouched for the key recently refuses it at once (a running
    // origin trusts a verified key for up to a minute).
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.workers = 0;
    let stack = Stack::start(config).await.unwrap();
    let track_url = format!("{}/v1/tracks/{}", stack.info.origin, created.track_id);
    assert_eq!(
        status_of(&c, &track_url, Method::GET, &b.api_key).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&c, &track_url, Method::GET, &a.api_key).await,
        StatusCode::OK
    );
    stack.shutdown().await;
}
