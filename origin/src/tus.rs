//! The tus 1.0 resumable-upload protocol's headers, parsed and checked (pure: headers in,
//! values or a [`TusError`] out).
//!
//! Implemented: core, `creation`, `expiration`, `checksum` (sha1, sha256) and `termination`
//! from <https://tus.io/protocols/resumable-upload>. Every parser is bounded: header values
//! are capped in length and metadata in pairs, so a hostile client cannot make the origin
//! allocate much.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, StatusCode};

/// The protocol version this server speaks.
pub const VERSION: &str = "1.0.0";
/// The extensions this server supports (`Tus-Extension`).
pub const EXTENSIONS: &str = "creation,expiration,checksum,termination";
/// The checksum algorithms this server supports (`Tus-Checksum-Algorithm`).
pub const CHECKSUM_ALGORITHMS: &str = "sha256,sha1";
/// The content type every PATCH must carry.
pub const PATCH_CONTENT_TYPE: &str = "application/offset+octet-stream";

/// Longest `Upload-Metadata` header accepted.
const MAX_METADATA_LEN: usize = 4096;
/// Most metadata pairs accepted.
const MAX_METADATA_PAIRS: usize = 32;
/// Longest file name kept (characters).
const MAX_FILENAME_CHARS: usize = 255;

/// Why a tus request is refused. Each variant maps to the status the protocol names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TusError {
    /// `Tus-Resumable` is missing or names a version this server does not speak (412).
    #[error("this server speaks tus {VERSION}; send Tus-Resumable: {VERSION}")]
    Version,
    /// A header is missing or malformed (400).
    #[error("{header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: &'static str,
    },
    /// The PATCH's `Upload-Offset` is not the upload's current offset (409).
    #[error("Upload-Offset is {given} but the upload is at {current}; HEAD it and resume there")]
    OffsetMismatch { given: u64, current: u64 },
    /// The chunk's bytes do not match `Upload-Checksum` (460); the chunk was discarded.
    #[error("the chunk does not match its Upload-Checksum; it was discarded")]
    ChecksumMismatch,
    /// `Upload-Checksum` names an algorithm this server does not support (400).
    #[error("checksum algorithm not supported; use one of {CHECKSUM_ALGORITHMS}")]
    UnsupportedAlgorithm,
    /// The upload would exceed the size limit or its declared length (413).
    #[error("{0}")]
    TooLarge(String),
    /// A PATCH without `Content-Type: application/offset+octet-stream` (415).
    #[error("PATCH bodies must be {PATCH_CONTENT_TYPE}")]
    ContentType,
    /// Another request is writing this upload right now (423).
    #[error("another request is writing this upload; retry shortly")]
    Locked,
    /// The upload expired and was removed (410).
    #[error("the upload expired; create a new one")]
    Expired,
}

impl TusError {
    /// The status the protocol prescribes.
    pub fn status(&self) -> StatusCode {
        match self {
            TusError::Version => StatusCode::PRECONDITION_FAILED,
            TusError::BadHeader { .. } | TusError::UnsupportedAlgorithm => StatusCode::BAD_REQUEST,
            TusError::OffsetMismatch { .. } => StatusCode::CONFLICT,
            // 460 is tus's own "Checksum Mismatch"; it is a valid status code, so this cannot fail.
            TusError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            TusError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            TusError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TusError::Locked => StatusCode::LOCKED,
            TusError::Expired => StatusCode::GONE,
        }
    }

    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            TusError::Version => "tus_version",
            TusError::BadHeader { .. } => "bad_header",
            TusError::OffsetMismatch { .. } => "offset_mismatch",
            TusError::ChecksumMismatch => "checksum_mismatch",
            TusError::UnsupportedAlgorithm => "checksum_algorithm",
            TusError::TooLarge(_) => "too_large",
            TusError::ContentType => "content_type",
            TusError::Locked => "locked",
            TusError::Expired => "expired",
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, TusError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TusError::BadHeader {
            header: name,
            reason: "sent more than once",
        });
    }
    value.to_str().map(Some).map_err(|_| TusError::BadHeader {
        header: name,
        reason: "not visible ASCII",
    })
}

/// Checks `Tus-Resumable` (required on every request but OPTIONS).
pub fn check_version(headers: &HeaderMap) -> Result<(), TusError> {
    match header(headers, "tus-resumable") {
        Ok(Some(VERSION)) => Ok(()),
        _ => Err(TusError::Version),
    }
}

/// A non-negative decimal header (`Upload-Offset`, `Upload-Length`): digits only, so `+1`,
/// `-0`, ` 1` and `0x10` are refused rather than guessed at.
fn number(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, TusError> {
    let Some(text) = header(headers, name)? else {
        return Ok(None);
    };
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TusError::BadHeader {
            header: name,
            reason: "must be a non-negative decimal integer",
        });
    }
    text.parse().map(Some).map_err(|_| TusError::BadHeader {
        header: name,
        reason: "out of range",
    })
}

