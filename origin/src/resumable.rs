//! The tus 1.0 endpoints under `/v1/uploads`: OPTIONS (discovery), POST (creation), HEAD
//! (offset), PATCH (append), DELETE (termination), plus `GET /v1/uploads/{id}`, a JSON
//! status with the master's SHA-256 once it is complete.
//!
//! A finished upload enters the object store as the master under its upload id. If the store
//! is down at that moment the PATCH answers 503 and the bytes stay staged (`Received`);
//! the next PATCH or the ingest that names the upload stores it, so nothing is lost.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadenza_common::http::{ApiError, Body, empty, json_response};
use cadenza_common::{UploadId, UploadStatus};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyDataStream;
use hyper::body::Incoming;

use crate::service::Origin;
use crate::store::{ObjectKey, StoreError};
use crate::tus;
use crate::uploads::{Phase, UploadError, UploadState};

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Tus(t) => ApiError::new(t.status(), t.code(), t.to_string()),
            UploadError::NotFound => ApiError::not_found("no such upload"),
            UploadError::BodyBroken(reason) => ApiError::bad_request("body_broken", reason),
            UploadError::Io(e) => ApiError::unavailable(e),
            UploadError::Damaged(path) => ApiError::internal(format!("{} damaged", path.display())),
        }
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Every tus response carries `Tus-Resumable`; a version refusal also lists what we speak.
pub(crate) fn tus_headers(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    set(h, "tus-resumable", tus::VERSION);
    if resp.status() == StatusCode::PRECONDITION_FAILED {
        set(resp.headers_mut(), "tus-version", tus::VERSION);
    }
    resp
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn http_date(unix_secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(unix_secs))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl Origin {
    /// OPTIONS: what this server supports. Needs no credentials.
    pub(crate) fn tus_options(&self) -> Response<Body> {
        let mut resp = no_content();
        let h = resp.headers_mut();
        set(h, "tus-version", tus::VERSION);
        set(h, "tus-extension", tus::EXTENSIONS);
        set(h, "tus-max-size", self.config.max_upload_bytes);
        set(h, "tus-checksum-algorithm", tus::CHECKSUM_ALGORITHMS);
        resp
    }

    /// POST with `Upload-Length`: a new, empty upload. Over the limit is 413 with nothing
    /// read or written.
    pub(crate) async fn tus_create(
        &self,
        req: Request<Incoming>,
        label: &str,
    ) -> Result<Response<Body>, ApiError> {
        let headers = req.headers();
        tus::check_version(headers).map_err(UploadError::from)?;
        let length =
            tus::upload_length(headers, self.config.max_upload_bytes).map_err(UploadError::from)?;
        let metadata = tus::upload_metadata(headers).map_err(UploadError::from)?;
        if content_length(headers).is_some_and(|n| n > 0) {
            return Err(ApiError::bad_request(
                "creation_with_upload",
                "send the bytes with PATCH after creating the upload",
            ));
        }
        let now = SystemTime::now();
        self.maybe_sweep(now).await;
        let state = self.uploads.create(label, length, metadata, now).await?;
        tracing::info!(upload = %state.id, length, "resumable upload created");
        let mut resp = no_content();
        *resp.status_mut() = StatusCode::CREATED;
        let h = resp.headers_mut();
        set(h, "location", format!("/v1/uploads/{}", state.id));
        set(h, "upload-expires", http_date(state.expires_at));
        set(h, "upload-offset", 0);
        Ok(resp)
    }

    /// HEAD: the committed offset, the length, and the metadata as kept.
    pub(crate) async fn tus_head(
        &self,
        id: &UploadId,
        label: &str,
    ) -> Result<Response<Body>, ApiError> {
        let state = self.uploads.get(id, label, SystemTime::now()).await?;
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        set(h, "upload-offset", state.offset);
        set(h, "upload-length", state.length);
        set(h, "cache-control", "no-store");
        if state.phase == Phase::Receiving {
            set(h, "upload-expires", http_date(state.expires_at));
        }
        if let Some(meta) = tus::encode_metadata(&state.metadata) {
            set(h, "upload-metadata", meta);
        }
        Ok(resp)
    }

    /// PATCH: append at `Upload-Offset`, checked against `Upload-Checksum` when sent.
    pub(crate) async fn tus_patch(
        &self,
        req: Request<Incoming>,
        id: &UploadId,
        label: &str,
    ) -> Result<Response<Body>, ApiError> {
        let headers = req.headers();
        tus::check_patch_content_type(headers).map_err(UploadError::from)?;
        let offset = tus::upload_offset(headers).map_err(UploadError::from)?;
        let checksum = tus::upload_checksum(headers).map_err(UploadError::from)?;
        let declared = content_length(headers);
        let _guard = self.uploads.lock(id)?;
        let now = SystemTime::now();
        let state = self.uploads.get(id, label, now).await?;
        let body = BodyDataStream::new(req.into_body());
        let state = match self
            .uploads
            .append(state, offset, declared, checksum, body, now)
            .await
        {
            Ok(state) => state,
            Err(e) => {
                tracing::info!(upload = %id, error = %e, "PATCH refused");
                return Err(e.into());
            }
        };
        let state = if state.offset == state.length {
            self.finish(state).await?
        } else {
            state
        };
        let mut resp = no_content();
        let h = resp.headers_mut();
        set(h, "upload-offset", state.offset);
        if state.phase == Phase::Receiving {
            set(h, "upload-expires", http_date(state.expires_at));
        }
        Ok(resp)
    }

    /// DELETE: the upload and its bytes are gone; later requests get 404.
    pub(crate) async fn tus_delete(
        &self,
        id: &UploadId,
        label: &str,
    ) -> Result<Response<Body>, ApiError> {
        let _guard = self.uploads.lock(id)?;
        let state = self.uploads.get(id, label, SystemTime::now()).await?;
        if !matches!(state.phase, Phase::Receiving) {
            // A complete master may already be ingested; it is removed with its track, not here.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "upload_complete",
                "the upload is complete; it can no longer be terminated",
            ));
        }
        self.uploads.remove(id).await?;
        tracing::info!(upload = %id, "resumable upload terminated");
        Ok(no_content())
    }

    /// GET: the upload's status as JSON.
    pub(crate) async fn upload_status(
        &self,
        id: &UploadId,
        label: &str,
    ) -> Result<Response<Body>, ApiError> {
        let state = self.uploads.get(id, label, SystemTime::now()).await?;
        Ok(json_response(StatusCode::OK, &status(&state)))
    }

    /// Moves a fully received upload into the object store (hashing it first if needed).
    pub(crate) async fn finish(&self, state: UploadState) -> Result<UploadState, ApiError> {
        let state = match state.phase {
            Phase::Receiving => self.uploads.seal(state).await?,
            Phase::Received { .. } => state,
            Phase::Stored { .. } => return Ok(state),
        };
        let key = ObjectKey::master(&state.id);
        match self
            .store
            .put_file(&key, &self.uploads.data_path(&state.id))
            .await
        {
            // Exists: an earlier attempt stored it and then lost track (a crash between the
            // store's answer and our state write). The key is this upload's alone.
            Ok(()) | Err(StoreError::Exists) => {}
            Err(e) => return Err(e.into()),
        }
        let state = self.uploads.mark_stored(state).await?;
        tracing::info!(upload = %state.id, size = state.length, "master stored");
        Ok(state)
    }

    /// The upload named by an ingest, stored; `None` when the label has no such upload.
    pub(crate) async fn stored_upload(
        &self,
        id: &UploadId,
        label: &str,
    ) -> Result<Option<UploadState>, ApiError> {
        let _guard = self.uploads.lock(id)?;
        match self.uploads.get(id, label, SystemTime::now()).await {
            Ok(state) if state.phase == Phase::Receiving => Err(ApiError::new(
                StatusCode::CONFLICT,
                "upload_incomplete",
                format!(
                    "the upload has {} of {} bytes; finish it first",
                    state.offset, state.length
                ),
            )),
            Ok(state) => Ok(Some(self.finish(state).await?)),
            Err(UploadError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn maybe_sweep(&self, now: SystemTime) {
        const EVERY_SECS: u64 = 300;
        let now_secs = crate::uploads::unix(now);
        let last = self.last_sweep.load(std::sync::atomic::Ordering::Relaxed);
        if now_secs.saturating_sub(last) < EVERY_SECS {
            return;
        }
        self.last_sweep
            .store(now_secs, std::sync::atomic::Ordering::Relaxed);
        match self.uploads.sweep(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired uploads removed"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired uploads failed"),
        }
    }
}

fn status(state: &UploadState) -> UploadStatus {
    UploadStatus {
        upload_id: state.id.clone(),
        length: state.length,
        offset: state.offset,
        complete: state.phase != Phase::Receiving,
        stored: matches!(state.phase, Phase::Stored { .. }),
        sha256: state.sha256().map(str::to_owned),
        filename: state.metadata.filename.clone(),
        expires_at: (state.phase == Phase::Receiving).then_some(state.expires_at),
    }
}
