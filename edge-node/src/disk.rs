//! The disk tier: slices kept in files under one directory, bounded in size, each with a
//! checksum of its bytes checked on every read, and found again by scanning the directory
//! when the edge restarts.
//!
//! File layout: `{root}/{file_id}/{slice}` holding a 20-byte header — magic `CZS2`, the
//! object's total length (u64 LE), the slice length (u32 LE), the CRC-32 of those two lengths
//! and the slice (u32 LE) — then the slice. Files an earlier build wrote (`CZS1`, a 48-byte
//! header with a SHA-256 in place of the CRC) are still read and checked. The CRC catches what
//! a disk does to data (btrfs and Ceph check data with a CRC-32 too) at about a tenth of
//! SHA-256's cost, which was two thirds of a disk hit's: an unkeyed SHA-256 is no better
//! against someone who can write the cache directory. Files are written to a `{slice}.{nonce}.tmp` name
//! (the nonce is the process's) and renamed, so a crash leaves either a whole slice or a
//! `.tmp` that the next start deletes. Names come from validated ids.
//!
//! What is on disk is known from [`SliceIndex`] (about 60 bytes a slice). At start the
//! directory is scanned on a blocking thread while the edge serves: until the scan is done, a
//! slice the index does not know yet is looked for on disk, and indexed when found, so a
//! restarted edge with terabytes of slices serves them from its first request (nginx's cache
//! loader works the same way).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use cadenza_common::FileId;
use ring::digest::{Context, SHA256};
use tokio::sync::watch;

use crate::slice_index::{Key, SliceIndex};

const MAGIC: &[u8; 4] = b"CZS2";
const HEADER: usize = 4 + 8 + 4 + 4;
/// Records of earlier builds: a SHA-256 in place of the CRC.
const MAGIC_SHA: &[u8; 4] = b"CZS1";
const HEADER_SHA: usize = 4 + 8 + 4 + 32;
/// The file in a tier's directory that says the slice size its slices were cut at. Slice
/// `i` is bytes `i × size ..` of its file, so a slice kept under another size is other bytes
/// of the file under the same name: a directory whose marker names another size is emptied,
/// not served from. A directory without one (written before the marker was) is taken to
/// match, and marked once scanned.
const MARKER: &str = "slice-size";
/// Slice writes under way at once. Past it a fetched slice is not written (it is served, and
/// kept in memory as ever): a miss storm on a slow disk would otherwise queue writes, each
/// holding its slice, without bound.
const WRITES_IN_FLIGHT: usize = 64;

/// What a disk was asked to do.
#[derive(Debug, Clone, Copy)]
enum Io {
    Read,
    Write,
}

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
    /// How this process's slice files in the making end (`{slice}.{nonce}.tmp`): the
    /// start-up scan, which runs while slices are written, deletes other `.tmp` files (a
    /// crash's leftovers), never these.
    tmp: String,
    capacity_bytes: u64,
    /// What slices are read into.
    buffers: Arc<Buffers>,
    /// What failed reads and writes have done to this disk.
    failures: Mutex<Failures>,
    index: Arc<Mutex<SliceIndex>>,
    /// Bumped by every purge; a write begun before a purge must not land after it.
    purges: Arc<AtomicU64>,
    /// Becomes true once the start-up scan has indexed what the directory held.
    scanned: watch::Receiver<bool>,
    /// The directory's slices were cut at another slice size than this edge's (its
    /// [`MARKER`] says so): the scan removes them, and none is served meanwhile.
    stale: bool,
    /// Room for writes under way, and the slices not written for want of it.
    writes: Arc<tokio::sync::Semaphore>,
    writes_skipped: AtomicU64,
}

/// Slice reads and writes that failed (a full, read-only or failing disk).
#[derive(Debug, Default)]
struct Failures {
    /// Writes, since start.
    writes: u64,
    /// Reads, since start (not those of slices that were not there).
    reads: u64,
    /// Failures of either since the last good write: [`crate::disks::FAILURES_OUT`] take
    /// the disk out of service. A good read does not clear them: a disk that reads what it
    /// has but cannot write (full, remounted read-only) is failing all the same.
    in_a_row: u64,
    /// When the last of them found the disk out of service.
    out_since: Option<Instant>,
    /// When one was last logged: at most one warning each 10 s, not one for every slice.
    warned: Option<Instant>,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskTier({})", self.root.display())
    }
}

fn slice_path(root: &Path, id: &FileId, index: u64) -> PathBuf {
    root.join(id.as_str()).join(index.to_string())
}

fn key_path(root: &Path, key: &Key) -> PathBuf {
    slice_path(root, &FileId::from_bytes(&key.0), u64::from(key.1))
}

/// The index's key for slice `index` of `id`; `None` past the 2³² slices a file may have.
fn key_of(id: &FileId, index: u64) -> Option<Key> {
    Some((id.to_bytes(), u32::try_from(index).ok()?))
}

