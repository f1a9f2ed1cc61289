//! The label-side client: upload a master (tus, resumable), submit its metadata, wait for the
//! outcome.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use cadenza_common::http::client::{self, HttpClient};
use cadenza_common::{
    IngestRequest, IngestResponse, Licence, Territories, TrackId, TrackStatus, TrackView,
    UploadReceipt,
};
use http::Method;

use crate::stack::ClusterInfo;
use crate::tus_client::{self, DEFAULT_CHUNK, TusTarget};

/// Metadata sent with a master.
#[derive(Debug, Clone)]
pub struct TrackMeta {
    pub title: String,
    pub artist: String,
    pub territories: Territories,
    pub isrc: Option<String>,
    /// Release details: album, position, featured artists, release time.
    pub release: Release,
}

/// The optional release details of a track.
#[derive(Debug, Clone, Default)]
pub struct Release {
    pub album: Option<String>,
    pub track_number: Option<u32>,
    pub featuring: Vec<String>,
    /// Seconds since the epoch.
    pub release_at: Option<u64>,
    /// Licence windows; none means the territories, for all time.
    pub licences: Vec<Licence>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Uploads the master at `path` over tus, resumably; `sent` counts committed bytes. When the
/// cluster was loaded from a data directory, an interrupted upload is remembered there and
/// resumed by the next run on the same file.
pub async fn upload(
    client: &HttpClient,
    info: &ClusterInfo,
    path: &Path,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<UploadReceipt> {
    let target = TusTarget {
        origin: &info.origin,
        key: &info.label_key,
        chunk: DEFAULT_CHUNK,
        resume_book: info
            .data_dir
            .as_ref()
            .map(|d| d.join("uploads-in-progress.json")),
    };
    tus_client::upload(client, &target, path, sent).await
}

/// Submits metadata for an upload.
pub async fn submit(
    client: &HttpClient,
    info: &ClusterInfo,
    receipt: &UploadReceipt,
    meta: &TrackMeta,
) -> anyhow::Result<IngestResponse> {
    let req = IngestRequest {
        upload_id: receipt.upload_id.clone(),
        title: meta.title.clone(),
        artist: meta.artist.clone(),
        isrc: meta.isrc.clone(),
        territories: meta.territories.clone(),
        album: meta.release.album.clone(),
        track_number: meta.release.track_number,
        featuring: meta.release.featuring.clone(),
        release_at: meta.release.release_at,
        licences: meta.release.licences.clone(),
    };
    let url = format!("{}/v1/ingest", info.origin);
    Ok(client::call_json(
        client,
        Method::POST,
        &url,
        Some(&info.label_key),
        Some(&req),
        CALL_TIMEOUT,
    )
    .await?)
}

/// Polls the track until it is ready or failed, or `timeout` passes.
pub async fn wait_done(
    client: &HttpClient,
    info: &ClusterInfo,
    track: &TrackId,
    timeout: Duration,
) -> anyhow::Result<TrackView> {
    let url = format!("{}/v1/tracks/{track}", info.origin);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let view: TrackView = client::call_json::<(), _>(
            client,
            Method::GET,
            &url,
            Some(&info.label_key),
            None,
            CALL_TIMEOUT,
        )
        .await?;
        if matches!(view.status, TrackStatus::Ready | TrackStatus::Failed) {
            return Ok(view);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("track {track} still {:?} after {timeout:?}", view.status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Upload + submit + wait, printing progress to stderr when `show_progress`.
pub async fn ingest_file(
    client: &HttpClient,
    info: &ClusterInfo,
    path: &Path,
    meta: &TrackMeta,
    show_progress: bool,
) -> anyhow::Result<TrackView> {
    let sent = Arc::new(AtomicU64::new(0));
    let total = tokio::fs::metadata(path).await?.len();
    let progress = show_progress.then(|| {
        let sent = sent.clone();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tokio::spawn(async move {
            loop {
                let done = sent.load(Ordering::Relaxed);
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                let bar = "#".repeat((pct / 5) as usize);
                eprint!("\r  uploading {name}: [{bar:<20}] {pct:>3}% ({done}/{total} bytes)");
                if done >= total {
                    eprintln!();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let receipt = upload(client, info, path, sent.clone()).await;
    if let Some(p) = progress {
        sent.store(total, Ordering::Relaxed);
        let _ = p.await;
    }
    let receipt = receipt?;
    let created = submit(client, info, &receipt, meta).await?;
    if show_progress {
        eprintln!("  track {} received; transcoding…", created.track_id);
    }
    wait_done(client, info, &created.track_id, Duration::from_secs(1800)).await
}
