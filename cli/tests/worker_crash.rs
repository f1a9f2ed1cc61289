//! A transcode worker killed mid-job (SIGKILL, a real process) loses nothing: its lease
//! expires, another worker finishes the job once, and no duplicate renditions exist.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use cadenza::ingest::{TrackMeta, submit, upload, wait_done};
use cadenza::stack::{Stack, StackConfig, run_worker};
use cadenza_common::http::Shutdown;
use cadenza_common::{Territories, TrackStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_is_finished_once_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.workers = 0;
    config.job_lease = Duration::from_secs(4);
    let stack = Stack::start(config).await.unwrap();
    let client = stack.client().unwrap();

    // A long master, so the worker is surely mid-job when it dies.
    let master = dir.path().join("long.wav");
    cadenza::synth::write_demo_master(&master, 120).unwrap();

    let mut doomed = std::process::Command::new(env!("CARGO_BIN_EXE_cadenza"))
        .args(["worker", "--lease-secs", "4", "--data"])
        .arg(dir.path())
        .spawn()
        .unwrap();

    let receipt = upload(&client, &stack.info, &master, Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    let meta = TrackMeta {
        title: "Long".into(),
        artist: "Test".into(),
        territories: Territories::worldwide(),
        isrc: None,
        release: Default::default(),
    };
    let track = submit(&client, &stack.info, &receipt, &meta)
        .await
        .unwrap()
        .track_id;

    // Wait (bounded) for the first worker to take the job, then kill it.
    let store = stack.control_plane.store();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((state, 1)) = store.job_state(&track).await.unwrap() {
            assert_eq!(state, "leased");
            break;
        }
        assert!(Instant::now() < deadline, "no worker leased the job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let view = store.track(&track).await.unwrap().unwrap();
    assert_eq!(
        view.status,
        TrackStatus::Transcoding,
        "finished before the kill"
    );

    // A second worker picks the job up once the dead worker's lease runs out.
    let (trigger, shutdown) = Shutdown::new();
    let data = dir.path().to_path_buf();
    let rescuer =
        tokio::spawn(async move { run_worker(&data, Duration::from_secs(4), shutdown).await });
    let view = wait_done(&client, &stack.info, &track, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(view.status, TrackStatus::Ready, "{:?}", view.failure);
    assert_eq!(view.renditions.len(), 3);
    assert_eq!(
        store.job_state(&track).await.unwrap(),
        Some(("done".into(), 2))
    );
    let stored = std::fs::read_dir(dir.path().join("objects/renditions"))
        .unwrap()
        .count();
    assert_eq!(stored, 3, "renditions in the object store");

    trigger.trigger();
    rescuer.await.unwrap().unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_is_retried_with_backoff_then_failed_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path());
    config.port_base = 0;
    config.workers = 0;
    config.job_retry_backoff = Duration::from_secs(1);
    let stack = Stack::start(config).await.unwrap();
    let client = stack.client().unwrap();
    let master = dir.path().join("short.wav");
    cadenza::synth::write_demo_master(&master, 2).unwrap();
    let receipt = upload(&client, &stack.info, &master, Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    let meta = TrackMeta {
        title: "Lost master".into(),
        artist: "Test".into(),
        territories: Territories::worldwide(),
        isrc: None,
        release: Default::default(),
    };
    let track = submit(&client, &stack.info, &receipt, &meta)
        .await
        .unwrap()
        .track_id;
    // The master vanishes from the store before any worker runs: every attempt fails to
    // fetch it, and each is handed back and retried after 1 s, then 2 s.
    std::fs::remove_file(
        dir.path()
            .join("objects/masters")
            .join(receipt.upload_id.as_str()),
    )
    .unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let data = dir.path().to_path_buf();
    let started = Instant::now();
    let worker =
        tokio::spawn(async move { run_worker(&data, Duration::from_secs(60), shutdown).await });
    let view = wait_done(&client, &stack.info, &track, Duration::from_secs(60))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(view.status, TrackStatus::Failed);
    let reason = view.failure.unwrap();
    assert!(
        reason.contains("after 3 attempts") && reason.contains("404"),
        "{reason}"
    );
    // Three attempts with 1 s and 2 s between them, far sooner than a 60 s lease.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let store = stack.control_plane.store();
    assert_eq!(
        store.job_state(&track).await.unwrap(),
        Some(("failed".into(), 3))
    );
    trigger.trigger();
    worker.await.unwrap().unwrap();
    stack.shutdown().await;
}
