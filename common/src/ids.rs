//! Identifiers that travel between services.
//!
//! Every id is made by a server, never taken from a file name, and validated on the way in,
//! so an id can be used as a path component or an object key without further escaping.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The string has the wrong length for this kind of id.
    #[error("{kind} must be {expected} characters, got {actual}")]
    Length {
        kind: &'static str,
        expected: usize,
        actual: usize,
    },
    /// The string contains a character outside lowercase hexadecimal.
    #[error("{kind} must be lowercase hexadecimal")]
    NotHex { kind: &'static str },
}

/// Lowercase hexadecimal encoding.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// One hexadecimal digit's value, either case.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes lowercase or uppercase hexadecimal; `None` on odd length or a non-hex digit.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $bytes:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Length of the textual form in characters.
            pub const LEN: usize = $bytes * 2;

            /// Builds the id from raw bytes (the first bytes are used when more are given).
            pub fn from_bytes(bytes: &[u8]) -> Self {
                Self(hex_encode(&bytes[..$bytes.min(bytes.len())]))
            }

            /// A fresh random id.
            pub fn random() -> Self {
                Self::from_bytes(&crate::random_bytes::<$bytes>())
            }

            /// The textual form.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The raw bytes (a compact key: no allocation, cheap to hash and compare).
            pub fn to_bytes(&self) -> [u8; $bytes] {
                let mut out = [0u8; $bytes];
                // Every id holds exactly LEN lowercase hex digits (checked when made), so
                // no digit is refused.
                let digit = |c: u8| crate::ids::nibble(c).unwrap_or(0);
                for (byte, pair) in out.iter_mut().zip(self.0.as_bytes().chunks_exact(2)) {
                    *byte = digit(pair[0]) << 4 | digit(pair[1]);
                }
                out
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if s.len() != Self::LEN {
                    return Err(IdError::Length { kind: $kind, expected: Self::LEN, actual: s.len() });
                }
                if !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(IdError::NotHex { kind: $kind });
                }
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

hex_id!(
    /// A rendition file: the first 160 bits of the SHA-256 of its encrypted bytes, so the same
    /// bytes always have the same id and a stored object can be checked against its name.
    FileId, "file id", 20
);
hex_id!(
    /// A track in the catalogue.
    TrackId, "track id", 12
);
hex_id!(
    /// A master upload at the origin.
    UploadId, "upload id", 16
);
hex_id!(
    /// A transcode job.
    JobId, "job id", 12
);
hex_id!(
    /// An artist in the catalogue.
    ArtistId, "artist id", 12
);
hex_id!(
    /// An album in the catalogue.
    AlbumId, "album id", 12
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(hex_encode(&bytes), "00017f80ff");
        assert_eq!(hex_decode("00017F80ff"), Some(bytes.to_vec()));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn ids_give_back_their_bytes() {
        for _ in 0..100 {
            let raw = crate::random_bytes::<20>();
            let id = FileId::from_bytes(&raw);
            assert_eq!(id.to_bytes(), raw);
            let parsed: FileId = id.as_str().parse().unwrap();
            assert_eq!(parsed.to_bytes(), raw);
        }
    }

    #[test]
    fn ids_reject_path_tricks() {
        for bad in [
            "",
            "../../etc/passwd",
            "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
            "a%2f",
        ] {
            assert!(bad.parse::<FileId>().is_err(), "{bad} accepted");
        }
        let id = FileId::random();
        assert_eq!(id.as_str().parse::<FileId>(), Ok(id.clone()));
        assert_eq!(id.as_str().len(), FileId::LEN);
    }
}
