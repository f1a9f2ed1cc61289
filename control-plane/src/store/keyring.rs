//! Envelope encryption of content keys: each rendition's AES-128-CTR key and IV are stored
//! sealed with AES-256-GCM under a master key, bound to the rendition's file id, so a copy of
//! the database does not decrypt the audio. Rotating the master key re-seals the content keys
//! and touches no audio.
//!
//! Stored form: `v1:<master key id>:<nonce hex>:<ciphertext+tag hex>`.

use std::collections::HashMap;

use cadenza_common::{ContentKey, FileId, hex_decode, hex_encode, random_bytes};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sqlx::Row;

use super::{Store, StoreError, corrupt, finish};

/// A master key: 32 random bytes with an id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    bytes: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self {
            id: hex_encode(&random_bytes::<4>()),
            bytes: random_bytes::<32>(),
        }
    }

    /// `ID:HEX` as written by [`MasterKey::to_text`].
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::Invalid("a master key is ID:64 hex digits".into());
        let (id, hex) = text.trim().split_once(':').ok_or_else(bad)?;
        let ok_id = !id.is_empty()
            && id.len() <= 32
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let bytes = hex_decode(hex)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .filter(|_| ok_id)
            .ok_or_else(bad)?;
        Ok(Self {
            id: id.to_owned(),
            bytes,
        })
    }

    /// The text form, a secret.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.id, hex_encode(&self.bytes))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn aead(&self) -> Result<LessSafeKey, StoreError> {
        UnboundKey::new(&AES_256_GCM, &self.bytes)
            .map(LessSafeKey::new)
            .map_err(|_| corrupt("master key rejected by AES-256-GCM"))
    }
}

/// The master keys a store seals with (the current one) and opens with (any of them).
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: MasterKey,
    others: HashMap<String, MasterKey>,
}

impl KeyRing {
    /// Seals with `current`; opens what `current` or any of `older` sealed.
    pub fn new(current: MasterKey, older: impl IntoIterator<Item = MasterKey>) -> Self {
        Self {
            others: older
                .into_iter()
                .filter(|k| k.id != current.id)
                .map(|k| (k.id.clone(), k))
                .collect(),
            current,
        }
    }

    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    fn get(&self, id: &str) -> Option<&MasterKey> {
        if self.current.id == id {
            Some(&self.current)
        } else {
            self.others.get(id)
        }
    }

    /// Seals `key` for the rendition `file`.
    pub fn seal(&self, file: &FileId, key: &ContentKey) -> Result<String, StoreError> {
        let nonce = random_bytes::<12>();
        let mut data = format!("{}{}", key.key_hex(), key.iv_hex()).into_bytes();
        self.current
            .aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(file.as_str().as_bytes()),
                &mut data,
            )
            .map_err(|_| corrupt("sealing a content key failed"))?;
        Ok(format!(
            "v1:{}:{}:{}",
            self.current.id,
            hex_encode(&nonce),
            hex_encode(&data)
        ))
    }

    /// Opens a sealed key for `file`; fails when the master key is unknown or the sealed
    /// text was altered or belongs to another file.
    pub fn open(&self, file: &FileId, sealed: &str) -> Result<ContentKey, StoreError> {
        let mut parts = sealed.split(':');
        let (Some("v1"), Some(id), Some(nonce), Some(data), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(corrupt(format!("sealed key of {file} is malformed")));
        };
        let master = self.get(id).ok_or_else(|| {
            StoreError::Internal(format!(
                "the content key of {file} is sealed under master key {id:?}, which this control plane does not have"
            ))
        })?;
        let nonce = hex_decode(nonce)
            .and_then(|n| <[u8; 12]>::try_from(n).ok())
            .ok_or_else(|| corrupt(format!("sealed key of {file}: bad nonce")))?;
        let mut data =
            hex_decode(data).ok_or_else(|| corrupt(format!("sealed key of {file}: bad hex")))?;
        let plain = master
            .aead()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(file.as_str().as_bytes()),
                &mut data,
            )
            .map_err(|_| {
                corrupt(format!(
                    "sealed key of {file} does not open: altered, or not this file's"
                ))
            })?;
        let text = std::str::from_utf8(plain).map_err(corrupt)?;
        if text.len() != 64 {
            return Err(corrupt(format!("sealed key of {file}: wrong length")));
        }
        ContentKey::from_hex(&text[..32], &text[32..]).map_err(corrupt)
    }
}

/// Renditions re-sealed per transaction during a rotation.
const RESEAL_BATCH: i64 = 500;

impl Store {
    /// Seals every content key still stored in the clear (catalogues from before envelope
    /// encryption) and every key sealed under another master key, with the current one.
    /// Returns how many were sealed. Idempotent; safe to interrupt and run again.
    pub async fn reseal_keys(&self) -> Result<u64, StoreError> {
        let ring = self.ring()?;
        let current = format!("v1:{}:%", ring.current().id());
        let mut done = 0u64;
        loop {
            let mut tx = self.write_tx().await?;
            let out = async {
                let rows = sqlx::query(
                    "SELECT file_id, key_hex, iv_hex, sealed_key FROM renditions
                     WHERE sealed_key IS NULL OR sealed_key NOT LIKE $1
                     ORDER BY file_id LIMIT $2",
                )
                .bind(&current)
                .bind(RESEAL_BATCH)
                .fetch_all(&mut *tx)
                .await?;
                for row in &rows {
                    let file: FileId = super::parse(&row.try_get::<String, _>("file_id")?)?;
                    let key = match row.try_get::<Option<String>, _>("sealed_key")? {
                        Some(sealed) => ring.open(&file, &sealed)?,
                        None => ContentKey::from_hex(
                            &row.try_get::<String, _>("key_hex")?,
                            &row.try_get::<String, _>("iv_hex")?,
                        )
                        .map_err(corrupt)?,
                    };
                    sqlx::query(
                        "UPDATE renditions SET sealed_key = $1, key_hex = '', iv_hex = '' WHERE file_id = $2",
                    )
                    .bind(ring.seal(&file, &key)?)
                    .bind(file.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(rows.len() as u64)
            }
            .await;
            let n = finish(tx, out).await?;
            done += n;
            if n < RESEAL_BATCH as u64 {
                return Ok(done);
            }
        }
    }
}