fn lock(index: &Mutex<SliceIndex>) -> MutexGuard<'_, SliceIndex> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the files of slices the index evicted, and their file's directory once empty.
fn remove_evicted(root: &Path, evicted: &[Key]) {
    for key in evicted {
        let path = key_path(root, key);
        let _ = std::fs::remove_file(&path);
        if let Some(dir) = path.parent() {
            // Fails, as it should, while the file has other slices.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl DiskTier {
    /// Opens (creating) the tier at `root`, bounded to `capacity_bytes` of slices of
    /// `slice_size` (bounded by count, as [`crate::cache::slice_capacity`] says why), and
    /// starts indexing the slices already there.
    pub async fn open(
        root: impl Into<PathBuf>,
        capacity_bytes: u64,
        slice_size: u64,
    ) -> std::io::Result<Self> {
        Self::open_sharing(root.into(), capacity_bytes, slice_size, Arc::default()).await
    }

    /// [`Self::open`], with a purge epoch shared with other tiers (see [`crate::Disks`]).
    pub async fn open_sharing(
        root: PathBuf,
        capacity_bytes: u64,
        slice_size: u64,
        purges: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let (tier, done) = Self::unscanned(root, capacity_bytes, slice_size, purges).await?;
        let (root, index, purges) = (tier.root.clone(), tier.index.clone(), tier.purges.clone());
        let (tmp, stale) = (tier.tmp.clone(), tier.stale);
        tokio::task::spawn_blocking(move || {
            scan(&root, &index, &purges, &tmp, stale);
            // Only now: a crash during the scan of a stale directory leaves the old marker,
            // and the next start empties it again.
            if let Err(e) = mark(&root, slice_size) {
                tracing::warn!(dir = %root.display(), error = %e, "cannot write the disk tier's slice-size marker");
            }
            let _ = done.send(true);
        });
        Ok(tier)
    }

    /// The tier before its scan: what [`Self::open`] starts from, and tests' way to hold
    /// the scan off (it is done when the sender says so or is dropped).
    async fn unscanned(
        root: PathBuf,
        capacity_bytes: u64,
        slice_size: u64,
        purges: Arc<AtomicU64>,
    ) -> std::io::Result<(Self, watch::Sender<bool>)> {
        tokio::fs::create_dir_all(&root).await?;
        let stale = match tokio::fs::read(root.join(MARKER)).await {
            Ok(marked) if marked.trim_ascii() == slice_size.to_string().as_bytes() => false,
            Ok(marked) => {
                tracing::warn!(
                    dir = %root.display(),
                    was = %String::from_utf8_lossy(marked.trim_ascii()),
                    now = slice_size,
                    "the disk tier's slices were cut at another slice size: they are removed, not served"
                );
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        let capacity = crate::cache::slice_capacity(capacity_bytes, slice_size + HEADER as u64);
        let index = SliceIndex::new(usize::try_from(capacity).unwrap_or(usize::MAX));
        let (done, scanned) = watch::channel(false);
        let nonce: [u8; 8] = cadenza_common::random_bytes();
        let tier = Self {
            root,
            tmp: format!("{}.tmp", cadenza_common::hex_encode(&nonce)),
            capacity_bytes,
            buffers: Buffers::new(slice_size),
            failures: Mutex::default(),
            index: Arc::new(Mutex::new(index)),
            purges,
            scanned,
            stale,
            writes: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            writes_skipped: AtomicU64::new(0),
        };
        Ok((tier, done))
    }

    /// Waits for the start-up scan to have indexed what the directory held.
    pub async fn scanned(&self) {
        let _ = self.scanned.clone().wait_for(|done| *done).await;
    }

    /// The bytes of slices this tier may hold.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn failures(&self) -> MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a write's outcome: a success brings the disk back into service, a failure is
    /// [`Self::failed`].
    fn wrote(&self, outcome: Result<(), (&std::io::Error, &FileId, u64)>) {
        match outcome {
            Ok(()) => {
                let mut failures = self.failures();
                if failures.out_since.is_some() {
                    tracing::info!(dir = %self.root.display(), "disk tier back in service");
                }
                (failures.in_a_row, failures.out_since) = (0, None);
            }
            Err((error, id, index)) => self.failed(Io::Write, error, id, index),
        }
    }

    /// Counts a failed read or write and warns of it (at most once each 10 s);
    /// [`crate::disks::FAILURES_OUT`] since the last good write take the disk out of service
    /// for [`crate::disks::COOLDOWN`].
    fn failed(&self, io: Io, error: &std::io::Error, id: &FileId, index: u64) {
        let mut failures = self.failures();
        match io {
            Io::Read => failures.reads += 1,
            Io::Write => failures.writes += 1,
        }
        failures.in_a_row += 1;
        let now = Instant::now();
        if failures
            .warned
            .is_none_or(|at| now.duration_since(at).as_secs() >= 10)
        {
            failures.warned = Some(now);
            let what = match io {
                Io::Write => "cannot write slice to disk (served from memory",
                Io::Read => "cannot read slice from disk (fetched again",
            };
            tracing::warn!(
                dir = %self.root.display(),
                file = %id,
                slice = index,
                error = %error,
                failed_so_far = failures.reads + failures.writes,
                "{what}; next warning in 10 s at the earliest)"
            );
        }
        if failures.in_a_row >= crate::disks::FAILURES_OUT {
            if failures.out_since.is_none() {
                tracing::error!(
                    dir = %self.root.display(),
                    failures = failures.in_a_row,
                    "disk tier out of service: its reads or writes keep failing; its files go to the other disks, and it is tried again in 60 s"
                );
            }
            failures.out_since = Some(now);
        }
    }

    /// Whether this disk is in service at `now`: not out after failed writes, or out long
    /// enough to be tried again.
    pub fn in_service(&self, now: Instant) -> bool {
        self.failures()
            .out_since
            .is_none_or(|at| now.duration_since(at) >= crate::disks::COOLDOWN)
    }

    /// Slice writes that failed since start.
    pub fn write_errors(&self) -> u64 {
        self.failures().writes
    }

    /// Slice reads that failed since start (not those of slices no longer there).
    pub fn read_errors(&self) -> u64 {
        self.failures().reads
    }

    /// The tier's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Memory the index holds.
    pub fn index_bytes(&self) -> usize {
        lock(&self.index).heap_bytes()
    }

    /// Whether the start-up scan is still running.
    pub fn scanning(&self) -> bool {
        !*self.scanned.borrow() && self.scanned.has_changed().is_ok()
    }

    /// Slice `index` of `id` with its object's total length, checked against its checksum.
    pub async fn get(&self, id: &FileId, index: u64) -> Result<(u64, Bytes), DiskMiss> {
        let key = key_of(id, index).ok_or(DiskMiss::Absent)?;
        let indexed = lock(&self.index).get(&key).is_some();
        if !indexed && !self.unindexed_may_be_served() {
            return Err(DiskMiss::Absent);
        }
        let path = slice_path(&self.root, id, index);
        let read = match read_if_cached(&path, &self.buffers) {
            Some(raw) => Ok(raw),
            None => read_on_pool(path.clone(), self.buffers.len).await,
        };
        let raw = match read {
            Ok(raw) => raw,
            Err(e) => {
                // Gone is a purge or an eviction that raced this read; anything else is the disk.
                if e.kind() != std::io::ErrorKind::NotFound {
                    self.failed(Io::Read, &e, id, index);
                }
                if indexed {
                    lock(&self.index).remove(&key);
                }
                return Err(DiskMiss::Absent);
            }
        };
        let file_len = raw.len() as u64;
        match decode(raw) {
            Some(found) => {
                if !indexed {
                    self.insert(key, file_len).await;
                }
                Ok(found)
            }
            None => {
                tracing::warn!(file = %id, slice = index, "corrupt slice on disk; refetching");
                lock(&self.index).remove(&key);
                let _ = tokio::fs::remove_file(&path).await;
                Err(DiskMiss::Corrupt)
            }
        }
    }

    /// Whether slice `index` of `id` is on disk (as far as the index knows, or, while the
    /// start-up scan runs, the directory).
    pub fn holds(&self, id: &FileId, index: u64) -> bool {
        let Some(key) = key_of(id, index) else {
            return false;
        };
        lock(&self.index).contains(&key)
            || (self.unindexed_may_be_served() && slice_path(&self.root, id, index).exists())
    }

    /// Whether a slice the index lacks may still be on disk and good: while the start-up
    /// scan of a directory cut at this edge's slice size runs.
    fn unindexed_may_be_served(&self) -> bool {
        !self.stale && self.scanning()
    }

    /// Indexes a slice file of `len` bytes, removing the files of slices evicted for it.
    async fn insert(&self, key: Key, len: u64) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let evicted = lock(&self.index).insert(key, len);
        if !evicted.is_empty() {
            let root = self.root.clone();
            let _ = tokio::task::spawn_blocking(move || remove_evicted(&root, &evicted)).await;
        }
    }

    /// The purge epoch: take it before fetching what [`Self::put`] will store.
    pub fn epoch(&self) -> u64 {
        self.purges.load(Ordering::SeqCst)
    }

    /// Stores a slice fetched during `epoch` (errors are logged: the disk tier is an
    /// optimisation). If a purge happened since, nothing is stored: a takedown must not be
    /// undone by a write that was already on its way.
    pub async fn put(&self, id: &FileId, index: u64, object_len: u64, data: &Bytes, epoch: u64) {
        let Some(key) = key_of(id, index) else {
            return;
        };
        if self.epoch() != epoch {
            return;
        }
        let path = slice_path(&self.root, id, index);
        let tmp = path.with_extension(&self.tmp);
        let record = encode(object_len, data);
        let write = async {
            let mut made_dir = false;
            loop {
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                match tokio::fs::write(&tmp, &record).await {
                    // The file's last other slice was evicted, and its directory with it,
                    // between the two calls: once more.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !made_dir => {
                        made_dir = true;
                    }
                    done => break done,
                }
            }?;
            tokio::fs::rename(&tmp, &path).await
        };
        match write.await {
            Ok(()) if self.epoch() != epoch => {
                // A purge ran while this write was in flight.
                let _ = tokio::fs::remove_file(&path).await;
            }
            Ok(()) => {
                self.wrote(Ok(()));
                self.insert(key, record.len() as u64).await;
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                self.wrote(Err((&e, id, index)));
            }
        }
    }

    /// Writes a slice fetched during `epoch` in the background ([`Self::put`]), unless
    /// [`WRITES_IN_FLIGHT`] writes are under way already: then it is not written, and counted.
    pub fn put_later(
        self: &Arc<Self>,
        id: FileId,
        index: u64,
        object_len: u64,
        data: Bytes,
        epoch: u64,
    ) {
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            self.writes_skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let tier = self.clone();
        tokio::spawn(async move {
            tier.put(&id, index, object_len, &data, epoch).await;
            drop(permit);
        });
    }

    /// Waits until `n` more writes could start: a pre-warm goes at the disk's pace rather
    /// than have its slices skipped.
    pub async fn room_for(&self, n: usize) {
        let n = u32::try_from(n.min(WRITES_IN_FLIGHT)).unwrap_or(1);
        let _ = self.writes.acquire_many(n).await;
    }

    /// Slices not written because as many writes as may be were under way.
    pub fn writes_skipped(&self) -> u64 {
        self.writes_skipped.load(Ordering::Relaxed)
    }

    /// Drops every slice of `ids`: those its directory holds leave the index, then the
    /// directory goes (a write on its way sees the purge and removes what it wrote).
    pub async fn purge(&self, ids: &[FileId]) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        for id in ids {
            let dir = self.root.join(id.as_str());
            let mut keys = Vec::new();
            let listed = async {
                let mut files = tokio::fs::read_dir(&dir).await?;
                while let Some(file) = files.next_entry().await? {
                    if let Some(slice) = file.file_name().to_str().and_then(|n| n.parse().ok()) {
                        keys.push((id.to_bytes(), slice));
                    }
                }
                std::io::Result::Ok(())
            };
            let listed = listed.await;
            {
                let mut index = lock(&self.index);
                match listed {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // The directory cannot be listed (a failing disk): whatever the index has
                    // of the file, found by a pass over all of it.
                    Err(_) => keys.extend(index.keys_of(&id.to_bytes())),
                }
                for key in &keys {
                    index.remove(key);
                }
            }
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }

    /// Bytes and slices on disk.
    pub fn usage(&self) -> (u64, u64) {
        let index = lock(&self.index);
        (index.bytes(), index.len() as u64)
    }
}

/// Buffers that slice files are read into, each as long as the longest record, given back
/// when the last view of what was read into it goes (the memory tier evicts it, or a
/// response is sent). A disk hit used to allocate a zeroed buffer for every slice: zeroing
/// and allocating 256 KiB was a tenth of what a disk-tier hit cost in the edge's process.
#[derive(Debug)]
struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
    /// One byte more than the longest record (a slice with the longest header), so that
    /// reading one whole ends at the file's end, and a longer file is told by filling it.
    len: usize,
    /// Buffers kept for reuse; more are freed.
    keep: usize,
}

/// Bytes of buffers kept for reuse (15 buffers at the default slice size, one at the largest).
const BUFFERS_KEPT_BYTES: usize = 4 << 20;

impl Buffers {
    fn new(slice_size: u64) -> Arc<Self> {
        let len = usize::try_from(slice_size)
            .unwrap_or(usize::MAX / 2)
            .saturating_add(HEADER_SHA + 1);
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            len,
            keep: (BUFFERS_KEPT_BYTES / len).max(1),
        })
    }

    fn take(&self) -> Vec<u8> {
        let kept = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.unwrap_or_else(|| vec![0; self.len])
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// The first `len` bytes of a buffer from [`Buffers`], returned to it when dropped.
struct Lent {
    buf: Vec<u8>,
    len: usize,
    from: Arc<Buffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.from.give_back(std::mem::take(&mut self.buf));
    }
}

