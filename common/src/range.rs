//! The `Range` request header for single byte ranges (RFC 9110 §14).
//!
//! Pure: a header value and the representation length in, a decision out. The edge and the
//! origin both answer from this one function.
//!
//! RFC 9110 §14.2: "A server MAY ignore the Range header field", and a server that receives a
//! multi-range request with overlapping or many parts may serve the whole representation
//! instead. Cadenza serves single ranges only, so a multi-range request gets the full 200 — never
//! more bytes than the object holds.

use std::ops::RangeInclusive;

/// A satisfiable byte range, both ends inclusive, within a representation of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte offset.
    pub start: u64,
    /// Last byte offset (inclusive).
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a satisfiable range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The range as a Rust range.
    pub fn as_range(&self) -> RangeInclusive<u64> {
        self.start..=self.end
    }

    /// The `Content-Range` value for a 206 response.
    pub fn content_range(&self, complete_len: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, complete_len)
    }

    /// The range and complete length a 206's `Content-Range` value (`bytes a-b/LEN`) states,
    /// the inverse of [`ByteRange::content_range`]; `None` for anything else, including an
    /// unknown length (`/*`), `bytes */LEN`, signs or spaces inside a number, and a range
    /// that is not a ≤ b < LEN. What an upstream answers is checked against what was asked
    /// with this one parser (edge, origin, player).
    pub fn from_content_range(value: &str) -> Option<(ByteRange, u64)> {
        let (span, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let number = |s: &str| -> Option<u64> {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (start, end, total) = (number(first)?, number(last)?, number(total)?);
        (start <= end && end < total).then_some((ByteRange { start, end }, total))
    }
}

/// What to answer a request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: answer 200 with the whole representation.
    Full,
    /// Answer 206 with this part.
    Partial(ByteRange),
    /// Answer 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// At most this many characters of a `Range` header are examined; a longer one is malformed.
const MAX_HEADER_LEN: usize = 256;

/// Decides how to answer a `Range` header (`None` when absent) for a representation of `len`
/// bytes.
pub fn parse_range(header: Option<&[u8]>, len: u64) -> RangeRequest {
    match single_spec(header) {
        Err(()) => RangeRequest::Unsatisfiable,
        Ok(None) => RangeRequest::Full,
        Ok(Some(spec)) => match parse_spec(spec, len) {
            Some(Some(r)) => RangeRequest::Partial(r),
            Some(None) | None => RangeRequest::Unsatisfiable,
        },
    }
}

/// The first byte a `Range` header asks for, where that does not depend on the
/// representation's length (`a-b`, `a-`); `None` for a suffix range and for anything
/// [`parse_range`] would not answer with one part. A hint only: the answer is still
/// decided by [`parse_range`] once the length is known.
pub fn first_byte(header: Option<&[u8]>) -> Option<u64> {
    explicit_span(header).map(|(first, _)| first)
}

/// The first byte and, when given, the last of a single `bytes=a-b` or `bytes=a-` range (not
/// a suffix range): what a cache may fetch before it knows the object's length.
pub fn explicit_span(header: Option<&[u8]>) -> Option<(u64, Option<u64>)> {
    let (first, last) = single_spec(header).ok()??.split_once('-')?;
    let first = digits(first)?;
    let last = match last.trim() {
        "" => None,
        last => Some(digits(last).filter(|&l| l >= first)?),
    };
    Some((first, last))
}

/// The one byte-range spec of a header: `Ok(None)` when it is to be ignored (absent, an
/// unknown unit, several ranges), `Err` when it is malformed.
fn single_spec(header: Option<&[u8]>) -> Result<Option<&str>, ()> {
    let Some(raw) = header else {
        return Ok(None);
    };
    if raw.len() > MAX_HEADER_LEN {
        return Err(());
    }
    let text = std::str::from_utf8(raw).map_err(|_| ())?.trim();
    // range-unit is case-insensitive (RFC 9110 §14.1).
    let Some(spec) = text
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &text[6..])
    else {
        // An unknown range unit is ignored (§14.2).
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    Ok(Some(spec.trim()))
}

/// `None`: syntax error. `Some(None)`: well formed but unsatisfiable for `len`.
fn parse_spec(spec: &str, len: u64) -> Option<Option<ByteRange>> {
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        // suffix-range: the last N bytes.
        let n = digits(last)?;
        if n == 0 || len == 0 {
            return Some(None);
        }
        let n = n.min(len);
        return Some(Some(ByteRange {
            start: len - n,
            end: len - 1,
        }));
    }
    let start = digits(first)?;
    let end = if last.is_empty() {
        None
    } else {
        Some(digits(last)?)
    };
    if end.is_some_and(|end| end < start) {
        return None;
    }
    if start >= len {
        return Some(None);
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    Some(Some(ByteRange { start, end }))
}

/// A non-empty run of ASCII digits that fits in u64.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_range_is_read_back_only_when_it_states_a_range_within_its_length() {
        let r = ByteRange { start: 0, end: 9 };
        assert_eq!(
            ByteRange::from_content_range(&r.content_range(100)),
            Some((r, 100))
        );
        assert_eq!(
            ByteRange::from_content_range(" bytes 5-5/6 "),
            Some((ByteRange { start: 5, end: 5 }, 6))
        );
        for refused in [
            "bytes 0-9/*",
            "bytes */100",
            "bytes 9-0/100",
            "bytes 0-100/100",
            "bytes -1-9/100",
            "bytes +0-9/100",
            "bytes 0-9/1 00",
            "items 0-9/100",
            "bytes 0-9",
            "",
        ] {
            assert_eq!(ByteRange::from_content_range(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn the_first_byte_is_known_only_for_ranges_that_start_somewhere() {
        let first = |h: &str| first_byte(Some(h.as_bytes()));
        assert_eq!(first("bytes=1000-1999"), Some(1000));
        assert_eq!(first("BYTES=5-"), Some(5));
        for other in ["bytes=-500", "bytes=0-1,5-6", "bytes=x-1", "items=1-2", ""] {
            assert_eq!(first(other), None, "{other}");
        }
        assert_eq!(first_byte(None), None);
        let span = |h: &str| explicit_span(Some(h.as_bytes()));
        assert_eq!(span("bytes=1000-1999"), Some((1000, Some(1999))));
        assert_eq!(span("bytes=7-"), Some((7, None)));
        for other in ["bytes=9-3", "bytes=-5", "bytes=1-x"] {
            assert_eq!(span(other), None, "{other}");
        }
    }

    fn check(header: &str, len: u64, expected: RangeRequest) {
        assert_eq!(
            parse_range(Some(header.as_bytes()), len),
            expected,
            "Range: {header:?} of {len}"
        );
    }

    fn part(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn ranges_per_rfc_9110() {
        use RangeRequest::{Full, Unsatisfiable};
        assert_eq!(parse_range(None, 10), Full);
        check("bytes=0-0", 10, part(0, 0));
        check("bytes=0-9", 10, part(0, 9));
        check("bytes=2-", 10, part(2, 9));
        check("bytes=5-100", 10, part(5, 9));
        check("bytes=-3", 10, part(7, 9));
        check("bytes=-30", 10, part(0, 9));
        check("BYTES=1-2", 10, part(1, 2));
        check(" bytes=1-2 ", 10, part(1, 2));
        check("bytes=10-", 10, Unsatisfiable);
        check("bytes=10-20", 10, Unsatisfiable);
        check("bytes=-0", 10, Unsatisfiable);
        check("bytes=0-", 0, Unsatisfiable);
        check("bytes=-5", 0, Unsatisfiable);
        check("bytes=5-2", 10, Unsatisfiable);
        check("bytes=a-b", 10, Unsatisfiable);
        check("bytes=", 10, Unsatisfiable);
        check("bytes=-", 10, Unsatisfiable);
        check("bytes=+1-2", 10, Unsatisfiable);
        check("bytes=99999999999999999999-", 10, Unsatisfiable);
        check("items=0-1", 10, Full);
        check("bytes=0-1,3-4", 10, Full);
        check("bytes=0-,0-,0-", 10, Full);
        check(&format!("bytes=0-{}", "9".repeat(300)), 10, Unsatisfiable);
    }

    #[test]
    fn a_partial_answer_never_exceeds_the_object() {
        for len in [1u64, 2, 17, 1000] {
            for header in ["bytes=0-", "bytes=-5000", "bytes=3-5000", "bytes=0-0"] {
                if let RangeRequest::Partial(r) = parse_range(Some(header.as_bytes()), len) {
                    assert!(r.end < len && r.start <= r.end && r.len() <= len);
                }
            }
        }
        assert_eq!(
            ByteRange { start: 2, end: 5 }.content_range(9),
            "bytes 2-5/9"
        );
    }
}
