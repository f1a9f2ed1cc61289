//! Resumable uploads on local disk: the state behind the tus endpoints.
//!
//! Each upload is two files in one directory: `{id}.json`, its state, replaced atomically
//! (temp file, fsync, rename), and `{id}.bin`, the bytes received so far. The state's
//! `offset` is the **committed** length: only bytes that were fsynced before the state said
//! so count. A PATCH writes at the committed offset after truncating anything past it, so
//! bytes a crash left behind unacknowledged are dropped rather than trusted, and the upload
//! resumes from exactly what `HEAD` reports. A PATCH with a checksum commits only when its
//! whole chunk matches; one without commits as it goes (every [`COMMIT_EVERY`] bytes) and keeps
//! what arrived when the client goes away, as tus asks.
//!
//! Nothing here survives in memory alone, so a restarted origin serves the same uploads.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cadenza_common::{UploadId, hex_encode};
use futures_util::{Stream, StreamExt};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::tus::{Checksum, Metadata, TusError};

/// Bytes written between commits of a PATCH without a checksum.
pub const COMMIT_EVERY: u64 = 4 * 1024 * 1024;

/// Where an upload is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Phase {
    /// Bytes are still arriving.
    Receiving,
    /// Every byte arrived and was hashed; the master is not yet in the object store.
    Received { sha256: String },
    /// The master is in the object store under the upload's id.
    Stored { sha256: String },
}

/// One upload's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub id: UploadId,
    /// The label that created it; only that label may touch it.
    pub owner: String,
    /// Declared total length.
    pub length: u64,
    /// Committed bytes.
    pub offset: u64,
    #[serde(default)]
    pub metadata: Metadata,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch after which an incomplete upload is removed.
    pub expires_at: u64,
    #[serde(flatten)]
    pub phase: Phase,
}

impl UploadState {
    /// The master's SHA-256 once every byte arrived.
    pub fn sha256(&self) -> Option<&str> {
        match &self.phase {
            Phase::Receiving => None,
            Phase::Received { sha256 } | Phase::Stored { sha256 } => Some(sha256),
        }
    }

    /// Whether an incomplete upload has outlived its expiry.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.phase == Phase::Receiving && unix(now) >= self.expires_at
    }
}

/// Why an upload operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The protocol refuses the request.
    #[error(transparent)]
    Tus(#[from] TusError),
    /// No upload with that id (or it belongs to another label).
    #[error("no such upload")]
    NotFound,
    /// The client's body broke off; what arrived before was kept when it could be.
    #[error("the request body broke off: {0}")]
    BodyBroken(String),
    /// The disk failed.
    #[error("upload storage failed: {0}")]
    Io(#[from] std::io::Error),
    /// A state file could not be read back.
    #[error("upload state {0} is damaged")]
    Damaged(PathBuf),
}

/// Seconds since the epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The directory of resumable uploads.
pub struct Uploads {
    dir: PathBuf,
    ttl: Duration,
    /// One writer per upload at a time; entries die with their last holder.
    locks: Mutex<HashMap<UploadId, Weak<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads").field("dir", &self.dir).finish()
    }
}

