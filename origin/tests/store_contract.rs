//! One test suite for every object store backend: the local directory, and S3 through
//! aws-sdk-s3 against a real SeaweedFS server. Then the fault S3 adds: killed mid-multipart,
//! it must show no object at all, and the staged file must survive for the retry.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "../../tests/support/seaweed.rs"]
mod seaweed;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cadenza_common::{FileId, UploadId};
use cadenza_origin::{
    LocalDirStore, MIN_PART_BYTES, ObjectKey, ObjectStore, S3Config, S3Store, StoreError,
};
use http_body_util::BodyExt;
use seaweed::Seaweed;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn read(store: &dyn ObjectStore, key: &ObjectKey, offset: u64, len: u64) -> (u64, Vec<u8>) {
    let r = store.read(key, offset, len).await.unwrap();
    let bytes = r.body.collect().await.unwrap().to_bytes();
    (r.size, bytes.to_vec())
}

/// What every backend promises.
async fn contract(store: &dyn ObjectStore, scratch: &Path) {
    let stage = |name: &str, bytes: &[u8]| {
        let p = scratch.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    // A small object: visible after put, the staged file consumed, any range readable.
    let small = noise(300_000, 1);
    let key = ObjectKey::rendition(&FileId::random());
    assert!(matches!(store.size(&key).await, Err(StoreError::NotFound)));
    assert!(matches!(
        store.read(&key, 0, 1).await.err(),
        Some(StoreError::NotFound)
    ));
    let path = stage("small", &small);
    store.put_file(&key, &path).await.unwrap();
    assert!(!path.exists(), "the staged file is consumed");
    assert_eq!(store.size(&key).await.unwrap(), small.len() as u64);
    for (off, len) in [(0u64, 300_000u64), (0, 1), (1234, 56_789), (299_999, 1)] {
        let (size, got) = read(store, &key, off, len).await;
        assert_eq!(size, small.len() as u64);
        assert!(
            got == small[off as usize..(off + len) as usize],
            "range {off}+{len}"
        );
    }

    // Creates are conditional: a second put under the same key is refused, the first bytes
    // stay, and the second staged file is left for the caller.
    let other = stage("other", &noise(1000, 2));
    assert!(matches!(
        store.put_file(&key, &other).await,
        Err(StoreError::Exists)
    ));
    assert!(other.exists());
    assert_eq!(store.size(&key).await.unwrap(), small.len() as u64);

    // A large object (more than two 5 MiB parts on S3): ranges across part boundaries.
    let large = noise(2 * MIN_PART_BYTES as usize + 777_777, 3);
    let key = ObjectKey::master(&UploadId::random());
    store.put_file(&key, &stage("large", &large)).await.unwrap();
    assert_eq!(store.size(&key).await.unwrap(), large.len() as u64);
    let boundary = MIN_PART_BYTES;
    for (off, len) in [
        (boundary - 10, 20),
        (2 * boundary - 1, 2),
        (0, large.len() as u64),
        (large.len() as u64 - 5, 5),
    ] {
        let (_, got) = read(store, &key, off, len).await;
        assert!(
            got == large[off as usize..(off + len) as usize],
            "range {off}+{len}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(dir.path().join("objects"))
        .await
        .unwrap();
    let scratch = dir.path().join("objects/.staging");
    std::fs::create_dir_all(&scratch).unwrap();
    contract(&store, &scratch).await;
}

fn s3_config(endpoint: &str, bucket: &str) -> S3Config {
    S3Config {
        endpoint: endpoint.to_owned(),
        bucket: bucket.to_owned(),
        region: "us-east-1".into(),
        access_key: seaweed::ACCESS_KEY.into(),
        secret_key: seaweed::SECRET_KEY.into(),
        path_style: true,
        part_bytes: MIN_PART_BYTES,
        prefix: "cadenza/".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_keeps_the_contract_on_seaweedfs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(weed) = Seaweed::start(&dir.path().join("weed"), 18100) else {
        return;
    };
    weed.wait_ready().await;
    let store = S3Store::new(&s3_config(&weed.endpoint, "contract"));
    store.ensure_bucket().await.unwrap();
    store.ensure_bucket().await.unwrap(); // idempotent
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    contract(&store, &scratch).await;

    // Wrong credentials are an error, not a missing object.
    let mut bad = s3_config(&weed.endpoint, "contract");
    bad.secret_key = "wrong".into();
    let err = S3Store::new(&bad)
        .size(&ObjectKey::master(&UploadId::random()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_killed_mid_multipart_shows_no_object_and_the_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut weed) = Seaweed::start(&dir.path().join("weed"), 18200) else {
        return;
    };
    weed.wait_ready().await;
    let store = std::sync::Arc::new(S3Store::new(&s3_config(&weed.endpoint, "faults")));
    store.ensure_bucket().await.unwrap();
    let bytes = noise(8 * MIN_PART_BYTES as usize, 4);
    let path = dir.path().join("master.bin");
    std::fs::write(&path, &bytes).unwrap();
    let key = ObjectKey::master(&UploadId::random());

    let parts = store.parts_sent();
    let putting = {
        let (store, key, path) = (store.clone(), key.clone(), path.clone());
        tokio::spawn(async move { store.put_file(&key, &path).await })
    };
    // Kill S3 once at least one part is in (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    while parts.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no part was sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    weed.kill();
    let result = putting.await.unwrap();
    assert!(result.is_err(), "a put with S3 dead mid-way succeeded");
    assert!(
        parts.load(Ordering::Relaxed) < 8,
        "all parts went before the kill"
    );
    assert!(path.exists(), "the staged file must survive a failed put");
    // While S3 is down, the store says so (503 material), never "not found".
    assert!(matches!(
        store.size(&key).await,
        Err(StoreError::Backend(_) | StoreError::Io(_))
    ));

    weed.restart().await;
    assert!(
        matches!(store.size(&key).await, Err(StoreError::NotFound)),
        "a half-written object is visible"
    );
    store.put_file(&key, &path).await.unwrap();
    let r = store.read(&key, 0, bytes.len() as u64).await.unwrap();
    let got = r.body.collect().await.unwrap().to_bytes();
    assert!(got == bytes, "the retried object differs");
}
