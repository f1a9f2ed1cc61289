//! Several disk tiers, one per device (`cadenza edge --disk DIR:GIB`, repeated), as nginx
//! keeps a cache per disk and Traffic Server a volume: no RAID, so a device that fails takes
//! only its own slices with it.
//!
//! Each file lives on one disk, picked by weighted rendezvous hashing over the disks in
//! service (score `weight / -ln(u)`, `u` a hash of the file id and the disk's directory,
//! uniform in (0, 1)): disks fill in proportion to their size, a file's slices stay together
//! (a purge lists one directory), and a disk taken out of service, or out of the
//! configuration, moves only its own files, to the disk each scores next; disks listed in
//! another order move none. A slice missing from its file's disk is looked for in the other
//! disks' indexes, so copies written where a file lived before (while its disk was out of
//! service, or under another configuration) are served until evicted, not fetched again.
//! A disk whose reads or writes fail [`FAILURES_OUT`] times with no good write between (gone,
//! read-only, full, failing) is out of service for [`COOLDOWN`], then tried again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cadenza_common::FileId;

use crate::disk::{DiskMiss, DiskTier};

/// Failed writes in a row that take a disk out of service.
pub const FAILURES_OUT: u64 = 16;
/// How long a disk is out of service before it is tried again.
pub const COOLDOWN: Duration = Duration::from_secs(60);

/// The edge's disk tiers.
#[derive(Debug)]
pub struct Disks {
    tiers: Vec<Arc<DiskTier>>,
    /// Each disk's share: its capacity in bytes.
    weights: Vec<f64>,
    /// Each disk's name in the hash: its directory.
    names: Vec<Vec<u8>>,
}

impl Disks {
    /// Opens a tier in each `(directory, capacity in bytes)`, sharing one purge epoch (a
    /// write taken before a purge never lands after it, whichever disk it goes to).
    pub async fn open(dirs: &[(PathBuf, u64)], slice_size: u64) -> std::io::Result<Self> {
        let purges = Arc::new(AtomicU64::new(0));
        let mut tiers = Vec::new();
        for (dir, bytes) in dirs {
            tiers.push(Arc::new(
                DiskTier::open_sharing(dir.clone(), *bytes, slice_size, purges.clone()).await?,
            ));
        }
        Ok(Self::of(tiers))
    }

    fn of(tiers: Vec<Arc<DiskTier>>) -> Self {
        let weights = tiers.iter().map(|t| t.capacity_bytes() as f64).collect();
        let names = tiers.iter().map(|t| name(t.root())).collect();
        Self {
            tiers,
            weights,
            names,
        }
    }

    /// The disk `id` lives on now: the highest score among the disks in service (among all
    /// when none is).
    fn pick(&self, id: &FileId) -> &Arc<DiskTier> {
        // One disk (the default): nothing to pick, on every memory miss.
        if let [only] = &self.tiers[..] {
            return only;
        }
        let now = Instant::now();
        let up = |i: usize| self.tiers[i].in_service(now);
        let any = (0..self.tiers.len()).any(up);
        &self.tiers[pick(id, &self.weights, &self.names, |i| !any || up(i))]
    }

    /// The disk other than `home` that holds slice `index` of `id`, if one does: where the
    /// file lived while `home` was out of service, or before the disks were configured as
    /// they are.
    fn elsewhere(&self, home: &Arc<DiskTier>, id: &FileId, index: u64) -> Option<&Arc<DiskTier>> {
        if self.tiers.len() == 1 {
            return None;
        }
        self.tiers
            .iter()
            .find(|t| !Arc::ptr_eq(t, home) && t.holds(id, index))
    }

    /// Slice `index` of `id`, from the disk the file lives on, or another that has it.
    pub async fn get(&self, id: &FileId, index: u64) -> Result<(u64, Bytes), DiskMiss> {
        let home = self.pick(id);
        match home.get(id, index).await {
            Err(DiskMiss::Absent) => match self.elsewhere(home, id, index) {
                Some(other) => other.get(id, index).await,
                None => Err(DiskMiss::Absent),
            },
            found => found,
        }
    }

    /// Whether any disk holds slice `index` of `id` (the file's own first).
    pub fn holds(&self, id: &FileId, index: u64) -> bool {
        let home = self.pick(id);
        home.holds(id, index) || self.elsewhere(home, id, index).is_some()
    }

    /// The purge epoch (shared by every disk).
    pub fn epoch(&self) -> u64 {
        self.tiers.first().map_or(0, |t| t.epoch())
    }

    /// Writes a fetched slice to the disk its file lives on, in the background.
    pub fn put_later(&self, id: FileId, index: u64, object_len: u64, data: Bytes, epoch: u64) {
        self.pick(&id)
            .put_later(id.clone(), index, object_len, data, epoch);
    }

    /// Waits until the disk `id` lives on could start `n` more writes.
    pub async fn room_for(&self, id: &FileId, n: usize) {
        self.pick(id).room_for(n).await;
    }

