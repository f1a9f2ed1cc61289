//! Answering a GET or HEAD for an immutable object with byte ranges, the same way everywhere.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::{Body, empty};
use crate::range::{ByteRange, RangeRequest, parse_range};

/// Objects are content-addressed: the bytes under a name never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What to answer a GET or HEAD of an immutable object with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 304: the client holds this representation (`If-None-Match`).
    NotModified,
    /// 200, or 206, or 416, per the `Range` header (and `If-Range`).
    Range(RangeRequest),
}

/// Whether `list` (an `If-None-Match` value) names `etag`. RFC 9110 §13.1.2: weak comparison,
/// `*` matches any current representation.
fn none_match(list: &[u8], etag: &str) -> bool {
    let Ok(list) = std::str::from_utf8(list) else {
        return false;
    };
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"') == etag)
}

/// Plans the answer for an object of `len` bytes whose strong validator is `etag`.
///
/// RFC 9110 §13.2.2 order: `If-None-Match` first (a match is 304); then `If-Range`, which
/// keeps the `Range` only when it names the current entity tag exactly (a strong match; a
/// date or another tag means "send it all"); then `Range` itself (§14.2).
pub fn range_plan(headers: &HeaderMap, len: u64, etag: &str) -> Plan {
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| none_match(v.as_bytes(), etag))
    {
        return Plan::NotModified;
    }
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        let strong = if_range
            .to_str()
            .ok()
            .and_then(|v| v.trim().strip_prefix('"')?.strip_suffix('"'));
        if strong != Some(etag) {
            return Plan::Range(RangeRequest::Full);
        }
    }
    Plan::Range(parse_range(
        headers.get(header::RANGE).map(HeaderValue::as_bytes),
        len,
    ))
}

/// The bytes a plan sends: `(offset, length)`, or `None` for 304 and 416.
pub fn plan_span(plan: Plan, len: u64) -> Option<(u64, u64)> {
    match plan {
        Plan::Range(RangeRequest::Full) => Some((0, len)),
        Plan::Range(RangeRequest::Partial(r)) => Some((r.start, r.len())),
        Plan::Range(RangeRequest::Unsatisfiable) | Plan::NotModified => None,
    }
}

/// Builds the response to `method` under `plan` for an immutable object of `len` bytes whose
/// strong validator is `etag`; `body` produces the bytes of the span (offset, length) and is
/// called at most once, never for HEAD or 416.
pub fn ranged_response(
    method: &Method,
    plan: Plan,
    len: u64,
    etag: &str,
    body: impl FnOnce(u64, u64) -> Body,
) -> Response<Body> {
    let (status, part) = match plan {
        Plan::NotModified => {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            let h = resp.headers_mut();
            insert(h, header::ETAG, &format!("\"{etag}\""));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
            return resp;
        }
        Plan::Range(RangeRequest::Full) => (StatusCode::OK, None),
        Plan::Range(RangeRequest::Partial(r)) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        Plan::Range(RangeRequest::Unsatisfiable) => {
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
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(pairs: &[(header::HeaderName, &str)]) -> Plan {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        range_plan(&h, 100, "abc")
    }

    #[test]
    fn conditional_requests_per_rfc_9110() {
        use header::{IF_NONE_MATCH, IF_RANGE, RANGE};
        let part = Plan::Range(RangeRequest::Partial(ByteRange { start: 0, end: 9 }));
        let full = Plan::Range(RangeRequest::Full);
        assert_eq!(plan(&[(RANGE, "bytes=0-9")]), part);
        assert_eq!(plan(&[(IF_NONE_MATCH, "\"abc\"")]), Plan::NotModified);
        assert_eq!(
            plan(&[(IF_NONE_MATCH, "\"x\", W/\"abc\"")]),
            Plan::NotModified
        );
        assert_eq!(plan(&[(IF_NONE_MATCH, "*")]), Plan::NotModified);
        assert_eq!(
            plan(&[(IF_NONE_MATCH, "\"other\""), (RANGE, "bytes=0-9")]),
            part
        );
        assert_eq!(plan(&[(IF_RANGE, "\"abc\""), (RANGE, "bytes=0-9")]), part);
        assert_eq!(plan(&[(IF_RANGE, "\"old\""), (RANGE, "bytes=0-9")]), full);
        assert_eq!(plan(&[(IF_RANGE, "W/\"abc\""), (RANGE, "bytes=0-9")]), full);
        assert_eq!(
            plan(&[
                (IF_RANGE, "Tue, 15 Nov 1994 08:12:31 GMT"),
                (RANGE, "bytes=0-9")
            ]),
            full
        );
        assert_eq!(plan_span(Plan::NotModified, 100), None);
        let resp = ranged_response(&Method::GET, Plan::NotModified, 100, "abc", |_, _| {
            panic!("no body for 304")
        });
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(resp.headers()[header::ETAG], "\"abc\"");
    }
}