/// The file at `path`, whole, when the page cache holds all of it: read here, without a
/// round trip through the blocking pool (a thread woken and waited on for each disk hit,
/// most of what a hit cost beside the checksum), into one of `buffers` (no size asked of
/// the file first: reading stops at its end). `None` when any of it would have to come from
/// the device (`RWF_NOWAIT`), when it is longer than a record, or on any error, for the
/// caller to read it on a blocking thread. The open itself may wait on the device for a
/// file whose inode is not cached, as nginx's does in its event loop.
#[cfg(target_os = "linux")]
fn read_if_cached(path: &Path, buffers: &Arc<Buffers>) -> Option<Bytes> {
    let file = std::fs::File::open(path).ok()?;
    let mut buf = buffers.take();
    let mut done = 0;
    let read = loop {
        if done == buf.len() {
            // Longer than any record: read the ordinary way (and refused as damaged).
            break false;
        }
        let mut iov = [std::io::IoSliceMut::new(&mut buf[done..])];
        match rustix::io::preadv2(
            &file,
            &mut iov,
            done as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => break true,
            Ok(n) => done += n,
            Err(_) => break false,
        }
    };
    if !read {
        buffers.give_back(buf);
        return None;
    }
    // A short file (a file's last slice, a damaged one) is copied out, so the memory tier
    // does not hold a whole slice's buffer for it.
    if done < buf.len() / 2 {
        let copy = Bytes::copy_from_slice(&buf[..done]);
        buffers.give_back(buf);
        return Some(copy);
    }
    Some(Bytes::from_owner(Lent {
        buf,
        len: done,
        from: buffers.clone(),
    }))
}