    /// Drops every slice of `ids`, from every disk (a file may have lived on another while
    /// one was out of service).
    pub async fn purge(&self, ids: &[FileId]) {
        for tier in &self.tiers {
            tier.purge(ids).await;
        }
    }

    /// Bytes and slices on all disks.
    pub fn usage(&self) -> (u64, u64) {
        self.tiers
            .iter()
            .map(|t| t.usage())
            .fold((0, 0), |(b, s), (tb, ts)| (b + tb, s + ts))
    }

    /// Memory the disks' indexes hold.
    pub fn index_bytes(&self) -> usize {
        self.tiers.iter().map(|t| t.index_bytes()).sum()
    }

    /// Whether any disk's start-up scan is still running.
    pub fn scanning(&self) -> bool {
        self.tiers.iter().any(|t| t.scanning())
    }

    /// Slice writes that failed, all disks.
    pub fn write_errors(&self) -> u64 {
        self.tiers.iter().map(|t| t.write_errors()).sum()
    }

    /// Slice reads that failed, all disks.
    pub fn read_errors(&self) -> u64 {
        self.tiers.iter().map(|t| t.read_errors()).sum()
    }

    /// Each disk's directory, whether it is in service, and the bytes of slices it holds.
    pub fn each(&self) -> Vec<(&Path, bool, u64)> {
        let now = Instant::now();
        self.tiers
            .iter()
            .map(|t| (t.root(), t.in_service(now), t.usage().0))
            .collect()
    }

    /// Slices not written for want of room, all disks.
    pub fn writes_skipped(&self) -> u64 {
        self.tiers.iter().map(|t| t.writes_skipped()).sum()
    }

    /// Disks in service, of how many.
    pub fn in_service(&self) -> (usize, usize) {
        let now = Instant::now();
        let up = self.tiers.iter().filter(|t| t.in_service(now)).count();
        (up, self.tiers.len())
    }

    /// Waits for every disk's start-up scan.
    pub async fn scanned(&self) {
        for tier in &self.tiers {
            tier.scanned().await;
        }
    }
}

/// A disk's name in the hash: its directory, without a trailing `/` or `.` components (so
/// `/mnt/ssd0/` is `/mnt/ssd0`). Not its place in the list: a disk dropped from the middle of
/// the configuration would move every file of the disks after it.
fn name(dir: &Path) -> Vec<u8> {
    let normal: PathBuf = dir.components().collect();
    normal.as_os_str().as_encoded_bytes().to_vec()
}

