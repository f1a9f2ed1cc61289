//! An S3-compatible bucket as object store (AWS S3, SeaweedFS, Garage, Ceph RGW, MinIO).
//!
//! Objects at most `part_bytes` long go up in one `PutObject`; longer ones as a multipart
//! upload whose parts are read straight from the staged file, so memory holds one part at a
//! time. A multipart upload that fails is aborted, and S3 never shows an object before
//! `CompleteMultipartUpload`, so a crash or an S3 outage mid-upload leaves nothing half-written
//! in the bucket. Creates are conditional (`If-None-Match: *`): a content-addressed rendition
//! is published once. Reads are ranged `GetObject`s streamed through as they arrive.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use cadenza_common::http::BoxError;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, StreamBody};

use crate::store::{ObjectKey, ObjectRead, ObjectStore, StoreError};

/// Where the bucket is and how to sign for it.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:8333`; empty for AWS's own.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted servers need.
    pub path_style: bool,
    /// Objects longer than this go up as multipart uploads of parts this size (≥ 5 MiB).
    pub part_bytes: u64,
    /// Key prefix inside the bucket, e.g. `cadenza/`.
    pub prefix: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("part_bytes", &self.part_bytes)
            .finish_non_exhaustive()
    }
}

/// S3's smallest part (but the last).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// The S3 backend.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    part_bytes: u64,
    parts_sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

fn backend<E>(what: &str, e: SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match e.raw_response().map(|r| r.status().as_u16()) {
        Some(404) => StoreError::NotFound,
        Some(412) => StoreError::Exists,
        _ => StoreError::Backend(format!("{what}: {}", DisplayErrorContext(&e))),
    }
}

impl S3Store {
    /// A client for the bucket (nothing is contacted yet).
    pub fn new(config: &S3Config) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(
                config.access_key.clone(),
                config.secret_key.clone(),
                None,
                None,
                "cadenza-config",
            ))
            .force_path_style(config.path_style)
            // An unreachable store should fail a request in seconds, not minutes: the
            // client's resumable upload is what retries.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if !config.endpoint.is_empty() {
            builder = builder.endpoint_url(config.endpoint.clone());
        }
        Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            part_bytes: config.part_bytes.max(MIN_PART_BYTES),
            parts_sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Creates the bucket if it does not exist (for the embedded setup and tests).
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(backend("creating the bucket", e)),
        }
    }

    /// Multipart parts sent so far (for tests that cut S3 off mid-upload).
    pub fn parts_sent(&self) -> Arc<AtomicU64> {
        self.parts_sent.clone()
    }

    fn key(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    async fn put_single(&self, key: &str, path: &Path, size: u64) -> Result<(), StoreError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StoreError::Backend(format!("reading {}: {e}", path.display())))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(i64::try_from(size).unwrap_or(i64::MAX))
            .if_none_match("*")
            .body(body)
            .send()
            .await
            .map_err(|e| backend("PutObject", e))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, path: &Path, size: u64) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            // Declared up front: some servers (Garage) refuse per-part checksums otherwise.
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| backend("CreateMultipartUpload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Backend("CreateMultipartUpload gave no upload id".into()))?
            .to_owned();
        let result = self.send_parts(key, &upload_id, path, size).await;
        if result.is_err() {
            // Best effort: a part-written upload is invisible anyway, and lifecycle rules
            // reap what an abort cannot reach.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn send_parts(
        &self,
        key: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < size {
            let len = self.part_bytes.min(size - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| StoreError::Backend(format!("reading {}: {e}", path.display())))?;
            let sent = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|e| backend("UploadPart", e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(sent.e_tag().map(str::to_owned))
                    .set_checksum_crc32(sent.checksum_crc32().map(str::to_owned))
                    .build(),
            );
            self.parts_sent.fetch_add(1, Ordering::Relaxed);
            offset += len;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| backend("CompleteMultipartUpload", e))?;
        Ok(())
    }
}

/// The object's size from a GetObject answer to `bytes={offset}-…`, once the answer is known
/// to start where asked: a store that ignored the Range header (a 200 with the whole object)
/// or answered another range would have its bytes served as the requested ones.
fn ranged_size(
    content_range: Option<&str>,
    content_length: Option<i64>,
    offset: u64,
) -> Result<u64, StoreError> {
    let Some(range) = content_range else {
        // The whole object, from its first byte: right only for a read from the start.
        if offset > 0 {
            return Err(StoreError::Backend(format!(
                "GetObject ignored the range from byte {offset} (no Content-Range)"
            )));
        }
        return content_length
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| StoreError::Backend("GetObject gave no length".into()));
    };
    match cadenza_common::ByteRange::from_content_range(range) {
        Some((answered, total)) if answered.start == offset => Ok(total),
        _ => Err(StoreError::Backend(format!(
            "GetObject answered a range from byte {offset} with {range}"
        ))),
    }
}

impl ObjectStore for S3Store {
    fn put_file<'a>(
        &'a self,
        key: &'a ObjectKey,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let size = tokio::fs::metadata(path).await?.len();
            let key = self.key(key);
            if size <= self.part_bytes {
                self.put_single(&key, path, size).await?;
            } else {
                self.put_multipart(&key, path, size).await?;
            }
            // Only now is the staged copy redundant.
            tokio::fs::remove_file(path).await?;
            Ok(())
        })
    }

    fn size<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let head = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .send()
                .await
                .map_err(|e| backend("HeadObject", e))?;
            head.content_length()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| StoreError::Backend("HeadObject gave no length".into()))
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a ObjectKey,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<ObjectRead, StoreError>> {
        Box::pin(async move {
            let last = offset + len.max(1) - 1;
            let got = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .range(format!("bytes={offset}-{last}"))
                .send()
                .await
                .map_err(|e| backend("GetObject", e))?;
            let size = ranged_size(got.content_range(), got.content_length(), offset)?;
            let stream = futures_util::stream::unfold(got.body, |mut body| async move {
                match body.next().await {
                    None => None,
                    Some(Ok(bytes)) => Some((Ok(hyper::body::Frame::data(bytes)), body)),
                    Some(Err(e)) => Some((Err(Box::new(e) as BoxError), body)),
                }
            });
            Ok(ObjectRead {
                size,
                body: StreamBody::new(stream).boxed_unsync(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_taken_only_from_where_it_was_asked() {
        assert_eq!(
            ranged_size(Some("bytes 500-999/1000"), Some(500), 500).unwrap(),
            1000
        );
        // Another range, or the whole object for a read past the start: refused.
        assert!(ranged_size(Some("bytes 0-499/1000"), Some(500), 500).is_err());
        assert!(ranged_size(None, Some(1000), 500).is_err());
        assert!(ranged_size(Some("bytes 500-999/*"), Some(500), 500).is_err());
        // A store that answers a read from the start with the whole object is right.
        assert_eq!(ranged_size(None, Some(1000), 0).unwrap(), 1000);
        assert!(ranged_size(None, None, 0).is_err());
    }
}
