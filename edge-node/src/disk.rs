//! The disk tier: slices kept in files under one directory, bounded in size, each with a
//! SHA-256 of its bytes checked on every read, and found again by scanning the directory
//! when the edge restarts.
//!
//! File layout: `{root}/{file_id}/{slice}` holding a 48-byte header — magic `CZS1`, the
//! object's total length (u64 LE), the slice length (u32 LE), the SHA-256 of those two
//! lengths and the slice — then the slice. Files are written to a `.tmp` name and renamed, so a crash leaves either
//! a whole slice or a `.tmp` that the next start deletes. Names come from validated ids.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cadenza_common::FileId;
use moka::future::Cache;
use moka::notification::RemovalCause;
use ring::digest::{Context, SHA256};

const MAGIC: &[u8; 4] = b"CZS1";
const HEADER: usize = 4 + 8 + 4 + 32;

/// Why a slice file was not used.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskMiss {
    /// Not on disk.
    Absent,
    /// On disk but damaged; it has been removed.
    Corrupt,
}

/// Slices on disk.
pub struct DiskTier {
    root: PathBuf,
    index: Cache<(FileId, u64), u32>,
    /// Bytes of the files in `index`: added as one goes in, taken off as one leaves.
    bytes: Arc<AtomicU64>,
    /// Bumped by every purge; a write begun before a purge must not land after it.
    purges: AtomicU64,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskTier({})", self.root.display())
    }
}

fn slice_path(root: &Path, id: &FileId, index: u64) -> PathBuf {
    root.join(id.as_str()).join(index.to_string())
}

impl DiskTier {
    /// Opens (creating) the tier at `root`, bounded to `capacity_bytes` of slices of
    /// `slice_size` (bounded by count, as [`crate::cache::slice_capacity`] says why), and
    /// indexes the slices already there.
    pub async fn open(
        root: impl Into<PathBuf>,
        capacity_bytes: u64,
        slice_size: u64,
    ) -> std::io::Result<Self> {
        let root = root.into();
        tokio::fs::create_dir_all(&root).await?;
        let listener_root = root.clone();
        let bytes = Arc::new(AtomicU64::new(0));
        let gone = bytes.clone();
        let index = Cache::builder()
            .max_capacity(crate::cache::slice_capacity(
                capacity_bytes,
                slice_size + HEADER as u64,
            ))
            .support_invalidation_closures()
            .eviction_listener(move |key: Arc<(FileId, u64)>, len: u32, cause| {
                gone.fetch_sub(u64::from(len), Ordering::Relaxed);
                // A replaced entry was rewritten in place; anything else leaves for good.
                if cause != RemovalCause::Replaced {
                    let _ = std::fs::remove_file(slice_path(&listener_root, &key.0, key.1));
                }
            })
            .build();
        let tier = Self {
            root,
            index,
            bytes,
            purges: AtomicU64::new(0),
        };
        tier.scan().await?;
        Ok(tier)
    }

