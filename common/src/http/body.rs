//! Body types and small helpers shared by handlers and clients.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Errors a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response and client request.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body streaming the next `len` bytes of `file` in 256 KiB chunks; it ends with an error
/// if the file runs out first, so a short read is never passed off as the whole.
pub fn file_body(file: tokio::fs::File, len: u64) -> Body {
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 256 * 1024;
    let stream = futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(Box::new(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)) as BoxError),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok(hyper::body::Frame::data(Bytes::from(buf))),
                    (file, left - n as u64),
                ))
            }
            Err(e) => Some((Err(Box::new(e) as BoxError), (file, 0))),
        }
    });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// A JSON response.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(full(bytes));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => ApiError::internal(format!("serialising a response: {e}")).into_response(),
    }
}

/// The `GET /healthz` answer every service gives: the process is up and serving HTTP.
pub fn health() -> Response<Body> {
    json_response(StatusCode::OK, &serde_json::json!({"ok": true}))
}

/// Reads a whole body, refusing one longer than `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is over {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request("body_unreadable", e.to_string())),
    }
}

/// Reads and parses a JSON body of at most `limit` bytes.
pub async fn read_json<T, B>(body: B, limit: usize) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let bytes = read_body(body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("bad_json", e.to_string()))
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks that `headers` carry `Authorization: Bearer {secret}`; 401 otherwise.
pub fn require_bearer(headers: &HeaderMap, secret: &str) -> Result<(), ApiError> {
    match bearer_token(headers) {
        Some(t) if secrets_match(t.as_bytes(), secret.as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn secrets_match(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_match(b"abc", b"abc"));
        assert!(!secrets_match(b"abc", b"abd"));
        assert!(!secrets_match(b"abc", b"abcd"));
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let err = read_body(Full::new(Bytes::from(vec![0u8; 11])), 10)
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let ok = read_body(Full::new(Bytes::from(vec![0u8; 10])), 10)
            .await
            .unwrap();
        assert_eq!(ok.len(), 10);
    }
}