/// `Upload-Offset`, required on PATCH.
pub fn upload_offset(headers: &HeaderMap) -> Result<u64, TusError> {
    number(headers, "upload-offset")?.ok_or(TusError::BadHeader {
        header: "Upload-Offset",
        reason: "required",
    })
}

/// `Upload-Length`, required on creation (this server does not defer lengths), checked
/// against `max` before any body is read.
pub fn upload_length(headers: &HeaderMap, max: u64) -> Result<u64, TusError> {
    if headers.contains_key("upload-defer-length") {
        return Err(TusError::BadHeader {
            header: "Upload-Defer-Length",
            reason: "deferred lengths are not supported; send Upload-Length",
        });
    }
    let length = number(headers, "upload-length")?.ok_or(TusError::BadHeader {
        header: "Upload-Length",
        reason: "required",
    })?;
    if length > max {
        return Err(TusError::TooLarge(format!(
            "uploads are limited to {max} bytes (Tus-Max-Size)"
        )));
    }
    Ok(length)
}

/// The PATCH body's content type must be `application/offset+octet-stream`.
pub fn check_patch_content_type(headers: &HeaderMap) -> Result<(), TusError> {
    match header(headers, "content-type") {
        Ok(Some(v))
            if v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(PATCH_CONTENT_TYPE)) =>
        {
            Ok(())
        }
        _ => Err(TusError::ContentType),
    }
}

/// A checksum algorithm from `Upload-Checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
}

impl Algorithm {
    /// The ring digest algorithm.
    pub fn digest(self) -> &'static ring::digest::Algorithm {
        match self {
            Algorithm::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => &ring::digest::SHA256,
        }
    }
}

/// The checksum a client declared for one PATCH's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    pub digest: Vec<u8>,
}

/// `Upload-Checksum: <algorithm> <base64 digest>`, if sent.
pub fn upload_checksum(headers: &HeaderMap) -> Result<Option<Checksum>, TusError> {
    let Some(text) = header(headers, "upload-checksum")? else {
        return Ok(None);
    };
    let bad = TusError::BadHeader {
        header: "Upload-Checksum",
        reason: "must be `<algorithm> <base64 digest>`",
    };
    let (name, value) = text.trim().split_once(' ').ok_or(bad.clone())?;
    let algorithm = match name.to_ascii_lowercase().as_str() {
        "sha1" => Algorithm::Sha1,
        "sha256" => Algorithm::Sha256,
        _ => return Err(TusError::UnsupportedAlgorithm),
    };
    if value.len() > 128 {
        return Err(bad);
    }
    let digest = STANDARD.decode(value.trim()).map_err(|_| bad.clone())?;
    if digest.len() != algorithm.digest().output_len() {
        return Err(bad);
    }
    Ok(Some(Checksum { algorithm, digest }))
}

/// What the origin keeps of `Upload-Metadata`: only the keys it understands, sanitized.
/// The file name is a label for people; it never becomes a path or an object key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// The master's original file name, last path component only, printable characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The declared media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filetype: Option<String>,
}

/// Parses `Upload-Metadata: key base64,key base64,key` (values optional, keys unique).
pub fn upload_metadata(headers: &HeaderMap) -> Result<Metadata, TusError> {
    let bad = |reason| TusError::BadHeader {
        header: "Upload-Metadata",
        reason,
    };
    let Some(text) = header(headers, "upload-metadata")? else {
        return Ok(Metadata::default());
    };
    if text.len() > MAX_METADATA_LEN {
        return Err(bad("longer than 4096 bytes"));
    }
    let mut out = Metadata::default();
    let mut seen: Vec<&str> = Vec::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        if seen.len() == MAX_METADATA_PAIRS {
            return Err(bad("more than 32 pairs"));
        }
        let mut parts = pair.trim().split(' ');
        let key = parts.next().unwrap_or_default();
        let value = parts.next();
        if parts.next().is_some() {
            return Err(bad("a pair is `key base64value`"));
        }
        if key.is_empty() || seen.contains(&key) {
            return Err(bad("keys must be non-empty and unique"));
        }
        seen.push(key);
        let decoded = match value {
            Some(v) => STANDARD
                .decode(v)
                .map_err(|_| bad("values must be base64"))?,
            None => Vec::new(),
        };
        let text = String::from_utf8_lossy(&decoded);
        match key {
            "filename" | "name" => out.filename = sanitize_filename(&text),
            "filetype" | "type" => out.filetype = sanitize_media_type(&text),
            _ => {}
        }
    }
    Ok(out)
}

/// The last path component, control characters dropped, at most 255 characters.
pub fn sanitize_filename(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = last
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILENAME_CHARS)
        .collect();
    let clean = clean.trim();
    (!clean.is_empty() && clean != "." && clean != "..").then(|| clean.to_owned())
}

fn sanitize_media_type(t: &str) -> Option<String> {
    let t = t.trim();
    let ok = t.len() <= 127
        && t.contains('/')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/+-.;= ".contains(&b));
    ok.then(|| t.to_ascii_lowercase())
}