    /// Rebuilds the index from the directory (a restart), deleting leftovers of crashes.
    async fn scan(&self) -> std::io::Result<()> {
        let mut dirs = tokio::fs::read_dir(&self.root).await?;
        while let Some(dir) = dirs.next_entry().await? {
            let Some(id) = dir
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<FileId>().ok())
            else {
                continue;
            };
            let mut files = tokio::fs::read_dir(dir.path()).await?;
            while let Some(file) = files.next_entry().await? {
                let name = file.file_name();
                let Some(name) = name.to_str() else { continue };
                match name.parse::<u64>() {
                    Ok(index) => {
                        let len = file.metadata().await?.len();
                        self.insert((id.clone(), index), len).await;
                    }
                    Err(_) => {
                        let _ = tokio::fs::remove_file(file.path()).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Slice `index` of `id` with its object's total length, checked against its SHA-256.
    pub async fn get(&self, id: &FileId, index: u64) -> Result<(u64, Bytes), DiskMiss> {
        let key = (id.clone(), index);
        if self.index.get(&key).await.is_none() {
            return Err(DiskMiss::Absent);
        }
        let path = slice_path(&self.root, id, index);
        let Ok(raw) = tokio::fs::read(&path).await else {
            self.index.invalidate(&key).await;
            return Err(DiskMiss::Absent);
        };
        match decode(&raw) {
            Some(found) => Ok(found),
            None => {
                tracing::warn!(file = %id, slice = index, "corrupt slice on disk; refetching");
                self.index.invalidate(&key).await;
                let _ = tokio::fs::remove_file(&path).await;
                Err(DiskMiss::Corrupt)
            }
        }
    }

    /// Whether slice `index` of `id` is on disk (as far as the index knows).
    pub fn holds(&self, id: &FileId, index: u64) -> bool {
        self.index.contains_key(&(id.clone(), index))
    }

    /// Indexes a slice file of `len` bytes.
    async fn insert(&self, key: (FileId, u64), len: u64) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.bytes.fetch_add(u64::from(len), Ordering::Relaxed);
        self.index.insert(key, len).await;
    }

    /// The purge epoch: take it before fetching what [`Self::put`] will store.
    pub fn epoch(&self) -> u64 {
        self.purges.load(Ordering::SeqCst)
    }

    /// Stores a slice fetched during `epoch` (errors are logged: the disk tier is an
    /// optimisation). If a purge happened since, nothing is stored: a takedown must not be
    /// undone by a write that was already on its way.
    pub async fn put(&self, id: &FileId, index: u64, object_len: u64, data: &Bytes, epoch: u64) {
        if self.epoch() != epoch {
            return;
        }
        let path = slice_path(&self.root, id, index);
        let tmp = path.with_extension("tmp");
        let write = async {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::write(&tmp, encode(object_len, data)).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        match write.await {
            Ok(()) if self.epoch() != epoch => {
                // A purge ran while this write was in flight.
                let _ = tokio::fs::remove_file(&path).await;
            }
            Ok(()) => {
                self.insert((id.clone(), index), (HEADER + data.len()) as u64)
                    .await;
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                tracing::warn!(file = %id, slice = index, error = %e, "cannot write slice to disk");
            }
        }
    }

    /// Drops every slice of `ids`.
    pub async fn purge(&self, ids: &[FileId]) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        let set: std::collections::HashSet<FileId> = ids.iter().cloned().collect();
        let _ = self
            .index
            .invalidate_entries_if(move |key, _| set.contains(&key.0));
        self.index.run_pending_tasks().await;
        for id in ids {
            let _ = tokio::fs::remove_dir_all(self.root.join(id.as_str())).await;
        }
    }

    /// Bytes and slices on disk.
    pub async fn usage(&self) -> (u64, u64) {
        self.index.run_pending_tasks().await;
        (self.bytes.load(Ordering::Relaxed), self.index.entry_count())
    }
}

/// SHA-256 over the header's lengths and the slice, so a flipped bit in either is caught.
fn checksum(lengths: &[u8], data: &[u8]) -> ring::digest::Digest {
    let mut ctx = Context::new(&SHA256);
    ctx.update(lengths);
    ctx.update(data);
    ctx.finish()
}

fn encode(object_len: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&object_len.to_le_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
    let sum = checksum(&out[4..16], data);
    out.extend_from_slice(sum.as_ref());
    out.extend_from_slice(data);
    out
}

fn decode(raw: &[u8]) -> Option<(u64, Bytes)> {
    if raw.len() < HEADER || &raw[..4] != MAGIC {
        return None;
    }
    let object_len = u64::from_le_bytes(raw[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(raw[12..16].try_into().ok()?) as usize;
    let data = &raw[HEADER..];
    if data.len() != len || checksum(&raw[4..16], data).as_ref() != &raw[16..48] {
        return None;
    }
    Some((object_len, Bytes::copy_from_slice(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_any_damage_is_caught() {
        let data = vec![7u8; 1000];
        let raw = encode(5000, &data);
        assert_eq!(decode(&raw), Some((5000, Bytes::from(data.clone()))));
        for flip in [0, 5, 13, 20, HEADER, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[flip] ^= 1;
            assert_eq!(decode(&bad), None, "flipped byte {flip} accepted");
        }
        assert_eq!(decode(&raw[..raw.len() - 1]), None);
        assert_eq!(decode(b"CZS1"), None);
    }

    proptest::proptest! {
        /// Whatever a damaged disk holds: a record read back is the one written, any change
        /// or cut to it is refused, and any bytes at all are refused or read whole.
        #[test]
        fn only_a_record_as_written_is_read(
            object_len in proptest::prelude::any::<u64>(),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..), 1..4),
            cut in proptest::prelude::any::<usize>(),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
        ) {
            let raw = encode(object_len, &data);
            proptest::prop_assert_eq!(decode(&raw), Some((object_len, Bytes::from(data))));
            let mut damaged = raw.clone();
            for (at, change) in flips {
                let at = at % damaged.len();
                damaged[at] ^= change;
            }
            if damaged != raw {
                proptest::prop_assert_eq!(decode(&damaged), None);
            }
            proptest::prop_assert_eq!(decode(&raw[..cut % raw.len()]), None);
            let mut tagged = MAGIC.to_vec();
            tagged.extend_from_slice(&noise);
            proptest::prop_assert_eq!(decode(&tagged), None);
        }
    }
}

#[cfg(test)]
mod tier_tests {
    use super::*;

    #[tokio::test]
    async fn purge_removes_and_stale_writes_do_not_land() {
        let dir = std::env::temp_dir().join(format!("cadenza-disk-{}", std::process::id()));
        let tier = DiskTier::open(&dir, 1 << 20, 1024).await.unwrap();
        let id = FileId::random();
        let data = Bytes::from(vec![1u8; 100]);
        tier.put(&id, 0, 100, &data, tier.epoch()).await;
        assert_eq!(tier.get(&id, 0).await, Ok((100, data.clone())));
        let before = tier.epoch();
        tier.purge(std::slice::from_ref(&id)).await;
        assert_eq!(tier.get(&id, 0).await, Err(DiskMiss::Absent));
        tier.put(&id, 0, 100, &data, before).await;
        assert_eq!(
            tier.get(&id, 0).await,
            Err(DiskMiss::Absent),
            "stale write landed"
        );
        // A restart finds what is there.
        tier.put(&id, 1, 100, &data, tier.epoch()).await;
        drop(tier);
        let again = DiskTier::open(&dir, 1 << 20, 1024).await.unwrap();
        assert_eq!(again.get(&id, 1).await, Ok((100, data)));
        assert_eq!(again.usage().await, ((HEADER + 100) as u64, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_tier_holds_as_many_slices_as_fit_and_counts_their_bytes() {
        let dir = std::env::temp_dir().join(format!("cadenza-disk-full-{}", std::process::id()));
        let slice = 1024;
        let tier = DiskTier::open(&dir, 4 * (slice + HEADER as u64), slice)
            .await
            .unwrap();
        let id = FileId::random();
        let data = Bytes::from(vec![7u8; slice as usize]);
        for index in 0..10 {
            tier.put(&id, index, 10 * slice, &data, tier.epoch()).await;
        }
        let (bytes, slices) = tier.usage().await;
        assert!((1..=4).contains(&slices), "{slices} slices held");
        assert_eq!(bytes, slices * (slice + HEADER as u64));
        let files = std::fs::read_dir(dir.join(id.as_str())).unwrap().count() as u64;
        assert_eq!(files, slices, "evicted slices must leave the disk");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
