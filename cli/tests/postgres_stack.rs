//! The whole stack with its catalogue on PostgreSQL: a master is ingested, transcoded and
//! played; a restarted stack on the same database still has the track and plays it, after
//! re-sealing its content keys under a new master key.
//! Needs `CADENZA_POSTGRES_URL` (an admin URL, as `.ci/postgres.sh start` prints).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "../../control-plane/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use cadenza::ingest::{TrackMeta, ingest_file};
use cadenza::stack::{Stack, StackConfig};
use cadenza_common::{Quality, Territories, TrackStatus};
use cadenza_player::PlayOptions;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/flac")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_runs_on_postgres_and_survives_a_restart() {
    let Ok(admin) = std::env::var("CADENZA_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CADENZA_REQUIRE_PEERS").is_none(),
            "CADENZA_POSTGRES_URL is required (CADENZA_REQUIRE_PEERS is set)"
        );
        eprintln!("SKIPPED: PostgreSQL (CADENZA_POSTGRES_URL is not set)");
        return;
    };
    let url = support::fresh_postgres_database(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = StackConfig::new(dir.path().join("data"));
        c.port_base = 0;
        c.database_url = Some(url.clone());
        c
    };
    let stack = Stack::start(config()).await.unwrap();
    let client = stack.client().unwrap();
    let meta = TrackMeta {
        title: "On PostgreSQL".into(),
        artist: "Test".into(),
        territories: Territories::worldwide(),
        isrc: None,
        release: Default::default(),
    };
    let view = ingest_file(
        &client,
        &stack.info,
        &fixture("stereo-44k1.flac"),
        &meta,
        false,
    )
    .await
    .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    // Nothing of the catalogue went to the data directory.
    assert!(!dir.path().join("data/catalogue.sqlite").exists());
    let sealed_under = sealed_keys(&stack).await;
    assert_eq!(
        sealed_under.len(),
        1,
        "every key under one master key: {sealed_under:?}"
    );
    stack.shutdown().await;

    // Restart with a new master key: every content key is sealed again, the audio untouched.
    let mut rotating = config();
    rotating.rotate_master_key = true;
    let stack = Stack::start(rotating).await.unwrap();
    let now_under = sealed_keys(&stack).await;
    assert_eq!(now_under.len(), 1);
    assert_ne!(now_under, sealed_under);
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("data/secrets.json")).unwrap())
            .unwrap();
    let masters = secrets["master_keys"].as_array().unwrap();
    assert_eq!(
        masters.len(),
        1,
        "the old master key is dropped once all are re-sealed"
    );
    assert!(
        masters[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", now_under[0]))
    );
    let player = stack.info.player().await.unwrap();
    let report = player
        .play(&PlayOptions::new(view.track_id.clone(), Quality::Normal))
        .await
        .unwrap();
    assert!((report.decoded.duration().as_secs_f64() - 7.0).abs() < 0.05);
    stack.shutdown().await;
}

/// The master key ids the stack's content keys are sealed under; checks none is in the clear.
async fn sealed_keys(stack: &Stack) -> Vec<String> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT key_hex, iv_hex, sealed_key FROM renditions")
        .fetch_all(stack.control_plane.store().pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.get::<String, _>("key_hex"), "");
            assert_eq!(r.get::<String, _>("iv_hex"), "");
            let sealed: String = r.get("sealed_key");
            sealed.split(':').nth(1).unwrap().to_owned()
        })
        .collect();
    ids.dedup();
    ids
}
