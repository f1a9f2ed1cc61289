//! Answering a GET or HEAD for an immutable object with byte ranges, the same way everywhere.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::{Body, empty};
use crate::range::{ByteRange, RangeRequest, parse_range};

/// How to answer a request's `Range` header for an object of `len` bytes.
pub fn range_plan(headers: &HeaderMap, len: u64) -> RangeRequest {
    parse_range(headers.get(header::RANGE).map(HeaderValue::as_bytes), len)
}

/// The bytes a plan sends: `(offset, length)`, or `None` for 416.
pub fn plan_span(plan: RangeRequest, len: u64) -> Option<(u64, u64)> {
    match plan {
        RangeRequest::Full => Some((0, len)),
        RangeRequest::Partial(r) => Some((r.start, r.len())),
        RangeRequest::Unsatisfiable => None,
    }
}

/// Builds the response to `method` under `plan` for an immutable object of `len` bytes whose
/// strong validator is `etag`; `body` produces the bytes of the span (offset, length) and is
/// called at most once, never for HEAD or 416.
pub fn ranged_response(
    method: &Method,
    plan: RangeRequest,
    len: u64,
    etag: &str,
    body: impl FnOnce(u64, u64) -> Body,
) -> Response<Body> {
    let (status, part) = match plan {
        RangeRequest::Full => (StatusCode::OK, None),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        RangeRequest::Unsatisfiable => {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = resp.headers_mut();
            insert(h, header::CONTENT_RANGE, &format!("bytes */{len}"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return resp;
        }
    };
    let (start, count) = match part {
        Some(ByteRange { start, end }) => (start, end - start + 1),
        None => (0, len),
    };
    let body = if method == Method::HEAD || count == 0 {
        empty()
    } else {
        body(start, count)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    insert(h, header::CONTENT_LENGTH, &count.to_string());
    insert(h, header::ETAG, &format!("\"{etag}\""));
    // Objects are content-addressed: the bytes under a name never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Some(r) = part {
        insert(h, header::CONTENT_RANGE, &r.content_range(len));
    }
    resp
}

fn insert(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}
