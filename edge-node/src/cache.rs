//! The slice cache and the origin fetch behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cadenza_common::FileId;
use cadenza_common::http::client::{self, ClientError, HttpClient};
use cadenza_common::http::empty;
use http::{Method, StatusCode, header};
use moka::future::Cache;

use crate::disk::DiskMiss;
use crate::disks::Disks;
use crate::metrics::EdgeMetrics;
use crate::shield::Shield;
use crate::slices::{SliceMath, SlicePart};
use crate::upstream::Upstreams;

/// Where the edge fetches what it does not hold.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Origin base URLs in preference order; each fetch tries them in turn, failing ones
    /// (circuit open) last.
    pub origins: Vec<String>,
    /// Bearer token for the origin's object API.
    pub edge_key: String,
    /// Time allowed for one slice fetch from one origin.
    pub timeout: Duration,
    /// Consecutive failures that open an origin's circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker sends requests elsewhere first.
    pub breaker_cooldown: Duration,
}

/// Why a slice could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The origin does not have the file.
    #[error("no such file at the origin")]
    NotFound,
    /// The origin failed, timed out, or sent something inconsistent.
    #[error("origin fetch failed: {0}")]
    Upstream(String),
}

/// How many slices a tier of `capacity_bytes` holds. The tiers bound slices by count, not
/// by a byte weigher: every slice but a file's last is full size, so the bound in bytes
/// holds, and moka sizes its frequency sketch from the count. With a weigher it guesses the
/// count when the cache is half full, a quarter of the true one, and its admission decides
/// worse: `benches/zipf_hit_ratio.rs` measured +5.8 to +6.4 points of byte hit ratio over
/// LRU with the weigher and +8.2 to +11.3 by count.
pub fn slice_capacity(capacity_bytes: u64, slice_size: u64) -> u64 {
    (capacity_bytes / slice_size.max(1)).max(1)
}

/// A random seek's cold slice is fetched as the part it needs, widened to these
/// boundaries, not whole: random 128 KiB ranges over 256 KiB slices would otherwise cost
/// three origin bytes per byte served.
pub const PART_BLOCK: u64 = 32 * 1024;

/// A seek's part of slice `i` is held under index `i | PART`, beside the whole slice's `i`:
/// a whole slice is looked up, and its presence checked, as if parts did not exist.
const PART: u64 = 1 << 63;

/// A slice's key: its file's id as raw bytes (no allocation per lookup) and its index.
type SliceKey = ([u8; 20], u64);

/// The edge's hasher for its maps (slices here, tokens and sizes in `memo`): keys are file
/// ids, indexes and tokens, which are only inserted once fetched or verified, so speed matters
/// more than resistance to chosen keys; the seed is still random per process.
pub(crate) type Hasher = foldhash::fast::RandomState;

/// A slice in the memory tier, or (under a [`PART`] index) the part of it a seek needed.
#[derive(Clone)]
struct Held {
    /// Where `data` starts in the slice (0 for a whole slice).
    skip: u64,
    data: Bytes,
    /// The object's size.
    total: u64,
    /// For a whole slice read from disk and not yet in a memory file, the bytes of it served
    /// from memory since: it goes into one once they come to twice its length (see
    /// [`SliceCache::reused`]).
    unshelved: Option<Arc<AtomicU64>>,
}

impl Held {
    /// Bytes `skip..skip + take` of the slice, when held.
    fn cut(&self, skip: u64, take: u64) -> Option<Bytes> {
        cut(self.skip, &self.data, skip, take)
    }
}

/// Bytes `skip..skip + take` of a slice from `data`, which holds the slice from `held_skip`.
fn cut(held_skip: u64, data: &Bytes, skip: u64, take: u64) -> Option<Bytes> {
    let from = skip.checked_sub(held_skip)?;
    let to = from + take;
    (to <= data.len() as u64).then(|| data.slice(from as usize..to as usize))
}