#[cfg(not(target_os = "linux"))]
fn read_if_cached(_path: &Path, _buffers: &Arc<Buffers>) -> Option<Bytes> {
    None
}

/// The file at `path` read on a blocking thread, at most `limit` bytes of it: a file longer
/// than any record (not one this edge wrote) is not read whole into memory, and what is read
/// of it fails its check.
async fn read_on_pool(path: PathBuf, limit: usize) -> std::io::Result<Bytes> {
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut raw = Vec::new();
        std::fs::File::open(&path)?
            .take(limit as u64)
            .read_to_end(&mut raw)?;
        Ok(Bytes::from(raw))
    });
    read.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Writes the slice-size [`MARKER`] (through a temporary name, so it is whole or absent).
fn mark(root: &Path, slice_size: u64) -> std::io::Result<()> {
    let tmp = root.join(format!("{MARKER}.tmp"));
    std::fs::write(&tmp, format!("{slice_size}\n"))?;
    std::fs::rename(&tmp, root.join(MARKER))
}

/// Indexes the slices under `root`, a file's directory at a time, deleting what a crash
/// left (`.tmp` files) and what is not a slice of a file. A `stale` directory (cut at another
/// slice size) has its slices deleted instead, all but those written since the edge started.
fn scan(root: &Path, index: &Mutex<SliceIndex>, purges: &AtomicU64, ours: &str, stale: bool) {
    let began = Instant::now();
    let dirs = match std::fs::read_dir(root) {
        Ok(dirs) => dirs,
        Err(e) => {
            tracing::error!(dir = %root.display(), error = %e, "cannot scan the disk tier; slices there are found as they are asked for");
            return;
        }
    };
    let mut batch = Vec::new();
    for dir in dirs.flatten() {
        let name = dir.file_name();
        let Some(id) = name.to_str().and_then(|n| n.parse::<FileId>().ok()) else {
            continue;
        };
        let epoch = purges.load(Ordering::SeqCst);
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        batch.clear();
        for file in files.flatten() {
            let name = file.file_name();
            match name.to_str().and_then(|n| n.parse::<u32>().ok()) {
                Some(slice) if stale => {
                    if !lock(index).contains(&(id.to_bytes(), slice)) {
                        let _ = std::fs::remove_file(file.path());
                    }
                }
                Some(slice) => {
                    if let Ok(meta) = file.metadata() {
                        let len = u32::try_from(meta.len()).unwrap_or(u32::MAX);
                        batch.push(((id.to_bytes(), slice), len));
                    }
                }
                // A slice this process is writing now.
                None if name.to_str().is_some_and(|n| n.ends_with(ours)) => {}
                None => {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        if batch.is_empty() {
            // All its slices were evicted (or it was half made): it goes too.
            let _ = std::fs::remove_dir(dir.path());
            continue;
        }
        let mut evicted = Vec::new();
        {
            let mut index = lock(index);
            // A purge since the directory was listed may have removed it.
            if purges.load(Ordering::SeqCst) != epoch && !dir.path().exists() {
                continue;
            }
            for &(key, len) in &batch {
                if !index.contains(&key) {
                    evicted.extend(index.insert(key, len));
                }
            }
        }
        remove_evicted(root, &evicted);
    }
    let index = lock(index);
    tracing::info!(
        slices = index.len(),
        mib = index.bytes() >> 20,
        ms = began.elapsed().as_millis() as u64,
        "disk tier indexed"
    );
}

/// CRC-32 over the header's lengths and the slice, so a flipped bit in either is caught.
fn crc(lengths: &[u8], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(lengths);
    hasher.update(data);
    hasher.finalize()
}

/// SHA-256 over the header's lengths and the slice (records of earlier builds).
fn sha256(lengths: &[u8], data: &[u8]) -> ring::digest::Digest {
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
    let sum = crc(&out[4..16], data);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The object's length and the slice a record holds, if it is whole and its checksum holds
/// (the slice is a view of `raw`, not a copy).
fn decode(raw: impl Into<Bytes>) -> Option<(u64, Bytes)> {
    let raw: Bytes = raw.into();
    let header = match raw.get(..4)? {
        m if m == MAGIC => HEADER,
        m if m == MAGIC_SHA => HEADER_SHA,
        _ => return None,
    };
    if raw.len() < header {
        return None;
    }
    let object_len = u64::from_le_bytes(raw[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(raw[12..16].try_into().ok()?) as usize;
    let (lengths, sum, data) = (&raw[4..16], &raw[16..header], &raw[header..]);
    let intact = data.len() == len
        && if header == HEADER {
            crc(lengths, data).to_le_bytes() == sum
        } else {
            sha256(lengths, data).as_ref() == sum
        };
    intact.then(|| (object_len, raw.slice(header..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as builds before the CRC wrote it.
    pub(super) fn encode_sha(object_len: u64, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC_SHA.to_vec();
        out.extend_from_slice(&object_len.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let sum = sha256(&out[4..16], data);
        out.extend_from_slice(sum.as_ref());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn records_of_earlier_builds_are_still_read_and_checked() {
        let data = vec![6u8; 1000];
        let raw = encode_sha(7000, &data);
        assert_eq!(raw.len(), HEADER_SHA + 1000);
        assert_eq!(decode(raw.clone()), Some((7000, Bytes::from(data))));
        for flip in [5, 13, 20, HEADER_SHA, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[flip] ^= 1;
            assert_eq!(decode(bad), None, "flipped byte {flip} accepted");
        }
        assert_eq!(decode(raw[..HEADER_SHA - 1].to_vec()), None);
    }

    #[test]
    fn records_round_trip_and_any_damage_is_caught() {
        let data = vec![7u8; 1000];
        let raw = encode(5000, &data);
        assert_eq!(decode(raw.clone()), Some((5000, Bytes::from(data.clone()))));
        for flip in [0, 5, 13, 20, HEADER, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[flip] ^= 1;
            assert_eq!(decode(bad), None, "flipped byte {flip} accepted");
        }
        assert_eq!(decode(raw[..raw.len() - 1].to_vec()), None);
        assert_eq!(decode(b"CZS1".to_vec()), None);
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
            proptest::prop_assert_eq!(decode(raw.clone()), Some((object_len, Bytes::from(data))));
            let mut damaged = raw.clone();
            for (at, change) in flips {
                let at = at % damaged.len();
                damaged[at] ^= change;
            }
            if damaged != raw {
                proptest::prop_assert_eq!(decode(damaged), None);
            }
            proptest::prop_assert_eq!(decode(raw[..cut % raw.len()].to_vec()), None);
            let mut tagged = MAGIC.to_vec();
            tagged.extend_from_slice(&noise);
            proptest::prop_assert_eq!(decode(tagged), None);
        }
    }
}

#[cfg(test)]
pub(crate) mod tier_tests {
    use super::*;

    /// A directory of this process's own for the test `name` (not yet made).
    pub(crate) fn test_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("cadenza-disk-{name}-{}", std::process::id()))
    }

    #[tokio::test]
    async fn purge_removes_and_stale_writes_do_not_land() {
        let dir = test_dir("purge");
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
        again.scanned().await;
        assert_eq!(again.get(&id, 1).await, Ok((100, data)));
        assert_eq!(again.usage(), ((HEADER + 100) as u64, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_tier_holds_as_many_slices_as_fit_and_counts_their_bytes() {
        let dir = test_dir("full");
        let slice = 1024;
        let tier = DiskTier::open(&dir, 4 * (slice + HEADER as u64), slice)
            .await
            .unwrap();
        let id = FileId::random();
        let data = Bytes::from(vec![7u8; slice as usize]);
        for index in 0..10 {
            tier.put(&id, index, 10 * slice, &data, tier.epoch()).await;
        }
        let (bytes, slices) = tier.usage();
        assert!((1..=4).contains(&slices), "{slices} slices held");
        assert_eq!(bytes, slices * (slice + HEADER as u64));
        let files = std::fs::read_dir(dir.join(id.as_str())).unwrap().count() as u64;
        assert_eq!(files, slices, "evicted slices must leave the disk");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn slices_cut_at_another_slice_size_are_removed_not_served() {
        let dir = test_dir("resliced");
        let id = FileId::random();
        // 4,000 bytes in 1,024-byte slices: slice 1 is bytes 1,024..2,048.
        let object: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let tier = DiskTier::open(&dir, 1 << 20, 1024).await.unwrap();
        tier.scanned().await;
        for index in 0..4u64 {
            let at = (index * 1024) as usize;
            let slice = Bytes::copy_from_slice(&object[at..(at + 1024).min(4000)]);
            tier.put(&id, index, 4000, &slice, tier.epoch()).await;
        }
        drop(tier);
        assert_eq!(std::fs::read_to_string(dir.join(MARKER)).unwrap(), "1024\n");

        // The same directory under 2,048-byte slices: its slice 1 is not bytes 2,048..4,000.
        let (tier, done) = DiskTier::unscanned(dir.clone(), 1 << 20, 2048, Arc::default())
            .await
            .unwrap();
        assert!(tier.stale);
        assert!(!tier.holds(&id, 1), "not served while the scan has not run");
        assert_eq!(tier.get(&id, 1).await, Err(DiskMiss::Absent));
        // A slice written at the new size before the scan gets to it stays.
        let fresh = Bytes::copy_from_slice(&object[2048..]);
        tier.put(&id, 1, 4000, &fresh, tier.epoch()).await;
        let (root, index, purges, ours) = (
            tier.root.clone(),
            tier.index.clone(),
            tier.purges.clone(),
            tier.tmp.clone(),
        );
        let scan_root = root.clone();
        tokio::task::spawn_blocking(move || scan(&scan_root, &index, &purges, &ours, true))
            .await
            .unwrap();
        mark(&root, 2048).unwrap();
        drop(done);
        tier.scanned().await;
        let left: Vec<String> = std::fs::read_dir(dir.join(id.as_str()))
            .unwrap()
            .map(|f| f.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["1"], "the old slices are gone, the new one stays");
        assert_eq!(tier.get(&id, 1).await, Ok((4000, fresh.clone())));
        assert_eq!(tier.get(&id, 0).await, Err(DiskMiss::Absent));
        drop(tier);

        // Opened as a whole at the new size: scanned, marked, and the new slice served.
        let tier = DiskTier::open(&dir, 1 << 20, 2048).await.unwrap();
        tier.scanned().await;
        assert!(!tier.stale, "the marker says 2048 now");
        assert_eq!(tier.get(&id, 1).await, Ok((4000, fresh)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_garbled_slice_size_marker_empties_the_directory_rather_than_stop_the_edge() {
        let dir = test_dir("garbled");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MARKER), [0xff, 0xfe, b'\n']).unwrap();
        let (tier, _done) = DiskTier::unscanned(dir.clone(), 1 << 20, 1024, Arc::default())
            .await
            .unwrap();
        assert!(tier.stale);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn slices_are_served_from_disk_before_the_start_up_scan_reaches_them() {
        let dir = test_dir("early");
        let tier = DiskTier::open(&dir, 1 << 20, 1024).await.unwrap();
        let (id, other) = (FileId::random(), FileId::random());
        let data = Bytes::from(vec![3u8; 100]);
        for (file, index) in [(&id, 0), (&id, 1), (&other, 0)] {
            tier.put(file, index, 300, &data, tier.epoch()).await;
        }
        drop(tier);
        std::fs::write(dir.join(id.as_str()).join("2.tmp"), b"half a slice").unwrap();

        // A restart whose scan has not begun: what is asked for is looked for on disk.
        let (tier, done) = DiskTier::unscanned(dir.clone(), 1 << 20, 1024, Arc::default())
            .await
            .unwrap();
        assert_eq!(tier.usage(), (0, 0));
        assert!(tier.holds(&id, 1));
        assert!(!tier.holds(&id, 2));
        assert_eq!(tier.get(&id, 0).await, Ok((300, data.clone())));
        assert_eq!(tier.get(&id, 2).await, Err(DiskMiss::Absent));
        assert_eq!(
            tier.usage(),
            ((HEADER + 100) as u64, 1),
            "found, so indexed"
        );
        // A purge meanwhile removes what the scan has not seen too.
        tier.purge(std::slice::from_ref(&other)).await;
        assert!(!tier.holds(&other, 0));
        assert_eq!(tier.get(&other, 0).await, Err(DiskMiss::Absent));

        // Once the scan is over, the index alone answers.
        let (scan_root, scan_index, scan_purges) =
            (tier.root.clone(), tier.index.clone(), tier.purges.clone());
        // One of this process's slices in the making is left alone.
        let ours = tier.tmp.clone();
        let in_flight = dir.join(id.as_str()).join(format!("3.{ours}"));
        std::fs::write(&in_flight, b"being written").unwrap();
        tokio::task::spawn_blocking(move || {
            scan(&scan_root, &scan_index, &scan_purges, &ours, false)
        })
        .await
        .unwrap();
        done.send(true).unwrap();
        tier.scanned().await;
        assert_eq!(tier.usage(), (2 * (HEADER + 100) as u64, 2));
        assert_eq!(tier.get(&id, 1).await, Ok((300, data)));
        assert!(
            !dir.join(id.as_str()).join("2.tmp").exists(),
            "the scan deletes leftovers"
        );
        assert!(
            in_flight.exists(),
            "the scan leaves a write under way alone"
        );
        std::fs::remove_file(&in_flight).unwrap();
        std::fs::remove_file(slice_path(&dir, &id, 1)).unwrap();
        assert_eq!(tier.get(&id, 1).await, Err(DiskMiss::Absent));
        assert_eq!(
            tier.usage(),
            ((HEADER + 100) as u64, 1),
            "a vanished file is forgotten"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn evicted_slices_leave_the_disk_with_their_files_directory() {
        let dir = test_dir("dirs");
        let slice = 1024u64;
        let tier = DiskTier::open(&dir, 20 * (slice + HEADER as u64), slice)
            .await
            .unwrap();
        tier.scanned().await;
        let data = Bytes::from(vec![9u8; slice as usize]);
        let ids: Vec<FileId> = (0..30).map(|_| FileId::random()).collect();
        for id in &ids {
            tier.put(id, 0, slice, &data, tier.epoch()).await;
        }
        let (_, slices) = tier.usage();
        assert!(slices <= 20);
        // File directories (beside the slice-size marker).
        let dirs = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count() as u64;
        assert_eq!(
            dirs, slices,
            "a file whose slices all left leaves no directory"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_slice_that_cannot_be_written_is_counted_and_not_indexed() {
        let dir = test_dir("fail");
        let tier = DiskTier::open(&dir, 1 << 20, 1024).await.unwrap();
        tier.scanned().await;
        let (id, fine) = (FileId::random(), FileId::random());
        // Where the file's directory should be, something else is (as a failing disk, or
        // one full, refuses the write).
        std::fs::write(dir.join(id.as_str()), b"in the way").unwrap();
        let data = Bytes::from(vec![5u8; 100]);
        for index in 0..3 {
            tier.put(&id, index, 300, &data, tier.epoch()).await;
        }
        assert_eq!(tier.write_errors(), 3);
        assert_eq!(tier.get(&id, 0).await, Err(DiskMiss::Absent));
        assert!(!tier.holds(&id, 0));
        tier.put(&fine, 0, 100, &data, tier.epoch()).await;
        assert_eq!(tier.get(&fine, 0).await, Ok((100, data)));
        assert_eq!((tier.write_errors(), tier.usage().1), (3, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn slices_that_cannot_be_read_are_counted_and_enough_take_the_disk_out() {
        let dir = test_dir("unread");
        let tier = DiskTier::open(&dir, 1 << 22, 1024).await.unwrap();
        tier.scanned().await;
        let id = FileId::random();
        let data = Bytes::from(vec![6u8; 100]);
        let n = crate::disks::FAILURES_OUT;
        for index in 0..=n {
            tier.put(&id, index, 100, &data, tier.epoch()).await;
        }
        // A slice gone (evicted or purged as it was read) is a miss, not the disk failing.
        std::fs::remove_file(slice_path(&dir, &id, n)).unwrap();
        assert_eq!(tier.get(&id, n).await, Err(DiskMiss::Absent));
        assert_eq!(tier.read_errors(), 0);
        // Slices the disk cannot read (here each is a directory, where reading fails with
        // EISDIR as a failing device fails with EIO): misses, counted, then out of service.
        for index in 0..n {
            let path = slice_path(&dir, &id, index);
            std::fs::remove_file(&path).unwrap();
            std::fs::create_dir(&path).unwrap();
            assert!(tier.in_service(Instant::now()));
            assert_eq!(tier.get(&id, index).await, Err(DiskMiss::Absent));
            assert!(
                !tier.holds(&id, index),
                "an unreadable slice leaves the index"
            );
        }
        assert_eq!((tier.read_errors(), tier.write_errors()), (n, 0));
        assert!(
            !tier.in_service(Instant::now()),
            "{n} failed reads take it out"
        );
        // A good write brings it back.
        tier.put(&FileId::random(), 0, 100, &data, tier.epoch())
            .await;
        assert!(tier.in_service(Instant::now()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_file_longer_than_any_record_is_refused_after_a_records_length() {
        let dir = test_dir("long");
        let id = FileId::random();
        std::fs::create_dir_all(dir.join(id.as_str())).unwrap();
        // Not a slice this edge wrote: 64 MiB where at most 1,024 bytes and a header belong.
        let mut long = encode(4096, &[1u8; 1024]);
        long.resize(64 << 20, 0);
        std::fs::write(slice_path(&dir, &id, 0), &long).unwrap();
        let tier = DiskTier::open(&dir, 1 << 20, 1024).await.unwrap();
        tier.scanned().await;
        assert!(tier.holds(&id, 0), "indexed by its name");
        assert_eq!(tier.get(&id, 0).await, Err(DiskMiss::Corrupt));
        assert!(!slice_path(&dir, &id, 0).exists(), "removed");
        // Read on the blocking pool too (the page cache dropped its pages): bounded the same.
        std::fs::write(slice_path(&dir, &id, 1), &long).unwrap();
        let raw = read_on_pool(slice_path(&dir, &id, 1), tier.buffers.len)
            .await
            .unwrap();
        assert_eq!(raw.len(), tier.buffers.len);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn writes_beyond_those_under_way_are_skipped_not_queued() {
        let dir = test_dir("busy");
        let tier = Arc::new(DiskTier::open(&dir, 1 << 20, 1024).await.unwrap());
        tier.scanned().await;
        let data = Bytes::from(vec![4u8; 100]);
        // As many writes under way as may be (a disk slower than the misses).
        let busy = tier
            .writes
            .clone()
            .acquire_many_owned(WRITES_IN_FLIGHT as u32)
            .await
            .unwrap();
        let (skipped, written) = (FileId::random(), FileId::random());
        tier.put_later(skipped.clone(), 0, 100, data.clone(), tier.epoch());
        assert_eq!(tier.writes_skipped(), 1);
        // A pre-warm waits for room instead.
        let waiting = tokio::spawn({
            let tier = tier.clone();
            async move { tier.room_for(4).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(busy);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("room once the writes are done")
            .unwrap();
        tier.put_later(written.clone(), 0, 100, data.clone(), tier.epoch());
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !tier.holds(&written, 0) {
            assert!(Instant::now() < deadline, "the write never landed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(tier.get(&written, 0).await, Ok((100, data)));
        assert!(!tier.holds(&skipped, 0));
        assert_eq!(tier.writes_skipped(), 1);
        while tier.writes.available_permits() < WRITES_IN_FLIGHT {
            assert!(Instant::now() < deadline, "a finished write kept its room");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_in_the_page_cache_is_read_in_place_and_a_missing_one_is_left_to_the_pool() {
        let dir = test_dir("inline");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0");
        let record = encode(300_000, &vec![2u8; 256 * 1024]);
        // Just written, so in the page cache.
        std::fs::write(&path, &record).unwrap();
        let buffers = Buffers::new(256 * 1024);
        assert!(read_if_cached(&path, &buffers) == Some(Bytes::from(record.clone())));
        assert_eq!(read_if_cached(&dir.join("1"), &buffers), None);
        // The buffer came back, and is read into again.
        assert_eq!(buffers.free.lock().unwrap().len(), 1);
        let again = read_if_cached(&path, &buffers).unwrap();
        assert!(buffers.free.lock().unwrap().is_empty(), "lent out");
        assert!(again == record);
        drop(again);
        assert_eq!(buffers.free.lock().unwrap().len(), 1);
        // A file longer than a record is left to the blocking read, whole.
        let longer = dir.join("2");
        std::fs::write(&longer, vec![1u8; buffers.len]).unwrap();
        assert_eq!(read_if_cached(&longer, &buffers), None);
        // A whole slice in an earlier build's record (the longest header) is read in place.
        let legacy = super::tests::encode_sha(300_000, &vec![2u8; 256 * 1024]);
        std::fs::write(dir.join("4"), &legacy).unwrap();
        assert!(read_if_cached(&dir.join("4"), &buffers) == Some(Bytes::from(legacy)));
        assert_eq!(buffers.keep, 15, "4 MiB of 256 KiB buffers");
        // A short one is copied out of the buffer, which stays for the next read.
        let short = encode(100, &[5u8; 100]);
        std::fs::write(dir.join("3"), &short).unwrap();
        assert!(read_if_cached(&dir.join("3"), &buffers) == Some(Bytes::from(short)));
        assert_eq!(buffers.free.lock().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