/// The disk `id` lives on among those `eligible` (of `weights` and `names`), by weighted
/// rendezvous hashing (the first when none is eligible).
fn pick(
    id: &FileId,
    weights: &[f64],
    names: &[Vec<u8>],
    eligible: impl Fn(usize) -> bool,
) -> usize {
    let key = id.to_bytes();
    let mut best = (0, f64::NEG_INFINITY);
    for (i, (&weight, name)) in weights.iter().zip(names).enumerate() {
        if !eligible(i) {
            continue;
        }
        let mut seed = ring::digest::Context::new(&ring::digest::SHA256);
        seed.update(&key);
        seed.update(name);
        let digest = seed.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        // 53 bits into (0, 1), never 0 or 1.
        let u = ((u64::from_le_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = weight / -u.ln();
        if score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dirs: &[&str]) -> Vec<Vec<u8>> {
        dirs.iter().map(|d| name(Path::new(d))).collect()
    }

    #[test]
    fn files_spread_by_size_and_a_disk_leaving_moves_only_its_own() {
        let ids: Vec<FileId> = (0..3000).map(|_| FileId::random()).collect();
        let weights = [1.0, 1.0, 2.0];
        let names = names(&["/mnt/ssd0", "/mnt/ssd1", "/mnt/ssd2"]);
        let pick = |id, weights: &[f64], eligible: &dyn Fn(usize) -> bool| {
            pick(id, weights, &names, eligible)
        };
        let all = &|_| true;
        let placed: Vec<usize> = ids.iter().map(|id| pick(id, &weights, all)).collect();
        let counts: Vec<usize> = (0..3)
            .map(|d| placed.iter().filter(|&&p| p == d).count())
            .collect();
        // Expect 750, 750, 1500.
        assert!((600..900).contains(&counts[0]), "{counts:?}");
        assert!((600..900).contains(&counts[1]), "{counts:?}");
        assert!((1300..1700).contains(&counts[2]), "{counts:?}");
        // Disk 1 out of service: its files move, the others' stay.
        let without: Vec<usize> = ids
            .iter()
            .map(|id| pick(id, &weights, &|d| d != 1))
            .collect();
        for (before, after) in placed.iter().zip(&without) {
            assert_ne!(*after, 1);
            if *before != 1 {
                assert_eq!(before, after);
            }
        }
        // Every disk the same again: the same places.
        let again: Vec<usize> = ids.iter().map(|id| pick(id, &weights, all)).collect();
        assert_eq!(placed, again);
    }

    #[test]
    fn disks_are_known_by_their_directory_not_their_place_in_the_list() {
        let ids: Vec<FileId> = (0..2000).map(|_| FileId::random()).collect();
        let all = |_| true;
        let place = |dirs: &[&str]| -> Vec<String> {
            let (names, weights) = (names(dirs), vec![1.0; dirs.len()]);
            ids.iter()
                .map(|id| {
                    dirs[pick(id, &weights, &names, all)]
                        .trim_end_matches('/')
                        .to_owned()
                })
                .collect()
        };
        let before = place(&["/mnt/a", "/mnt/b", "/mnt/c"]);
        // Listed in another order, with a trailing slash: nothing moves.
        assert_eq!(place(&["/mnt/c/", "/mnt/a", "/mnt/b"]), before);
        // The middle disk dropped from the configuration: only its files move.
        let after = place(&["/mnt/a", "/mnt/c"]);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b == "/mnt/b" {
                moved += 1;
            } else {
                assert_eq!(b, a, "a file of a disk still configured moved");
            }
        }
        assert!((500..830).contains(&moved), "{moved} files lived on b");
    }

    fn dirs(name: &str, n: usize) -> Vec<(PathBuf, u64)> {
        (0..n)
            .map(|i| {
                let dir = crate::disk::tier_tests::test_dir(&format!("{name}-{i}"));
                (dir, 1 << 22)
            })
            .collect()
    }

    /// `n` disks for the test `name`, opened and scanned, and their directories.
    async fn open_disks(name: &str, n: usize) -> (Vec<(PathBuf, u64)>, Disks) {
        let dirs = dirs(name, n);
        let disks = Disks::open(&dirs, 1024).await.unwrap();
        disks.scanned().await;
        (dirs, disks)
    }

    async fn landed(disks: &Disks, id: &FileId) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !disks.holds(id, 0) {
            assert!(Instant::now() < deadline, "a write never landed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_slice_on_another_disk_than_its_files_is_served_from_there() {
        let (dirs, disks) = open_disks("elsewhere", 2).await;
        let data = Bytes::from(vec![4u8; 100]);
        let id = FileId::random();
        let home = pick(&id, &disks.weights, &disks.names, |_| true);
        // Written where the file lived before: the other disk (as while its own was out of
        // service, or before the disks were configured as they are).
        let other = &disks.tiers[1 - home];
        other.put(&id, 0, 100, &data, disks.epoch()).await;
        assert!(disks.holds(&id, 0));
        assert_eq!(disks.get(&id, 0).await, Ok((100, data)));
        assert!(!disks.holds(&id, 1));
        assert_eq!(disks.get(&id, 1).await, Err(DiskMiss::Absent));
        disks.purge(std::slice::from_ref(&id)).await;
        assert!(!disks.holds(&id, 0));
        for (dir, _) in &dirs {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[tokio::test]
    async fn slices_go_to_their_files_disk_and_a_failing_disk_is_left_out() {
        let (dirs, disks) = open_disks("fail", 2).await;
        let data = Bytes::from(vec![8u8; 100]);
        let ids: Vec<FileId> = (0..40).map(|_| FileId::random()).collect();
        for id in &ids {
            disks.put_later(id.clone(), 0, 100, data.clone(), disks.epoch());
            landed(&disks, id).await;
        }
        // File directories (beside the slice-size marker).
        let on = |d: usize| {
            std::fs::read_dir(&dirs[d].0)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().is_dir())
                .count()
        };
        assert_eq!(on(0) + on(1), 40);
        assert!(on(0) > 5 && on(1) > 5, "{} and {}", on(0), on(1));
        for id in &ids {
            assert_eq!(disks.get(id, 0).await, Ok((100, data.clone())));
        }
        assert_eq!(disks.usage().1, 40);

        // Disk 1 goes away: where its directory was is now a file, so writes there fail.
        std::fs::remove_dir_all(&dirs[1].0).unwrap();
        std::fs::write(&dirs[1].0, b"not a directory").unwrap();
        let fresh: Vec<FileId> = (0..200).map(|_| FileId::random()).collect();
        for id in &fresh {
            disks.put_later(id.clone(), 0, 100, data.clone(), disks.epoch());
            tokio::task::yield_now().await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while disks.in_service() != (1, 2) {
            assert!(
                Instant::now() < deadline,
                "the failing disk stayed in service"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(disks.write_errors() >= FAILURES_OUT);
        // Now every file goes to the disk still in service.
        let later = FileId::random();
        // Once the burst's writes are done (past 64 under way a write would be skipped).
        disks.room_for(&later, 64).await;
        disks.put_later(later.clone(), 0, 100, data.clone(), disks.epoch());
        landed(&disks, &later).await;
        assert_eq!(disks.get(&later, 0).await, Ok((100, data.clone())));
        // A purge reaches every disk.
        disks.purge(&ids).await;
        for id in &ids {
            assert!(!disks.holds(id, 0));
        }
        std::fs::remove_dir_all(&dirs[0].0).unwrap();
        std::fs::remove_file(&dirs[1].0).unwrap();
    }
}
