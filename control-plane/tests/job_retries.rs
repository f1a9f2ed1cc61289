//! A failed attempt is retried with exponential backoff, and after the last attempt the job
//! and its track fail with the reason stored. Time is passed in, so nothing here sleeps.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use cadenza_common::{IngestRequest, Territories, TrackRegistration, TrackStatus, UploadId};
use cadenza_control_plane::{Released, Store, StoreError, retry_delay};

mod support;

#[test]
fn retry_delays_double_and_are_capped() {
    let base = Duration::from_secs(5);
    let delays: Vec<u64> = (1..=5).map(|a| retry_delay(a, base).as_secs()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80]);
    assert_eq!(retry_delay(40, base), Duration::from_secs(900));
}

#[tokio::test]
async fn a_failing_job_is_retried_with_backoff_then_failed_with_its_reason() {
    for t in support::stores().await {
        eprintln!("on {}", t.name());
        retried_then_failed(&t.store).await;
    }
}

async fn retried_then_failed(store: &Store) {
    let label = store.ensure_label("L", 0).await.unwrap();
    let reg = TrackRegistration {
        ingest: IngestRequest {
            upload_id: UploadId::random(),
            title: "T".into(),
            artist: "A".into(),
            featuring: Vec::new(),
            isrc: None,
            territories: Territories::worldwide(),
            album: None,
            track_number: None,
            release_at: None,
            licences: Vec::new(),
        },
        label_id: label,
        master_sha256: "00".repeat(32),
    };
    let track = store.create_track(&reg, 1000).await.unwrap().track_id;
    let (lease, max, base) = (Duration::from_secs(60), 3, Duration::from_secs(5));

    let first = store.lease_job(1000, lease, max).await.unwrap().unwrap();
    assert_eq!(first.attempt, 1);
    let out = store
        .release_job(&first.job_id, 1, "origin unreachable", 1010, max, base)
        .await
        .unwrap();
    assert_eq!(out, Released::Retry { retry_at: 1015 });
    assert_eq!(
        store.track(&track).await.unwrap().unwrap().status,
        TrackStatus::Received
    );
    // A stale attempt cannot hand the job back twice.
    assert!(matches!(
        store
            .release_job(&first.job_id, 1, "again", 1011, max, base)
            .await,
        Err(StoreError::JobNotLeased(_))
    ));
    // Not before the backoff has passed.
    assert!(store.lease_job(1014, lease, max).await.unwrap().is_none());
    let second = store.lease_job(1015, lease, max).await.unwrap().unwrap();
    assert_eq!(second.attempt, 2);
    let out = store
        .release_job(&second.job_id, 2, "origin unreachable", 1020, max, base)
        .await
        .unwrap();
    assert_eq!(out, Released::Retry { retry_at: 1030 });
    assert!(store.lease_job(1029, lease, max).await.unwrap().is_none());
    let third = store.lease_job(1030, lease, max).await.unwrap().unwrap();
    assert_eq!(third.attempt, 3);
    let out = store
        .release_job(&third.job_id, 3, "origin answered 503", 1040, max, base)
        .await
        .unwrap();
    let Released::Failed { reason } = out else {
        panic!("not failed: {out:?}")
    };
    assert!(
        reason.contains("3 attempts") && reason.contains("503"),
        "{reason}"
    );
    let view = store.track(&track).await.unwrap().unwrap();
    assert_eq!(view.status, TrackStatus::Failed);
    assert_eq!(view.failure.as_deref(), Some(reason.as_str()));
    assert!(store.lease_job(5000, lease, max).await.unwrap().is_none());
    assert_eq!(
        store.job_state(&track).await.unwrap(),
        Some(("failed".into(), 3))
    );
}
