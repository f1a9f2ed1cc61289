//! Content encryption: AES-128 in counter mode, one random key and IV per rendition.
//!
//! CTR turns AES into a keystream indexed by byte offset, so a player can decrypt any byte
//! range on its own — which is what makes range requests and seeking work on encrypted files.
//! The keystream block for offset `o` is `AES(key, IV + o / 16)` (the IV read as a 128-bit
//! big-endian counter), and the byte within it is `o % 16`.

use aes::Aes128;
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::ids::{hex_decode, hex_encode};

/// Why a content key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The key or IV is not 32 hexadecimal characters.
    #[error("content key and IV must each be 32 hexadecimal characters")]
    BadKeyEncoding,
}

/// `N` bytes from the operating system's secure random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The system RNG only fails when the OS has no entropy source at all; no key may be made
    // then, so stopping the process is the only safe answer.
    #[allow(clippy::expect_used)]
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random source failed");
    out
}

/// The key and initial counter that encrypt one rendition.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ContentKeyHex", into = "ContentKeyHex")]
pub struct ContentKey {
    key: [u8; 16],
    iv: [u8; 16],
}

#[derive(Serialize, Deserialize)]
struct ContentKeyHex {
    key: String,
    iv: String,
}

impl ContentKey {
    /// A fresh random key and IV.
    pub fn random() -> Self {
        Self {
            key: random_bytes(),
            iv: random_bytes(),
        }
    }

    /// A key from its raw parts.
    pub fn from_parts(key: [u8; 16], iv: [u8; 16]) -> Self {
        Self { key, iv }
    }

    /// A key from the hexadecimal forms used in grants and the catalogue.
    pub fn from_hex(key: &str, iv: &str) -> Result<Self, CryptoError> {
        let parse = |s: &str| -> Result<[u8; 16], CryptoError> {
            hex_decode(s)
                .and_then(|v| <[u8; 16]>::try_from(v).ok())
                .ok_or(CryptoError::BadKeyEncoding)
        };
        Ok(Self {
            key: parse(key)?,
            iv: parse(iv)?,
        })
    }

    /// The key in hexadecimal.
    pub fn key_hex(&self) -> String {
        hex_encode(&self.key)
    }

    /// The IV in hexadecimal.
    pub fn iv_hex(&self) -> String {
        hex_encode(&self.iv)
    }

    /// Encrypts or decrypts `buf` in place, where `buf[0]` sits at byte `offset` of the file.
    /// Encryption and decryption are the same operation in CTR mode.
    pub fn apply_at(&self, offset: u64, buf: &mut [u8]) {
        let mut cipher = Ctr128BE::<Aes128>::new(&self.key.into(), &self.iv.into());
        cipher.seek(offset);
        cipher.apply_keystream(buf);
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach logs.
        f.write_str("ContentKey(..)")
    }
}

impl TryFrom<ContentKeyHex> for ContentKey {
    type Error = CryptoError;
    fn try_from(h: ContentKeyHex) -> Result<Self, CryptoError> {
        Self::from_hex(&h.key, &h.iv)
    }
}

impl From<ContentKey> for ContentKeyHex {
    fn from(k: ContentKey) -> Self {
        Self {
            key: k.key_hex(),
            iv: k.iv_hex(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrypting_from_any_offset_matches_whole_file_decryption() {
        let key = ContentKey::random();
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut cipher = plain.clone();
        key.apply_at(0, &mut cipher);
        assert_ne!(cipher, plain);
        for (start, len) in [
            (0, 1),
            (1, 15),
            (15, 2),
            (16, 16),
            (17, 4000),
            (9_999, 1),
            (4095, 905),
        ] {
            let mut part = cipher[start..start + len].to_vec();
            key.apply_at(start as u64, &mut part);
            assert_eq!(part, plain[start..start + len], "range {start}+{len}");
        }
    }

    #[test]
    fn counter_carries_across_the_whole_iv() {
        // An IV of all ones overflows on the first block; the keystream must still be the one
        // a single pass produces.
        let key = ContentKey::from_parts([3; 16], [0xff; 16]);
        let mut whole = vec![0u8; 64];
        key.apply_at(0, &mut whole);
        let mut tail = vec![0u8; 40];
        key.apply_at(24, &mut tail);
        assert_eq!(tail, whole[24..]);
    }

    #[test]
    fn hex_form_round_trips_and_rejects_garbage() {
        let key = ContentKey::random();
        let json = serde_json::to_string(&key).unwrap_or_default();
        let back: ContentKey = serde_json::from_str(&json).unwrap_or_else(|_| ContentKey::random());
        assert_eq!(back, key);
        assert_eq!(
            ContentKey::from_hex("00", "11"),
            Err(CryptoError::BadKeyEncoding)
        );
        assert_ne!(ContentKey::random(), ContentKey::random());
    }
}