/// Held while a request writes an upload.
pub struct WriteGuard {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Uploads {
    /// Opens (creating) the directory; incomplete uploads expire `ttl` after their last write.
    pub async fn open(dir: impl Into<PathBuf>, ttl: Duration) -> std::io::Result<Self> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir).await?;
        Ok(Self {
            dir,
            ttl,
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn state_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Where the upload's bytes are.
    pub fn data_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    /// Takes the upload's write lock, or `Locked` if another request holds it.
    pub fn lock(&self, id: &UploadId) -> Result<WriteGuard, UploadError> {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, weak| weak.strong_count() > 0);
            match locks.get(id).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(id.clone(), Arc::downgrade(&m));
                    m
                }
            }
        };
        let guard = mutex.try_lock_owned().map_err(|_| TusError::Locked)?;
        Ok(WriteGuard { _guard: guard })
    }

    async fn save(&self, state: &UploadState) -> Result<(), UploadError> {
        let path = self.state_path(&state.id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(&bytes).await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, &path).await?;
        tokio::fs::File::open(&self.dir).await?.sync_all().await?;
        Ok(())
    }

    /// Creates an empty upload of `length` bytes for `owner`.
    pub async fn create(
        &self,
        owner: &str,
        length: u64,
        metadata: Metadata,
        now: SystemTime,
    ) -> Result<UploadState, UploadError> {
        let id = UploadId::random();
        let file = tokio::fs::File::create(self.data_path(&id)).await?;
        file.sync_all().await?;
        let state = UploadState {
            id,
            owner: owner.to_owned(),
            length,
            offset: 0,
            metadata,
            created_at: unix(now),
            expires_at: unix(now + self.ttl),
            phase: Phase::Receiving,
        };
        self.save(&state).await?;
        Ok(state)
    }

    /// Records a master that arrived whole in one request and is already stored, so it has
    /// an owner like every resumable upload.
    pub async fn record_stored(
        &self,
        id: &UploadId,
        owner: &str,
        length: u64,
        sha256: String,
        now: SystemTime,
    ) -> Result<UploadState, UploadError> {
        let state = UploadState {
            id: id.clone(),
            owner: owner.to_owned(),
            length,
            offset: length,
            metadata: Metadata::default(),
            created_at: unix(now),
            expires_at: unix(now),
            phase: Phase::Stored { sha256 },
        };
        self.save(&state).await?;
        Ok(state)
    }

    /// The upload, if it exists and belongs to `owner`. An expired one is removed and
    /// reported as `Expired`.
    pub async fn get(
        &self,
        id: &UploadId,
        owner: &str,
        now: SystemTime,
    ) -> Result<UploadState, UploadError> {
        let path = self.state_path(id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(UploadError::NotFound);
            }
            Err(e) => return Err(e.into()),
        };
        let state: UploadState =
            serde_json::from_slice(&bytes).map_err(|_| UploadError::Damaged(path))?;
        // Another label's upload is indistinguishable from a missing one.
        if state.owner != owner || &state.id != id {
            return Err(UploadError::NotFound);
        }
        if state.is_expired(now) {
            self.remove(id).await?;
            return Err(TusError::Expired.into());
        }
        Ok(state)
    }

    /// Appends one PATCH's body at `offset`. The caller holds the upload's [`WriteGuard`].
    pub async fn append<S, E>(
        &self,
        mut state: UploadState,
        offset: u64,
        content_length: Option<u64>,
        checksum: Option<Checksum>,
        body: S,
        now: SystemTime,
    ) -> Result<UploadState, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if offset != state.offset {
            return Err(TusError::OffsetMismatch {
                given: offset,
                current: state.offset,
            }
            .into());
        }
        let room = state.length - state.offset;
        let too_long = || {
            UploadError::Tus(TusError::TooLarge(format!(
                "the upload's declared length is {}; {} bytes remain",
                state.length, room
            )))
        };
        if content_length.is_some_and(|n| n > room) {
            return Err(too_long());
        }
        let start = state.offset;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(self.data_path(&state.id))
            .await?;
        // Anything past the committed offset was never acknowledged: drop it.
        file.set_len(start).await?;
        file.seek(SeekFrom::Start(start)).await?;
        let mut hash = checksum
            .as_ref()
            .map(|c| Context::new(c.algorithm.digest()));
        let mut written = 0u64;
        let mut uncommitted = 0u64;
        let mut body = body;
        let broke = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => break Some(e.to_string()),
            };
            if written + chunk.len() as u64 > room {
                file.set_len(start).await?;
                return Err(too_long());
            }
            if let Some(h) = hash.as_mut() {
                h.update(&chunk);
            }
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
            uncommitted += chunk.len() as u64;
            if hash.is_none() && uncommitted >= COMMIT_EVERY {
                file.sync_data().await?;
                state.offset = start + written;
                self.save(&state).await?;
                uncommitted = 0;
            }
        };
        if let Some(reason) = broke {
            if hash.is_some() {
                // An unverifiable chunk is not kept.
                file.set_len(start).await?;
            } else {
                file.sync_data().await?;
                state.offset = start + written;
                self.save(&state).await?;
            }
            return Err(UploadError::BodyBroken(reason));
        }
        if let (Some(h), Some(c)) = (hash, &checksum)
            && h.finish().as_ref() != c.digest.as_slice()
        {
            file.set_len(start).await?;
            return Err(TusError::ChecksumMismatch.into());
        }
        file.sync_data().await?;
        state.offset = start + written;
        state.expires_at = unix(now + self.ttl);
        self.save(&state).await?;
        Ok(state)
    }

    /// Hashes a fully received upload and records it as `Received`.
    pub async fn seal(&self, mut state: UploadState) -> Result<UploadState, UploadError> {
        debug_assert_eq!(state.offset, state.length);
        let mut file = tokio::fs::File::open(self.data_path(&state.id)).await?;
        let mut hash = Context::new(&SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = state.length;
        while left > 0 {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        state.phase = Phase::Received {
            sha256: hex_encode(hash.finish().as_ref()),
        };
        self.save(&state).await?;
        Ok(state)
    }

    /// Records that the master entered the object store (its bytes moved there).
    pub async fn mark_stored(&self, mut state: UploadState) -> Result<UploadState, UploadError> {
        if let Phase::Received { sha256 } = &state.phase {
            state.phase = Phase::Stored {
                sha256: sha256.clone(),
            };
        }
        self.save(&state).await?;
        let _ = tokio::fs::remove_file(self.data_path(&state.id)).await;
        Ok(state)
    }

    /// Deletes an upload's files (termination, expiry).
    pub async fn remove(&self, id: &UploadId) -> Result<(), UploadError> {
        for path in [self.data_path(id), self.state_path(id)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes every incomplete upload past its expiry; returns how many.
    pub async fn sweep(&self, now: SystemTime) -> Result<usize, UploadError> {
        let mut removed = 0;
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<UploadId>().ok())
            else {
                continue;
            };
            let Ok(bytes) = tokio::fs::read(entry.path()).await else {
                continue;
            };
            let Ok(state) = serde_json::from_slice::<UploadState>(&bytes) else {
                continue;
            };
            // An upload being written right now is left alone.
            if state.is_expired(now) && self.lock(&id).is_ok() {
                self.remove(&id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The directory, for tests and operators.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::tus::Algorithm;

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
    }

    fn sha256(b: &[u8]) -> Checksum {
        Checksum {
            algorithm: Algorithm::Sha256,
            digest: ring::digest::digest(&SHA256, b).as_ref().to_vec(),
        }
    }

    #[tokio::test]
    async fn resumes_from_the_committed_offset_only() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let uploads = Uploads::open(dir.path(), Duration::from_secs(60))
            .await
            .unwrap();
        let s = uploads
            .create("label", 10, Metadata::default(), now)
            .await
            .unwrap();
        let s = uploads
            .append(s, 0, None, None, chunks(&[b"abc", b"de"]), now)
            .await
            .unwrap();
        assert_eq!(s.offset, 5);

        // Garbage past the committed offset (a crash mid-write) is dropped on the next PATCH.
        std::fs::OpenOptions::new()
            .append(true)
            .open(uploads.data_path(&s.id))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"XXXX"))
            .unwrap();
        let reopened = Uploads::open(dir.path(), Duration::from_secs(60))
            .await
            .unwrap();
        let s = reopened.get(&s.id, "label", now).await.unwrap();
        assert_eq!(s.offset, 5);

        // Wrong offset: 409, nothing written.
        let err = reopened
            .append(s.clone(), 3, None, None, chunks(&[b"zz"]), now)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            UploadError::Tus(TusError::OffsetMismatch { current: 5, .. })
        ));

        // A chunk with a wrong checksum is discarded; a right one commits.
        let err = reopened
            .append(
                s.clone(),
                5,
                None,
                Some(sha256(b"nope!")),
                chunks(&[b"fghij"]),
                now,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::Tus(TusError::ChecksumMismatch)));
        let s = reopened.get(&s.id, "label", now).await.unwrap();
        assert_eq!(s.offset, 5);
        // Past the declared length: 413, nothing kept.
        let err = reopened
            .append(s.clone(), 5, None, None, chunks(&[b"fghijk"]), now)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::Tus(TusError::TooLarge(_))));
        let s = reopened
            .append(
                s,
                5,
                None,
                Some(sha256(b"fghij")),
                chunks(&[b"fgh", b"ij"]),
                now,
            )
            .await
            .unwrap();
        assert_eq!(s.offset, 10);
        let s = reopened.seal(s).await.unwrap();
        assert_eq!(
            s.sha256().unwrap(),
            hex_encode(ring::digest::digest(&SHA256, b"abcdefghij").as_ref())
        );
        assert_eq!(
            std::fs::read(reopened.data_path(&s.id)).unwrap(),
            b"abcdefghij"
        );
    }

    #[tokio::test]
    async fn a_broken_body_keeps_what_arrived_unless_checksummed() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let uploads = Uploads::open(dir.path(), Duration::from_secs(60))
            .await
            .unwrap();
        let broken = || {
            futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"abcd")),
                Err("connection reset".to_owned()),
            ])
        };
        let s = uploads
            .create("label", 10, Metadata::default(), now)
            .await
            .unwrap();
        let err = uploads
            .append(s.clone(), 0, None, None, broken(), now)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::BodyBroken(_)));
        let s = uploads.get(&s.id, "label", now).await.unwrap();
        assert_eq!(s.offset, 4);
        let err = uploads
            .append(s.clone(), 4, None, Some(sha256(b"abcd")), broken(), now)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::BodyBroken(_)));
        assert_eq!(uploads.get(&s.id, "label", now).await.unwrap().offset, 4);
    }

    #[tokio::test]
    async fn owners_locks_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let uploads = Uploads::open(dir.path(), Duration::from_secs(60))
            .await
            .unwrap();
        let s = uploads
            .create("a", 10, Metadata::default(), now)
            .await
            .unwrap();
        assert!(matches!(
            uploads.get(&s.id, "b", now).await,
            Err(UploadError::NotFound)
        ));
        let guard = uploads.lock(&s.id).unwrap();
        assert!(matches!(
            uploads.lock(&s.id),
            Err(UploadError::Tus(TusError::Locked))
        ));
        // A locked upload is not swept even when expired.
        let later = now + Duration::from_secs(61);
        assert_eq!(uploads.sweep(later).await.unwrap(), 0);
        drop(guard);
        assert_eq!(uploads.sweep(now).await.unwrap(), 0);
        assert_eq!(uploads.sweep(later).await.unwrap(), 1);
        assert!(matches!(
            uploads.get(&s.id, "a", later).await,
            Err(UploadError::NotFound)
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let s = uploads
            .create("a", 1, Metadata::default(), now)
            .await
            .unwrap();
        assert!(matches!(
            uploads.get(&s.id, "a", later).await,
            Err(UploadError::Tus(TusError::Expired))
        ));
    }
}