/// `Upload-Metadata` as this server echoes it on HEAD.
pub fn encode_metadata(meta: &Metadata) -> Option<String> {
    let pairs: Vec<String> = [("filename", &meta.filename), ("filetype", &meta.filetype)]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {}", STANDARD.encode(v))))
        .collect();
    (!pairs.is_empty()).then(|| pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                *k,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn version_is_required_and_exact() {
        assert_eq!(
            check_version(&headers(&[("tus-resumable", "1.0.0")])),
            Ok(())
        );
        for bad in [
            &[][..],
            &[("tus-resumable", "0.2.2")],
            &[("tus-resumable", "1.0")],
        ] {
            assert_eq!(check_version(&headers(bad)), Err(TusError::Version));
        }
    }

    #[test]
    fn offsets_and_lengths_are_plain_decimals() {
        assert_eq!(upload_offset(&headers(&[("upload-offset", "0")])), Ok(0));
        assert_eq!(
            upload_offset(&headers(&[("upload-offset", "12345")])),
            Ok(12345)
        );
        for bad in ["", "-1", "+1", " 1", "0x10", "1e3", "99999999999999999999"] {
            assert!(
                upload_offset(&headers(&[("upload-offset", bad)])).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(
            upload_offset(&headers(&[("upload-offset", "1"), ("upload-offset", "1")])).is_err()
        );
        assert!(upload_offset(&headers(&[])).is_err());
        assert_eq!(
            upload_length(&headers(&[("upload-length", "100")]), 100),
            Ok(100)
        );
        assert!(matches!(
            upload_length(&headers(&[("upload-length", "101")]), 100),
            Err(TusError::TooLarge(_))
        ));
        assert!(upload_length(&headers(&[("upload-defer-length", "1")]), 100).is_err());
    }

    #[test]
    fn checksums_parse_per_algorithm() {
        // sha1("hello world") and sha256("hello world"), base64.
        let sha1 = upload_checksum(&headers(&[(
            "upload-checksum",
            "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(sha1.algorithm, Algorithm::Sha1);
        assert_eq!(
            sha1.digest,
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b"hello world").as_ref()
        );
        let sha256 = upload_checksum(&headers(&[(
            "upload-checksum",
            "sha256 uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(
            sha256.digest,
            ring::digest::digest(&ring::digest::SHA256, b"hello world").as_ref()
        );
        assert_eq!(
            upload_checksum(&headers(&[(
                "upload-checksum",
                "md5 XrY7u+Ae7tCTyyK7j1rNww=="
            )])),
            Err(TusError::UnsupportedAlgorithm)
        );
        for bad in [
            "sha256",
            "sha256 !!!",
            "sha256 Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
        ] {
            assert!(matches!(
                upload_checksum(&headers(&[("upload-checksum", bad)])),
                Err(TusError::BadHeader { .. })
            ));
        }
        assert_eq!(upload_checksum(&headers(&[])), Ok(None));
    }

    #[test]
    fn metadata_keeps_only_sanitized_known_keys() {
        let b64 = |s: &str| STANDARD.encode(s);
        let text = format!(
            "filename {},filetype {},is_confidential,other {}",
            b64("../../etc/Night\u{0}Drive.flac"),
            b64("audio/FLAC"),
            b64("x")
        );
        let meta = upload_metadata(&headers(&[("upload-metadata", &text)])).unwrap();
        assert_eq!(meta.filename.as_deref(), Some("NightDrive.flac"));
        assert_eq!(meta.filetype.as_deref(), Some("audio/flac"));
        let echoed = encode_metadata(&meta).unwrap();
        assert_eq!(
            upload_metadata(&headers(&[("upload-metadata", &echoed)])).unwrap(),
            meta
        );
        for bad in [
            "filename !!!".to_owned(),
            "a 1,a 2".to_owned(),
            "a b c".to_owned(),
            "k ".repeat(3000),
            (0..40)
                .map(|i| format!("k{i} eA=="))
                .collect::<Vec<_>>()
                .join(","),
        ] {
            assert!(
                upload_metadata(&headers(&[("upload-metadata", &bad)])).is_err(),
                "{bad:.40} accepted"
            );
        }
        assert_eq!(sanitize_filename(".."), None);
        assert_eq!(
            sanitize_filename("C:\\masters\\take 3.wav").as_deref(),
            Some("take 3.wav")
        );
    }

    #[test]
    fn patch_needs_its_content_type() {
        assert_eq!(
            check_patch_content_type(&headers(&[("content-type", PATCH_CONTENT_TYPE)])),
            Ok(())
        );
        assert_eq!(
            check_patch_content_type(&headers(&[("content-type", "application/octet-stream")])),
            Err(TusError::ContentType)
        );
    }

    #[test]
    fn statuses_follow_the_protocol() {
        assert_eq!(TusError::ChecksumMismatch.status().as_u16(), 460);
        assert_eq!(TusError::Version.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            TusError::OffsetMismatch {
                given: 1,
                current: 0
            }
            .status(),
            StatusCode::CONFLICT
        );
    }
}
