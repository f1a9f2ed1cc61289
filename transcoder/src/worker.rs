//! The transcode worker: lease a job from the control plane, fetch the master from the
//! origin, transcode, store the renditions at the origin, report the outcome.
//!
//! A worker that dies mid-job simply stops extending its lease; the control plane hands the
//! job to another worker when the lease expires. Renditions are content-addressed, so a
//! retried job that stores the same bytes again is harmless.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cadenza_common::http::Shutdown;
use cadenza_common::http::client::{self, ClientError, HttpClient};
use cadenza_common::{JobLease, JobOutcome};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::{TranscodeError, TranscodeOptions, seal, transcode};

/// Where the worker finds its peers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Control plane base URL.
    pub control_plane: String,
    /// Origin base URL.
    pub origin: String,
    /// Bearer token for internal endpoints.
    pub service_token: String,
    /// Directory for masters being transcoded.
    pub scratch_dir: PathBuf,
    /// How long one lease request waits for a job before asking again.
    pub lease_wait: Duration,
    /// How often a running job's lease is extended; well under the control plane's lease.
    pub heartbeat: Duration,
}

/// Why a job could not be worked; the job stays leased and is retried after the lease ends.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A call to the control plane or origin failed.
    #[error(transparent)]
    Http(#[from] ClientError),
    /// Local I/O failed.
    #[error("scratch I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The transcode failed for a reason other than the master.
    #[error(transparent)]
    Transcode(#[from] TranscodeError),
    /// The transcode task panicked or was cancelled.
    #[error("transcode task failed: {0}")]
    Join(String),
    /// The lease expired (this worker stalled) and the job may belong to another worker.
    #[error("lease lost")]
    LeaseLost,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A rendition upload may be hundreds of MB for a long track.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// A request body streaming the file at `path`, and its length.
async fn file_body(path: &std::path::Path) -> std::io::Result<(cadenza_common::http::Body, u64)> {
    let file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    Ok((cadenza_common::http::file_body(file, len), len))
}
/// Runs jobs until `shutdown` fires.
pub async fn run(config: WorkerConfig, client: HttpClient, mut shutdown: Shutdown) {
    let config = Arc::new(config);
    if let Err(e) = tokio::fs::create_dir_all(&config.scratch_dir).await {
        tracing::error!(error = %e, dir = %config.scratch_dir.display(), "cannot create scratch directory");
        return;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let lease = tokio::select! {
            _ = shutdown.wait() => return,
            lease = lease(&config, &client) => lease,
        };
        match lease {
            Ok(Some(job)) => {
                backoff = Duration::from_millis(100);
                let job_id = job.job_id.clone();
                match work(&config, &client, job.clone()).await {
                    Ok(()) => tracing::info!(job = %job_id, "job done"),
                    // Someone else owns the job now; nothing to hand back.
                    Err(WorkerError::LeaseLost) => {
                        tracing::warn!(job = %job_id, "lease lost; job abandoned")
                    }
                    Err(e) => {
                        tracing::warn!(job = %job_id, error = %e, "attempt failed; handing the job back");
                        release(&config, &client, &job, &e.to_string()).await;
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot lease jobs; retrying");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Hands a failed attempt back so the control plane retries it with backoff (or fails it
/// after the last attempt). If this call fails too, the lease simply runs out.
async fn release(config: &WorkerConfig, client: &HttpClient, job: &JobLease, reason: &str) {
    let url = format!(
        "{}/internal/v1/jobs/{}/release",
        config.control_plane, job.job_id
    );
    let body = serde_json::json!({ "attempt": job.attempt, "reason": reason });
    let answer: Result<serde_json::Value, ClientError> = client::call_json(
        client,
        Method::POST,
        &url,
        Some(&config.service_token),
        Some(&body),
        CALL_TIMEOUT,
    )
    .await;
    match answer {
        Ok(v) => tracing::info!(job = %job.job_id, outcome = %v, "job handed back"),
        Err(e) => tracing::warn!(job = %job.job_id, error = %e, "handing the job back failed"),
    }
}

async fn lease(
    config: &WorkerConfig,
    client: &HttpClient,
) -> Result<Option<JobLease>, ClientError> {
    let url = format!(
        "{}/internal/v1/jobs/lease?wait_ms={}",
        config.control_plane,
        config.lease_wait.as_millis()
    );
    let req = client::request(
        Method::POST,
        &url,
        Some(&config.service_token),
        cadenza_common::http::empty(),
    )?;
    let resp = client::send(client, req, config.lease_wait + CALL_TIMEOUT).await?;
    if resp.status() == StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let bytes = client::read_all(resp.into_body(), &url).await?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ClientError::Decode { url, source })
}

/// Does one job end to end, extending its lease while it runs; gives up if the lease is lost.
pub async fn work(
    config: &WorkerConfig,
    client: &HttpClient,
    job: JobLease,
) -> Result<(), WorkerError> {
    tokio::select! {
        done = work_leased(config, client, job.clone()) => done,
        () = keep_lease(config, client, &job) => Err(WorkerError::LeaseLost),
    }
}

/// Extends the lease every `config.heartbeat`; returns only when the lease is lost.
async fn keep_lease(config: &WorkerConfig, client: &HttpClient, job: &JobLease) {
    let url = format!(
        "{}/internal/v1/jobs/{}/heartbeat",
        config.control_plane, job.job_id
    );
    let beat = serde_json::json!({ "attempt": job.attempt });
    loop {
        tokio::time::sleep(config.heartbeat).await;
        let sent: Result<serde_json::Value, ClientError> = client::call_json(
            client,
            Method::POST,
            &url,
            Some(&config.service_token),
            Some(&beat),
            CALL_TIMEOUT,
        )
        .await;
        match sent {
            Ok(_) => {}
            Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
                tracing::warn!(job = %job.job_id, "lease lost; abandoning the job");
                return;
            }
            // The control plane may be briefly away; the lease has slack for that.
            Err(e) => tracing::warn!(job = %job.job_id, error = %e, "heartbeat failed"),
        }
    }
}

async fn work_leased(
    config: &WorkerConfig,
    client: &HttpClient,
    job: JobLease,
) -> Result<(), WorkerError> {
    tracing::info!(job = %job.job_id, track = %job.track_id, attempt = job.attempt, "transcoding");
    let master = config.scratch_dir.join(format!("{}.master", job.job_id));
    fetch_master(config, client, &job, &master).await?;
    let seed = u32::from_str_radix(&job.upload_id.as_str()[..8], 16).unwrap_or(0);
    let options = TranscodeOptions {
        serial_seed: seed,
        spool_dir: Some(config.scratch_dir.clone()),
        ..Default::default()
    };
    let path = master.clone();
    let result = tokio::task::spawn_blocking(move || transcode(&path, &options))
        .await
        .map_err(|e| WorkerError::Join(e.to_string()))?;
    let _ = tokio::fs::remove_file(&master).await;
    let outcome = match result {
        Ok(done) => {
            let mut renditions = Vec::with_capacity(done.renditions.len());
            for plain in done.renditions {
                // Sealing reads and writes whole files: off the async threads. Each spool
                // file is removed as soon as its value is dropped.
                let sealed = tokio::task::spawn_blocking(move || seal(&plain))
                    .await
                    .map_err(|e| WorkerError::Join(e.to_string()))??;
                let url = format!(
                    "{}/internal/v1/objects/{}",
                    config.origin, sealed.record.file_id
                );
                let (body, len) = file_body(sealed.path()).await?;
                let mut req =
                    client::request(Method::PUT, &url, Some(&config.service_token), body)?;
                req.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, len.into());
                client::send(client, req, UPLOAD_TIMEOUT).await?;
                renditions.push(sealed.record);
            }
            JobOutcome::Completed {
                renditions,
                master_frames: done.master_frames,
                master_sample_rate: done.master.sample_rate,
                loudness: done.loudness,
                features: done.features,
            }
        }
        Err(e) if e.is_permanent() => {
            tracing::info!(job = %job.job_id, reason = %e, "master refused");
            JobOutcome::Failed {
                reason: e.to_string(),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let url = format!(
        "{}/internal/v1/jobs/{}/complete",
        config.control_plane, job.job_id
    );
    let _: serde_json::Value = client::call_json(
        client,
        Method::POST,
        &url,
        Some(&config.service_token),
        Some(&outcome),
        CALL_TIMEOUT,
    )
    .await?;
    Ok(())
}

async fn fetch_master(
    config: &WorkerConfig,
    client: &HttpClient,
    job: &JobLease,
    dest: &std::path::Path,
) -> Result<(), WorkerError> {
    let url = format!("{}/internal/v1/masters/{}", config.origin, job.upload_id);
    let req = client::request(
        Method::GET,
        &url,
        Some(&config.service_token),
        cadenza_common::http::empty(),
    )?;
    let resp = client::send(client, req, CALL_TIMEOUT).await?;
    let mut body = resp.into_body();
    let mut file = tokio::fs::File::create(dest).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| ClientError::Body {
            url: url.clone(),
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await?;
        }
    }
    file.flush().await?;
    Ok(())
}
