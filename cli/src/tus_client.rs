//! A tus 1.0 client for label uploads: create, PATCH in checksummed chunks, and on any
//! transient failure ask the server where it is (HEAD) and carry on from there. The upload's
//! URL is kept in a small resume book beside the cluster's data, so a `cadenza ingest` that
//! was killed resumes the same upload the next time it is run on the same file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use cadenza_common::http::client::{self, ClientError, HttpClient};
use cadenza_common::http::{empty, full};
use cadenza_common::{UploadReceipt, UploadStatus, hex_encode};
use http::{HeaderMap, Method, StatusCode, header};
use ring::digest::{Context as Digest, SHA256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes per PATCH: big enough to keep a link busy, small enough that a retry is cheap.
pub const DEFAULT_CHUNK: usize = 8 * 1024 * 1024;
/// Consecutive failures without progress before giving up.
const MAX_STALLS: u32 = 8;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const PATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// Where an upload goes and how.
#[derive(Debug, Clone)]
pub struct TusTarget<'a> {
    /// The origin's base URL.
    pub origin: &'a str,
    /// The label's key.
    pub key: &'a str,
    /// Bytes per PATCH.
    pub chunk: usize,
    /// The resume book (upload URLs by file fingerprint); `None` keeps nothing.
    pub resume_book: Option<PathBuf>,
}

/// The resume book: one upload URL per file, keyed by path, size and modification time.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ResumeBook {
    uploads: std::collections::BTreeMap<String, String>,
}

fn fingerprint(path: &Path, meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("{}|{}|{mtime}", abs.display(), meta.len())
}

impl ResumeBook {
    fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    fn update(path: Option<&Path>, key: &str, url: Option<&str>) -> anyhow::Result<()> {
        let Some(path) = path else { return Ok(()) };
        let mut book = Self::load(path);
        match url {
            Some(u) => book.uploads.insert(key.to_owned(), u.to_owned()),
            None => book.uploads.remove(key),
        };
        book.save(path)
    }
}