/// Fixed-size slices of files in memory, filled from the origin on demand.
pub struct SliceCache {
    math: SliceMath,
    metrics: Arc<EdgeMetrics>,
    slices: Cache<SliceKey, Held, Hasher>,
    /// Bytes in `slices`: added when a fetched slice goes in, taken off when any leaves.
    bytes: Arc<AtomicU64>,
    /// Bumped by every purge: a slice whose load began before one is dropped again once in
    /// (moka's invalidation covers only the entries there when it is asked).
    purges: AtomicU64,
    /// Object sizes, learned with their first slice fetched (every slice held also knows
    /// its object's size, should this forget it).
    sizes: crate::memo::Memo<FileId, u64>,
    upstream: UpstreamConfig,
    origins: Upstreams,
    disk: Option<Arc<Disks>>,
    shield: Option<Shield>,
    client: HttpClient,
    origin_fetches: AtomicU64,
    /// Whole slices in memory files, one per rendition, for `sendfile`.
    shelves: cadenza_common::mapped::Shelves<[u8; 20]>,
    /// Which whole slices `slices` holds, for the questions read-ahead asks.
    resident: Arc<crate::resident::Resident>,
}

impl std::fmt::Debug for SliceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliceCache")
            .field("math", &self.math)
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl SliceCache {
    /// A cache holding at most `capacity_bytes` of slices.
    pub fn new(
        math: SliceMath,
        capacity_bytes: u64,
        upstream: UpstreamConfig,
        client: HttpClient,
        metrics: Arc<EdgeMetrics>,
        disk: Option<Arc<Disks>>,
    ) -> Self {
        let bytes = Arc::new(AtomicU64::new(0));
        let gone = bytes.clone();
        let resident = Arc::new(crate::resident::Resident::default());
        let evicted = resident.clone();
        let slices = Cache::builder()
            .max_capacity(slice_capacity(capacity_bytes, math.slice_size()))
            .support_invalidation_closures()
            .eviction_listener(move |key: Arc<SliceKey>, v: Held, cause| {
                gone.fetch_sub(v.data.len() as u64, Ordering::Relaxed);
                // A replaced slice is still held (a purged slice fetched again).
                if key.1 & PART == 0 && cause != moka::notification::RemovalCause::Replaced {
                    evicted.remove(&key.0, key.1);
                }
            })
            .build_with_hasher(Hasher::default());
        Self {
            math,
            metrics,
            slices,
            bytes,
            purges: AtomicU64::new(0),
            sizes: crate::memo::Memo::new(1_000_000, None),
            origins: Upstreams::new(
                upstream.origins.clone(),
                upstream.breaker_threshold,
                upstream.breaker_cooldown,
            ),
            upstream,
            disk,
            shield: None,
            client,
            origin_fetches: AtomicU64::new(0),
            shelves: Default::default(),
            resident,
        }
    }

    /// Fetches missing slices of files another edge of the region owns from that edge
    /// first (the shield tier). The owner is asked with the same edge key and object API as
    /// an origin.
    pub fn with_shield(mut self, shield: Shield) -> Self {
        self.shield = Some(shield);
        self
    }

    /// Whether this edge owns `id` in its region (always, without a shield tier).
    pub fn owns(&self, id: &FileId) -> bool {
        self.shield.as_ref().is_none_or(|s| s.owns(id))
    }

    /// Slice geometry.
    pub fn math(&self) -> SliceMath {
        self.math
    }

    /// Starts fetching `count` slices from `first` in the background (read-ahead), skipping
    /// slices past the end of a file of `size` bytes. Slices already cached or in flight cost
    /// nothing more.
    pub fn prefetch(self: &Arc<Self>, id: &FileId, first: u64, count: u64, size: u64) {
        let slices = size.div_ceil(self.math.slice_size());
        let wanted = first..(first + count).min(slices);
        for index in self.resident.absent(&id.to_bytes(), wanted) {
            self.metrics.prefetches.inc();
            let this = self.clone();
            let id = id.clone();
            tokio::spawn(async move {
                if let Err(e) = this.slice(&id, index).await {
                    tracing::debug!(file = %id, index, error = %e, "read-ahead failed");
                }
            });
        }
    }

    /// Read-ahead fetches started so far.
    pub fn prefetches(&self) -> u64 {
        self.metrics.prefetches.get()
    }

    /// Drops every cached slice of `ids` (takedowns). Returns how many files were named.
    pub async fn purge(&self, ids: &[FileId]) -> usize {
        self.purges.fetch_add(1, Ordering::SeqCst);
        let doomed: std::collections::HashSet<FileId> = ids.iter().cloned().collect();
        for id in &doomed {
            self.sizes.remove(id);
        }
        let set: std::collections::HashSet<[u8; 20]> =
            doomed.iter().map(FileId::to_bytes).collect();
        // moka drops the slices as it next tidies up; read-ahead forgets them now.
        for file in &set {
            self.resident.forget(file);
        }
        // Only fails when closures are not enabled, which the builder does.
        let _ = self
            .slices
            .invalidate_entries_if(move |key, _| set.contains(&key.0));
        if let Some(disk) = &self.disk {
            disk.purge(ids).await;
        }
        doomed.len()
    }

    /// Fetches the first `slices` slices of `id` (all when `None`) into the cache, at most
    /// four at a time, no faster than the disk tier writes them. Returns how many slices the
    /// file has in that span.
    pub async fn warm(
        self: &Arc<Self>,
        id: &FileId,
        slices: Option<u64>,
    ) -> Result<u64, FetchError> {
        let size = self.size(id).await?;
        let total = size.div_ceil(self.math.slice_size());
        let wanted = slices.map_or(total, |k| k.min(total));
        let mut next = 0u64;
        while next < wanted {
            let batch: Vec<u64> = (next..(next + 4).min(wanted)).collect();
            next += batch.len() as u64;
            if let Some(disk) = &self.disk {
                disk.room_for(id, batch.len()).await;
            }
            let fetches = batch.into_iter().map(|i| {
                let this = self.clone();
                let id = id.clone();
                async move { this.slice(&id, i).await }
            });
            for result in futures_util::future::join_all(fetches).await {
                result?;
            }
        }
        Ok(wanted)
    }

    /// Bytes and entries in the memory tier.
    pub async fn usage(&self) -> (u64, u64) {
        self.slices.run_pending_tasks().await;
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.metrics
            .cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        (bytes, self.slices.entry_count())
    }

    /// Bytes and slices in the disk tier, when there is one (and its gauges set).
    pub async fn disk_usage(&self) -> Option<(u64, u64)> {
        let disk = self.disk.as_ref()?;
        let (bytes, slices) = disk.usage();
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.disk_bytes.set(gauge(bytes));
        self.metrics.disk_slices.set(gauge(slices));
        self.metrics
            .disk_index_bytes
            .set(gauge(disk.index_bytes() as u64));
        self.metrics.disk_scanning.set(i64::from(disk.scanning()));
        let (up, of) = disk.in_service();
        self.metrics.disks_in_service.set(gauge(up as u64));
        self.metrics.disks.set(gauge(of as u64));
        for (dir, up, bytes) in disk.each() {
            let dir = dir.display().to_string();
            let labels = [dir.as_str()];
            self.metrics
                .disk_dir_in_service
                .with_label_values(&labels)
                .set(i64::from(up));
            self.metrics
                .disk_dir_bytes
                .with_label_values(&labels)
                .set(gauge(bytes));
        }
        for (counter, tally) in [
            (&self.metrics.disk_write_errors, disk.write_errors()),
            (&self.metrics.disk_read_errors, disk.read_errors()),
            (&self.metrics.disk_writes_skipped, disk.writes_skipped()),
        ] {
            counter.inc_by(tally.saturating_sub(counter.get()));
        }
        Some((bytes, slices))
    }

    /// Each disk tier's directory, whether it is in service, and the bytes it holds.
    pub fn disks(&self) -> Vec<(std::path::PathBuf, bool, u64)> {
        self.disk.as_ref().map_or_else(Vec::new, |disks| {
            disks
                .each()
                .into_iter()
                .map(|(dir, up, bytes)| (dir.to_path_buf(), up, bytes))
                .collect()
        })
    }

    /// The metrics this cache reports into.
    pub fn metrics(&self) -> &Arc<EdgeMetrics> {
        &self.metrics
    }

    /// Origin requests made so far.
    pub fn origin_fetches(&self) -> u64 {
        self.origin_fetches.load(Ordering::Relaxed)
    }

    /// The size of a file, fetching its first slice to learn it when unknown.
    pub async fn size(self: &Arc<Self>, id: &FileId) -> Result<u64, FetchError> {
        Ok(self.size_from(id).await?.0)
    }

    /// [`SliceCache::size`], and where the first slice came from when it was read to learn
    /// the size.
    async fn size_from(
        self: &Arc<Self>,
        id: &FileId,
    ) -> Result<(u64, Option<Outcome>), FetchError> {
        if let Some(size) = self.sizes.get(id) {
            return Ok((size, None));
        }
        let (_, outcome) = self.slice_from(id, 0).await?;
        if let Some(size) = self.sizes.get(id) {
            return Ok((size, Some(outcome)));
        }
        // Forgotten while the first slice stayed in memory: the slice knows.
        let total = self
            .slices
            .get(&(id.to_bytes(), 0))
            .await
            .map(|held| held.total)
            .ok_or_else(|| FetchError::Upstream("origin sent no object size".into()))?;
        self.sizes.insert(id.clone(), total);
        Ok((total, Some(outcome)))
    }

    /// The object's size, learning it (when unknown) from the first bytes the request
    /// needs (`first`, and `last` when the range names it) rather than slice 0: a cold
    /// range far into a file then costs only its own bytes, as [`SliceCache::part`] fetches
    /// them. Falls back to slice 0 if that part cannot be had (it may lie past the end).
    /// With the size, where the request's first slice came from if it was read to learn it.
    pub async fn size_via(
        self: &Arc<Self>,
        id: &FileId,
        first: u64,
        last: Option<u64>,
    ) -> Result<(u64, Option<Outcome>), FetchError> {
        if let Some(size) = self.sizes.get(id) {
            return Ok((size, None));
        }
        let slice_size = self.math.slice_size();
        let (index, skip) = (first / slice_size, first % slice_size);
        let take = last.map_or(slice_size - skip, |last| {
            (last.saturating_sub(first) + 1).min(slice_size - skip)
        });
        let part = SlicePart {
            index,
            skip: skip as usize,
            take: take as usize,
        };
        if first > 0
            && let Ok((_, outcome)) = self.part_from(id, part, false).await
            && let Some(size) = self.sizes.get(id)
        {
            return Ok((size, Some(outcome)));
        }
        let (size, outcome) = self.size_from(id).await?;
        Ok((size, outcome.filter(|_| index == 0)))
    }

    /// Whether the memory tier holds slice `index` of `id` whole (a seek's part does not
    /// count): a request starting at the next slice continues a read rather than seeking.
    pub fn holds(&self, id: &FileId, index: u64) -> bool {
        self.resident.has(&id.to_bytes(), index)
    }

    /// Whether slice `index` of `id` is held here at all: whole or in part in memory, or on
    /// disk. What a response's later slices will find without a fetch, as far as can be told
    /// before they are read (a seek's part may lack the bytes wanted).
    pub fn holds_anywhere(&self, id: &FileId, index: u64) -> bool {
        self.holds(id, index)
            || self.slices.contains_key(&(id.to_bytes(), index | PART))
            || self.disk.as_ref().is_some_and(|d| d.holds(id, index))
    }

    /// A whole slice read again from memory, `served` bytes of it: one that came from disk
    /// goes into its rendition's memory file (for `sendfile`), replacing the entry held, once
    /// the bytes served from memory since come to twice its length. Filling a memory file
    /// copies the slice and gives the kernel its pages to manage (and later punch out), about
    /// two copies' worth, and `sendfile` then saves a copy of every byte sent: it pays for
    /// a slice sent about twice over while held, and what was served so far is the guess at
    /// what will be. One pass (a player reading it front to back, read-ahead having brought
    /// it from disk) does not make it; a second listener does. (Filling one for every slice
    /// read back from disk on its first read from memory was a tenth of what a disk-tier hit
    /// cost, and at one length served, a player's single pass paid for a memory file each
    /// slice: benches/README.md, disk-tier hits.)
    async fn reused(&self, id: &FileId, index: u64, held: Held, served: u64) -> Held {
        let Some(since) = &held.unshelved else {
            return held;
        };
        if since.fetch_add(served, Ordering::Relaxed) + served < 2 * held.data.len() as u64 {
            return held;
        }
        let offset = index * self.math.slice_size();
        let Some(data) = self
            .shelves
            .put(&id.to_bytes(), held.total, offset, &held.data)
        else {
            return held;
        };
        let shelved = Held {
            data,
            unshelved: None,
            ..held
        };
        // The eviction listener takes the replaced entry's bytes off.
        self.bytes
            .fetch_add(shelved.data.len() as u64, Ordering::Relaxed);
        self.slices
            .insert((id.to_bytes(), index), shelved.clone())
            .await;
        shelved
    }

    /// Slice `index` of file `id`, whole; concurrent callers for one missing slice share a
    /// single origin request.
    pub async fn slice(self: &Arc<Self>, id: &FileId, index: u64) -> Result<Bytes, FetchError> {
        Ok(self.slice_from(id, index).await?.0)
    }

    /// [`SliceCache::slice`], and where it came from.
    async fn slice_from(
        self: &Arc<Self>,
        id: &FileId,
        index: u64,
    ) -> Result<(Bytes, Outcome), FetchError> {
        if let Some(held) = self.slices.get(&(id.to_bytes(), index)).await {
            self.metrics.hits.inc();
            let served = held.data.len() as u64;
            let held = self.reused(id, index, held, served).await;
            return Ok((held.data, Outcome::Memory));
        }
        let (held, outcome) = self.fill(id, index, None).await?;
        // A part a seek held is covered now.
        self.slices.invalidate(&(id.to_bytes(), index | PART)).await;
        Ok((held.data, outcome))
    }

    /// The bytes of `part`. From the whole slice when the memory tier has it, or when the
    /// reader is `sequential` (it will want the rest). Otherwise the request is a seek: a
    /// part held for an earlier seek serves it if it covers it; if nothing is held and the
    /// disk tier lacks the slice, only the bytes asked for, widened to [`PART_BLOCK`], are
    /// fetched and held (concurrent seeks to one cold slice share that fetch); else the
    /// whole slice is fetched.
    pub async fn part(
        self: &Arc<Self>,
        id: &FileId,
        part: SlicePart,
        sequential: bool,
    ) -> Result<Bytes, FetchError> {
        Ok(self.part_from(id, part, sequential).await?.0)
    }

    /// [`SliceCache::part`], and where it came from.
    pub async fn part_from(
        self: &Arc<Self>,
        id: &FileId,
        part: SlicePart,
        sequential: bool,
    ) -> Result<(Bytes, Outcome), FetchError> {
        let (index, skip, take) = (part.index, part.skip as u64, part.take as u64);
        let whole = |data: Bytes| {
            cut(0, &data, skip, take).ok_or_else(|| {
                FetchError::Upstream(format!(
                    "slice {index} of {} bytes lacks bytes {skip}..{}",
                    data.len(),
                    skip + take
                ))
            })
        };
        if let Some(held) = self.slices.get(&(id.to_bytes(), index)).await {
            self.metrics.hits.inc();
            return Ok((
                whole(self.reused(id, index, held, take).await.data)?,
                Outcome::Memory,
            ));
        }
        if !sequential {
            let slice_size = self.math.slice_size();
            let from = skip / PART_BLOCK * PART_BLOCK;
            let to = (skip + take).div_ceil(PART_BLOCK) * PART_BLOCK;
            match self.slices.get(&(id.to_bytes(), index | PART)).await {
                Some(held) => {
                    if let Some(bytes) = held.cut(skip, take) {
                        self.metrics.hits.inc();
                        return Ok((bytes, Outcome::Memory));
                    }
                }
                None if (from > 0 || to < slice_size)
                    && !self.disk.as_ref().is_some_and(|d| d.holds(id, index)) =>
                {
                    let span = (from, to.min(slice_size));
                    let (held, outcome) = self.fill(id, index, Some(span)).await?;
                    if let Some(bytes) = held.cut(skip, take) {
                        return Ok((bytes, outcome));
                    }
                }
                None => {}
            }
        }
        let (data, outcome) = self.slice_from(id, index).await?;
        Ok((whole(data)?, outcome))
    }

    /// Slice `index` of `id` once in the memory tier (`span`: only those bytes of it, held
    /// as a part), one load for all concurrent callers.
    async fn fill(
        self: &Arc<Self>,
        id: &FileId,
        index: u64,
        span: Option<(u64, u64)>,
    ) -> Result<(Held, Outcome), FetchError> {
        let this = self.clone();
        // Set by the caller whose load runs (the others wait on it): what the load was.
        let led = Arc::new(AtomicU8::new(0));
        let leader = led.clone();
        let key = (
            id.to_bytes(),
            if span.is_some() { index | PART } else { index },
        );
        let id = id.clone();
        let purges = self.purges.load(Ordering::SeqCst);
        let result = self
            .slices
            .try_get_with(key, async move {
                leader.store(LED_FETCHED, Ordering::Relaxed);
                let (held, from_disk) = match span {
                    None => {
                        let (held, from_disk) = this.load(&id, index).await?;
                        if from_disk {
                            leader.store(LED_DISK, Ordering::Relaxed);
                        }
                        (held, from_disk)
                    }
                    Some(span) => (this.fetch(&id, index, Some(span)).await?, false),
                };
                this.bytes
                    .fetch_add(held.data.len() as u64, Ordering::Relaxed);
                // In a memory file when the budget allows, so cleartext HTTP/1.1 can
                // `sendfile` it: a whole slice in its rendition's file, beside its
                // neighbours (a range across them is one `sendfile`), a seek's part in one
                // of its own. Not a slice read from disk, until it is read again from
                // memory: the memory tier lost it once already, and when it is far smaller
                // than what the disk serves, filling and punching memory files for slices
                // that leave again at once cost four times nginx's CPU per byte
                // (benches/README.md, disk-tier hits).
                let (mapped, unshelved) = match span {
                    None if from_disk => (None, true),
                    None => {
                        let offset = index * this.math.slice_size();
                        let put = this
                            .shelves
                            .put(&id.to_bytes(), held.total, offset, &held.data);
                        (put, false)
                    }
                    Some(_) => (cadenza_common::mapped::copy(&held.data), false),
                };
                let data = mapped.unwrap_or(held.data);
                // Before moka admits it, so the eviction listener's clear comes after.
                if span.is_none() {
                    this.resident.add(&key.0, index);
                }
                Ok(Held {
                    data,
                    unshelved: (unshelved && cadenza_common::mapped::budgeted()).then(Arc::default),
                    ..held
                })
            })
            .await
            .map_err(|e: Arc<FetchError>| (*e).clone());
        // A purge since the load began may have run before the slice went in, and missed
        // it: it goes now (this request still gets its bytes). Any purge will do, whatever
        // files it named; they are rare.
        if self.purges.load(Ordering::SeqCst) != purges {
            self.slices.invalidate(&key).await;
        }
        let outcome = match led.load(Ordering::Relaxed) {
            LED_DISK => Outcome::Disk,
            LED_FETCHED => Outcome::Fetched,
            _ => Outcome::Collapsed,
        };
        if outcome == Outcome::Collapsed {
            self.metrics.collapsed.inc();
        } else {
            self.metrics.misses.inc();
        }
        Ok((result?, outcome))
    }

    /// A slice the memory tier lacks: from disk when it is there and intact (true), else
    /// from an origin (and then written to disk in the background).
    async fn load(&self, id: &FileId, index: u64) -> Result<(Held, bool), FetchError> {
        if let Some(disk) = &self.disk {
            match disk.get(id, index).await {
                Ok((total, data)) => {
                    self.metrics.disk_hits.inc();
                    self.sizes.insert(id.clone(), total);
                    let held = Held {
                        skip: 0,
                        data,
                        total,
                        unshelved: None,
                    };
                    return Ok((held, true));
                }
                Err(DiskMiss::Corrupt) => self.metrics.disk_corrupt.inc(),
                Err(DiskMiss::Absent) => {}
            }
        }
        let epoch = self.disk.as_ref().map(|d| d.epoch());
        let held = self.fetch(id, index, None).await?;
        if let (Some(disk), Some(epoch)) = (&self.disk, epoch) {
            disk.put_later(id.clone(), index, held.total, held.data.clone(), epoch);
        }
        Ok((held, false))
    }

    /// Fetches slice `index` (`span`: only those bytes of it) from the file's owner in the
    /// region when that is another edge and it answers, else from the first origin that answers, at most one attempt per
    /// origin. A 404 is final (every origin serves the same content-addressed store, and an
    /// owner answers 404 only when the origins did).
    async fn fetch(
        &self,
        id: &FileId,
        index: u64,
        span: Option<(u64, u64)>,
    ) -> Result<Held, FetchError> {
        if let Some(shield) = &self.shield
            && let Some((i, owner)) = shield.fetch_from(id, std::time::Instant::now())
        {
            let outcome = self.fetch_from(owner, id, index, span, Source::Owner).await;
            shield.record(
                i,
                !matches!(outcome, Err(FetchError::Upstream(_))),
                std::time::Instant::now(),
            );
            match outcome {
                Ok(bytes) => {
                    self.metrics.shield_fetches.with_label_values(&["ok"]).inc();
                    return Ok(bytes);
                }
                Err(FetchError::NotFound) => return Err(FetchError::NotFound),
                Err(e) => {
                    self.metrics
                        .shield_fetches
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(owner, error = %e, "owner edge fetch failed; asking an origin");
                }
            }
        }
        let mut last = FetchError::Upstream("no origin configured".into());
        for (i, origin) in self.origins.order(std::time::Instant::now()) {
            match self
                .fetch_from(origin, id, index, span, Source::Origin)
                .await
            {
                Ok(bytes) => {
                    self.origins.record(i, true, std::time::Instant::now());
                    return Ok(bytes);
                }
                Err(FetchError::NotFound) => {
                    self.origins.record(i, true, std::time::Instant::now());
                    return Err(FetchError::NotFound);
                }
                Err(e) => {
                    tracing::warn!(origin, error = %e, "origin fetch failed; trying the next");
                    self.origins.record(i, false, std::time::Instant::now());
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Whether origin `i`'s circuit breaker is open now (for stats and tests).
    pub fn origin_circuit_open(&self, i: usize) -> bool {
        self.origins.is_open(i, std::time::Instant::now())
    }

    /// Slice `index` (`span`: those bytes of it) from `origin`, checked against the
    /// object's length.
    async fn fetch_from(
        &self,
        origin: &str,
        id: &FileId,
        index: u64,
        span: Option<(u64, u64)>,
        source: Source,
    ) -> Result<Held, FetchError> {
        let (from, to) = span.unwrap_or((0, self.math.slice_size()));
        let start = index * self.math.slice_size();
        let url = format!("{origin}/v1/objects/{id}");
        let mut req = client::request(Method::GET, &url, Some(&self.upstream.edge_key), empty())
            .map_err(|e| FetchError::Upstream(e.to_string()))?;
        let range = format!("bytes={}-{}", start + from, start + to - 1);
        req.headers_mut().insert(
            header::RANGE,
            header::HeaderValue::from_str(&range)
                .map_err(|e| FetchError::Upstream(e.to_string()))?,
        );
        if source == Source::Origin {
            self.origin_fetches.fetch_add(1, Ordering::Relaxed);
        }
        let started = std::time::Instant::now();
        let fetched = self.fetch_body(req, &url, &range).await;
        let outcome = if fetched.is_ok() { "ok" } else { "error" };
        self.metrics
            .upstream_seconds
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        let ((first, last, total), body) = fetched?;
        match source {
            Source::Origin => self.metrics.upstream_bytes.inc_by(body.len() as u64),
            Source::Owner => self.metrics.shield_bytes.inc_by(body.len() as u64),
        }
        let (_, slice_len) = self.math.bounds(index, total);
        let expected = to.min(slice_len).saturating_sub(from);
        if body.len() as u64 != expected || expected == 0 {
            // Never cache a short or long slice: it would be served as if whole.
            return Err(FetchError::Upstream(format!(
                "origin sent {} bytes for slice {index} from {from}, expected {expected}",
                body.len()
            )));
        }
        // Nor bytes from elsewhere in the object, however many: they would be served as
        // these. The range must be the one asked for (its end cut at the object's), and the
        // object as long as it was before (ids name immutable objects).
        let want = start + from;
        if first != want || last != want + expected - 1 {
            return Err(FetchError::Upstream(format!(
                "origin answered {range} with bytes {first}-{last}/{total}"
            )));
        }
        if let Some(known) = self.sizes.get(id)
            && known != total
        {
            return Err(FetchError::Upstream(format!(
                "origin gives the object {total} bytes, earlier {known}"
            )));
        }
        self.sizes.insert(id.clone(), total);
        Ok(Held {
            skip: from,
            data: body,
            total,
            unshelved: None,
        })
    }

    /// One ranged GET to the origin: what its `Content-Range` says (first and last byte,
    /// the object's length) and the body.
    async fn fetch_body(
        &self,
        req: http::Request<cadenza_common::http::Body>,
        url: &str,
        range: &str,
    ) -> Result<((u64, u64, u64), Bytes), FetchError> {
        let resp = client::send(&self.client, req, self.upstream.timeout)
            .await
            .map_err(|e| match e.status() {
                Some(StatusCode::NOT_FOUND) => FetchError::NotFound,
                _ => FetchError::Upstream(e.to_string()),
            })?;
        let span = content_range(resp.headers()).ok_or_else(|| {
            FetchError::Upstream(format!("no usable Content-Range in the answer to {range}"))
        })?;
        let body = tokio::time::timeout(
            self.upstream.timeout,
            client::read_all(resp.into_body(), url),
        )
        .await
        .map_err(|_| FetchError::Upstream("origin body timed out".into()))?
        .map_err(|e: ClientError| FetchError::Upstream(e.to_string()))?;
        Ok((span, body))
    }
}

/// Where the bytes of a response came from, as its `Cache-Status` says (RFC 9211): its first
/// slice's source, unless that was held and a later one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The memory tier held them.
    Memory,
    /// The disk tier held them (now in memory too).
    Disk,
    /// The first slice was held, a later one is fetched.
    Partial,
    /// Fetched from the region's owner or an origin for this request.
    Fetched,
    /// Another request's fetch, in flight, was waited for.
    Collapsed,
}

impl Outcome {
    /// The `Cache-Status` field value (RFC 9211), this cache named `cadenza`.
    pub fn cache_status(self) -> &'static str {
        match self {
            Self::Memory => "cadenza; hit",
            Self::Disk => "cadenza; hit; detail=disk",
            Self::Partial => "cadenza; fwd=partial; stored",
            Self::Fetched => "cadenza; fwd=miss; stored",
            Self::Collapsed => "cadenza; fwd=miss; stored; collapsed",
        }
    }
}

/// What the caller that ran a slice's load found ([`SliceCache::fill`]).
const LED_FETCHED: u8 = 1;
const LED_DISK: u8 = 2;

/// Who a slice is fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Origin,
    /// The edge owning the file in this region.
    Owner,
}

/// `Content-Range: bytes a-b/LEN` as (a, b, LEN), when it is one: a ≤ b < LEN.
fn content_range(headers: &http::HeaderMap) -> Option<(u64, u64, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = cadenza_common::ByteRange::from_content_range(value)?;
    Some((range.start, range.end, total))
}
