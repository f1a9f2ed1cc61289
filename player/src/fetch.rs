//! Range fetching with edge failover; decrypted chunks go to the decoder in order.

use std::sync::mpsc::SyncSender;
use std::time::Duration;

use bytes::Bytes;
use cadenza_common::PlaybackGrant;
use cadenza_common::http::client::{self, HttpClient};
use cadenza_common::http::empty;
use http::{Method, StatusCode, header};

use crate::{PlayError, PlayOptions};

/// Counts from one fetch run.
#[derive(Debug, Default, Clone, Copy)]
pub struct FetchStats {
    pub bytes: u64,
    pub requests: u32,
    pub failovers: u32,
}

const RANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which bytes to fetch, in order: the whole file, or the headers then everything from a seek
/// point.
#[derive(Debug, Clone)]
pub struct FetchPlan {
    /// Byte spans `[start, end)` in the order they are decoded.
    pub spans: Vec<(u64, u64)>,
    /// The frame decoding resumes at.
    pub start_frame: u64,
}

/// Plans the fetch for a play starting at `start_at`.
pub fn plan(grant: &PlaybackGrant, start_at: Option<Duration>) -> FetchPlan {
    let index = &grant.seek_index;
    let target = start_at.map(|t| (t.as_secs_f64() * 44_100.0) as u64);
    match target.and_then(|frame| index.point_for(frame)) {
        Some(point) if point.1 > index.header_bytes && point.1 < grant.size => FetchPlan {
            spans: vec![(0, index.header_bytes), (point.1, grant.size)],
            start_frame: point.0,
        },
        _ => FetchPlan {
            spans: vec![(0, grant.size)],
            start_frame: 0,
        },
    }
}

/// Fetches the whole file in order, decrypting each chunk, and sends it to `tx`. Stops early
/// without error if the decoder hangs up.
pub async fn run(
    client: &HttpClient,
    grant: &PlaybackGrant,
    options: &PlayOptions,
    plan: &FetchPlan,
    tx: SyncSender<Bytes>,
) -> Result<FetchStats, PlayError> {
    let mut stats = FetchStats::default();
    let mut edge = 0usize;
    let mut chunks = Vec::new();
    for &(start, end) in &plan.spans {
        let mut offset = start;
        while offset < end {
            let want = if chunks.is_empty() {
                options.first_chunk_bytes
            } else {
                options.chunk_bytes
            };
            let last = (offset + want).min(end) - 1;
            chunks.push((offset, last));
            offset = last + 1;
        }
    }
    for (offset, end) in chunks {
        let mut last_error = String::new();
        let mut chunk = None;
        for attempt in 0..grant.edges.len() {
            let base = &grant.edges[(edge + attempt) % grant.edges.len()];
            stats.requests += 1;
            match fetch_range(client, base, grant, offset, end).await {
                Ok(bytes) => {
                    if attempt > 0 {
                        stats.failovers += 1;
                        edge = (edge + attempt) % grant.edges.len();
                    }
                    chunk = Some(bytes);
                    break;
                }
                Err(e) => {
                    tracing::warn!(edge = %base, error = %e, "edge failed; trying the next");
                    last_error = e;
                }
            }
        }
        let Some(bytes) = chunk else {
            return Err(PlayError::Edges { offset, last_error });
        };
        let mut plain = bytes.to_vec();
        grant.key.apply_at(offset, &mut plain);
        stats.bytes += plain.len() as u64;
        // The decoder thread owns the receiver; if it is gone it has finished or failed,
        // and its own result says which.
        let sent = tx.clone();
        let delivered = tokio::task::spawn_blocking(move || sent.send(Bytes::from(plain)).is_ok())
            .await
            .unwrap_or(false);
        if !delivered {
            break;
        }
    }
    Ok(stats)
}

async fn fetch_range(
    client: &HttpClient,
    base: &str,
    grant: &PlaybackGrant,
    start: u64,
    end: u64,
) -> Result<Bytes, String> {
    let url = format!("{base}/a/{}", grant.file_id);
    let mut req = client::request(Method::GET, &url, Some(&grant.token.0), empty())
        .map_err(|e| e.to_string())?;
    let range = header::HeaderValue::from_str(&format!("bytes={start}-{end}"))
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(header::RANGE, range);
    let resp = client::send(client, req, RANGE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return Err(format!("expected 206, got {}", resp.status()));
    }
    let answered = resp
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    if !answers_range(answered, start, end) {
        // Decrypting another range's bytes at this offset would make noise, not audio.
        return Err(format!(
            "asked for bytes {start}-{end}, the edge answered {}",
            answered.unwrap_or("without Content-Range")
        ));
    }
    let body = client::read_all(resp.into_body(), &url)
        .await
        .map_err(|e| e.to_string())?;
    if body.len() as u64 != end - start + 1 {
        return Err(format!(
            "asked for {} bytes, got {}",
            end - start + 1,
            body.len()
        ));
    }
    Ok(body)
}

/// Whether `content_range` (a 206's `Content-Range`) is `bytes start-end/…`.
fn answers_range(content_range: Option<&str>, start: u64, end: u64) -> bool {
    content_range
        .and_then(cadenza_common::ByteRange::from_content_range)
        .is_some_and(|(range, _)| range == cadenza_common::ByteRange { start, end })
}

#[cfg(test)]
mod range_tests {
    use super::answers_range;

    #[test]
    fn only_the_range_asked_for_is_taken() {
        assert!(answers_range(Some("bytes 100-199/1000"), 100, 199));
        assert!(!answers_range(Some("bytes 0-99/1000"), 100, 199));
        assert!(!answers_range(Some("bytes 100-198/1000"), 100, 199));
        assert!(!answers_range(Some("bytes */1000"), 100, 199));
        assert!(!answers_range(None, 100, 199));
    }
}