fn tus_request(
    method: Method,
    url: &str,
    key: &str,
    body: Bytes,
) -> Result<http::Request<cadenza_common::http::Body>, ClientError> {
    let body = if body.is_empty() { empty() } else { full(body) };
    let mut req = client::request(method, url, Some(key), body)?;
    req.headers_mut()
        .insert("tus-resumable", header::HeaderValue::from_static("1.0.0"));
    Ok(req)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

/// Whether a failure is worth retrying after asking the server for its offset.
fn transient(e: &ClientError) -> bool {
    match e.status() {
        None => true,
        Some(s) => {
            s.is_server_error()
                || s == StatusCode::CONFLICT
                || s == StatusCode::LOCKED
                || s.as_u16() == 460
                || s == StatusCode::REQUEST_TIMEOUT
        }
    }
}

async fn create(
    c: &HttpClient,
    target: &TusTarget<'_>,
    path: &Path,
    len: u64,
) -> anyhow::Result<String> {
    let url = format!("{}/v1/uploads", target.origin);
    let mut req = tus_request(Method::POST, &url, target.key, Bytes::new())?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let h = req.headers_mut();
    h.insert("upload-length", len.into());
    if let Ok(v) = format!("filename {}", STANDARD.encode(name)).parse() {
        h.insert("upload-metadata", v);
    }
    let resp = client::send(c, req, CALL_TIMEOUT).await?;
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("the origin created an upload without a Location")?;
    // The Location may be relative to the origin.
    Ok(if location.starts_with('/') {
        format!("{}{location}", target.origin)
    } else {
        location.to_owned()
    })
}

/// `Ok(None)` when the server no longer knows the upload (expired, terminated).
async fn offset(c: &HttpClient, url: &str, key: &str, len: u64) -> anyhow::Result<Option<u64>> {
    let req = tus_request(Method::HEAD, url, key, Bytes::new())?;
    match client::send(c, req, CALL_TIMEOUT).await {
        Ok(resp) => {
            let offset = header_u64(resp.headers(), "upload-offset")
                .context("HEAD answered without Upload-Offset")?;
            if header_u64(resp.headers(), "upload-length") != Some(len) {
                return Ok(None);
            }
            Ok(Some(offset))
        }
        Err(e)
            if matches!(
                e.status(),
                Some(StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn patch(
    c: &HttpClient,
    url: &str,
    key: &str,
    at: u64,
    chunk: Bytes,
) -> Result<u64, ClientError> {
    let digest = ring::digest::digest(&SHA256, &chunk);
    let mut req = tus_request(Method::PATCH, url, key, chunk)?;
    let h = req.headers_mut();
    h.insert("upload-offset", at.into());
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/offset+octet-stream"),
    );
    if let Ok(v) = format!("sha256 {}", STANDARD.encode(digest.as_ref())).parse() {
        h.insert("upload-checksum", v);
    }
    let resp = client::send(c, req, PATCH_TIMEOUT).await?;
    header_u64(resp.headers(), "upload-offset").ok_or_else(|| ClientError::Status {
        url: url.to_owned(),
        status: resp.status(),
        body: "no Upload-Offset in the answer".into(),
    })
}

async fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hash = Digest::new(&SHA256);
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(hex_encode(hash.finish().as_ref()));
        }
        hash.update(&buf[..n]);
    }
}

/// Uploads `path` resumably; `sent` follows the committed offset.
pub async fn upload(
    c: &HttpClient,
    target: &TusTarget<'_>,
    path: &Path,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<UploadReceipt> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let len = meta.len();
    if len == 0 {
        bail!("{} is empty", path.display());
    }
    let print = fingerprint(path, &meta);
    let book = target.resume_book.as_deref();
    // Resume what an earlier run started, if the origin still has it.
    // The book keeps the upload's path, so a restarted embedded stack on new ports still
    // finds it.
    let remembered = book
        .and_then(|b| ResumeBook::load(b).uploads.get(&print).cloned())
        .map(|p| format!("{}{p}", target.origin));
    let (url, mut at) = match remembered {
        Some(url) => match offset(c, &url, target.key, len).await? {
            Some(at) => {
                eprintln!("  resuming upload at byte {at} of {len}");
                (url, at)
            }
            None => (create(c, target, path, len).await?, 0),
        },
        None => (create(c, target, path, len).await?, 0),
    };
    let upload_path = url.strip_prefix(target.origin).unwrap_or(&url);
    ResumeBook::update(book, &print, Some(upload_path))?;
    sent.store(at, Ordering::Relaxed);

    let mut file = tokio::fs::File::open(path).await?;
    let mut stalls = 0u32;
    let mut backoff = Duration::from_millis(200);
    while at < len {
        let want = usize::try_from(len - at)
            .unwrap_or(usize::MAX)
            .min(target.chunk.max(1));
        let mut buf = vec![0u8; want];
        file.seek(std::io::SeekFrom::Start(at)).await?;
        file.read_exact(&mut buf).await?;
        match patch(c, &url, target.key, at, Bytes::from(buf)).await {
            Ok(next) if next > at && next <= len => {
                at = next;
                stalls = 0;
                backoff = Duration::from_millis(200);
            }
            Ok(next) => bail!("the origin moved the upload to an impossible offset {next}"),
            Err(e) if transient(&e) && stalls < MAX_STALLS => {
                stalls += 1;
                tracing::warn!(error = %e, attempt = stalls, "upload interrupted; resuming");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                // Where did the server get to? It may have kept part of the chunk.
                match offset(c, &url, target.key, len).await {
                    Ok(Some(server_at)) => at = server_at,
                    Ok(None) => bail!("the origin lost the upload {url}; run the ingest again"),
                    Err(e) => tracing::warn!(error = %e, "cannot ask for the offset yet"),
                }
            }
            Err(e) => return Err(e).context("uploading"),
        }
        sent.store(at, Ordering::Relaxed);
    }

    let sha256 = file_sha256(path).await?;
    let status: UploadStatus =
        client::call_json::<(), _>(c, Method::GET, &url, Some(target.key), None, CALL_TIMEOUT)
            .await?;
    if let Some(theirs) = &status.sha256
        && theirs != &sha256
    {
        bail!("the origin hashed the upload to {theirs}, not {sha256}; the file changed?");
    }
    ResumeBook::update(book, &print, None)?;
    Ok(UploadReceipt {
        upload_id: status.upload_id,
        size: len,
        sha256,
    })
}
