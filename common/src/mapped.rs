//! Bytes kept in memory files, so that a cleartext socket can be handed them by `sendfile`
//! instead of copying them through user space (what nginx's `sendfile on` does for files on
//! disk).
//!
//! Two kinds of memory file:
//! - [`copy`] writes bytes into a memfd of their own, seals it against any further change and
//!   returns `Bytes` over a read-only mapping of it.
//! - [`Shelves`] keeps one memfd per object (a cached rendition), as long as the object's
//!   size. Pieces of it (the cache's slices) are written in at their own offsets as they
//!   arrive, and each comes back as `Bytes` over its place in one read-only mapping of the
//!   whole file. When the last `Bytes` of a piece drops, its pages are punched out of the
//!   file. Neighbouring pieces sit side by side in one file, so a range across a slice
//!   boundary leaves in one `sendfile` call.
//!
//! [`file_of`] finds the file and offset behind any slice of such `Bytes`, for as long as the
//! slice is alive. The kernel holds its own reference to every page it has queued on a
//! socket, and neither closing a file nor punching whole pages out of it changes a page, so
//! bytes in flight stay intact after the last `Bytes` drops.
//!
//! Each file is an open descriptor. [`set_budget`] bounds how many exist at once (none by
//! default); past it [`copy`] and [`Shelves::put`] decline, and the caller keeps its
//! ordinary bytes.

use bytes::Bytes;

/// Lets at most `files` memory files exist at once.
pub fn set_budget(files: usize) {
    imp::BUDGET.store(files, std::sync::atomic::Ordering::Relaxed);
}

/// Raises this process's soft limit on open descriptors to its hard limit (as nginx's
/// `worker_rlimit_nofile` and Go's runtime do), and returns the limit now in force.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    imp::raise_descriptor_limit()
}

/// Whether memory files may be made at all (a budget was set).
pub fn budgeted() -> bool {
    imp::BUDGET.load(std::sync::atomic::Ordering::Relaxed) > 0
}

/// Memory files alive now.
pub fn live() -> usize {
    imp::LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// `data` in a sealed memory file of its own, as `Bytes` over its mapping; `None` when the
/// budget is spent, `data` is empty, or the system refuses.
pub fn copy(data: &[u8]) -> Option<Bytes> {
    imp::copy(data)
}

/// The memory file `chunk` lies in and its offset there, when `chunk` is (a slice of) bytes
/// from [`copy`]. The file stays valid while `chunk` does.
pub fn file_of(chunk: &[u8]) -> Option<(std::sync::Arc<std::fs::File>, u64)> {
    imp::file_of(chunk)
}

/// Memory files by object, one per `K` (a file id): see the module's documentation.
pub struct Shelves<K> {
    shelves: std::sync::Mutex<Registry<K>>,
}

/// Each object's shelf while any piece of it lives, and when to forget dead entries next.
struct Registry<K> {
    by_key: std::collections::HashMap<K, std::sync::Weak<imp::Shelf>>,
    /// Entries at which dead ones are swept out: twice those left by the last sweep, so
    /// sweeping costs a constant per shelf made.
    sweep_at: usize,
}

impl<K> Default for Shelves<K> {
    fn default() -> Self {
        Self {
            shelves: std::sync::Mutex::new(Registry {
                by_key: std::collections::HashMap::new(),
                sweep_at: 64,
            }),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Shelves<K> {
    /// `data` written at `offset` in the memory file of object `key` (made, `object_len`
    /// bytes long, if the object has none alive), as `Bytes` over its mapping. `None` when
    /// the budget is spent, `offset` is not page-aligned, the piece overlaps a live piece
    /// other than an identical one at the same offset, it lies past the object's end, or the
    /// system refuses: the caller keeps its ordinary bytes.
    pub fn put(&self, key: &K, object_len: u64, offset: u64, data: &[u8]) -> Option<Bytes> {
        let shelf = {
            let mut registry = self.shelves.lock().ok()?;
            match registry.by_key.get(key).and_then(std::sync::Weak::upgrade) {
                Some(shelf) => shelf,
                None => {
                    let shelf = imp::Shelf::new(object_len)?;
                    if registry.by_key.len() >= registry.sweep_at {
                        registry.by_key.retain(|_, weak| weak.strong_count() > 0);
                        registry.sweep_at = (2 * registry.by_key.len()).max(64);
                    }
                    registry
                        .by_key
                        .insert(key.clone(), std::sync::Arc::downgrade(&shelf));
                    shelf
                }
            }
        };
        imp::Shelf::put(&shelf, offset, data)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, RwLock};

    use bytes::Bytes;
    use rustix::fs::{MemfdFlags, SealFlags};
    use rustix::process::{Resource, Rlimit};

    pub(super) static BUDGET: AtomicUsize = AtomicUsize::new(0);
    pub(super) static LIVE: AtomicUsize = AtomicUsize::new(0);

    /// Live mappings by start address: a chunk's pointer leads to the mapping holding it.
    static MAPS: RwLock<BTreeMap<usize, Region>> = RwLock::new(BTreeMap::new());

    struct Region {
        len: usize,
        file: Arc<File>,
    }

    /// One sealed memory file's read-only mapping, unregistered on drop (then unmapped).
    struct Mapping(memmap2::Mmap);

    impl AsRef<[u8]> for Mapping {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            if let Ok(mut maps) = MAPS.write() {
                maps.remove(&(self.0.as_ptr() as usize));
            }
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) fn copy(data: &[u8]) -> Option<Bytes> {
        if data.is_empty() || !take_budget() {
            return None;
        }
        match map(data) {
            Ok(mapping) => Some(Bytes::from_owner(mapping)),
            Err(e) => {
                LIVE.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "memory file refused; keeping heap bytes");
                None
            }
        }
    }

    /// `data` in a new memory file, sealed, mapped and registered. On an error nothing is
    /// left behind (the file closes; a mapping unregisters itself).
    fn map(data: &[u8]) -> io::Result<Mapping> {
        let file = memory_file(data.len() as u64)?;
        file.write_all_at(data, 0)?;
        let seals = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&file, seals)?;
        #[allow(unsafe_code)]
        // SAFETY: mapping a file is unsafe because the file could change under the mapping.
        // This one cannot: it is sealed against writes, shrinking and growing, and the seals
        // against removal.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
        register(&map, Arc::new(file))?;
        Ok(Mapping(map))
    }

    /// Takes one file from the budget; `false` when it is spent.
    fn take_budget() -> bool {
        if LIVE.fetch_add(1, Ordering::Relaxed) >= BUDGET.load(Ordering::Relaxed) {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A new memory file, `len` bytes long (sparse), reads leaving its access time alone.
    fn memory_file(len: u64) -> io::Result<File> {
        let fd = rustix::fs::memfd_create(
            "cadenza-bytes",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let file = File::from(fd);
        file.set_len(len)?;
        // Every sendfile from the file would otherwise update its access time (touch_atime,
        // 0.85 % of the edge's samples serving HTTP/1.1 hits).
        if let Err(e) = rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::NOATIME) {
            tracing::debug!(error = %e, "O_NOATIME refused on a memory file");
        }
        Ok(file)
    }

    /// Registers a mapping of `file` from its start, so [`file_of`] finds it.
    fn register(map: &memmap2::Mmap, file: Arc<File>) -> io::Result<()> {
        let region = Region {
            len: map.len(),
            file,
        };
        MAPS.write()
            .map_err(|_| io::Error::other("memory file registry poisoned"))?
            .insert(map.as_ptr() as usize, region);
        Ok(())
    }

    /// One object's memory file (see [`super::Shelves`]), mapped whole and read-only.
    pub(crate) struct Shelf {
        file: Arc<File>,
        map: memmap2::Mmap,
        /// Live pieces by offset: their length and how many `Bytes` owners hold them.
        pieces: Mutex<BTreeMap<u64, (usize, usize)>>,
    }

    /// One piece's hold on its shelf: the piece's pages stay while one exists.
    struct Piece {
        shelf: Arc<Shelf>,
        offset: usize,
        len: usize,
    }

    impl AsRef<[u8]> for Piece {
        fn as_ref(&self) -> &[u8] {
            &self.shelf.map[self.offset..self.offset + self.len]
        }
    }

    impl Drop for Piece {
        fn drop(&mut self) {
            let Ok(mut pieces) = self.shelf.pieces.lock() else {
                return;
            };
            let Some((_, holders)) = pieces.get_mut(&(self.offset as u64)) else {
                return;
            };
            *holders -= 1;
            if *holders == 0 {
                pieces.remove(&(self.offset as u64));
                self.shelf.punch(self.offset, self.len);
            }
        }
    }

    impl Drop for Shelf {
        fn drop(&mut self) {
            if let Ok(mut maps) = MAPS.write() {
                maps.remove(&(self.map.as_ptr() as usize));
            }
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether punching pages out of a memory file leaves every other page as it was: not
    /// when tmpfs may back memory files with huge pages, where punching part of one zeroes
    /// that part in place, under bytes a socket may still be sending.
    fn punching_is_safe() -> bool {
        static SAFE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SAFE.get_or_init(|| {
            match std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled") {
                // The bracketed word is the setting in force; `advise` needs an madvise
                // this module never makes.
                Ok(setting) => ["[never]", "[deny]", "[advise]"]
                    .iter()
                    .any(|word| setting.contains(word)),
                // No transparent huge pages in this kernel.
                Err(_) => true,
            }
        })
    }

    impl Shelf {
        pub(crate) fn new(len: u64) -> Option<Arc<Shelf>> {
            if len == 0 || !punching_is_safe() || !take_budget() {
                return None;
            }
            let made = Self::make(len);
            if let Err(e) = &made {
                tracing::debug!(error = %e, "memory file refused; keeping heap bytes");
            }
            made.ok()
        }

        /// A shelf of `len` bytes, mapped and registered; on an error nothing is left
        /// behind and the budget taken is given back.
        fn make(len: u64) -> io::Result<Arc<Shelf>> {
            let mapped = (|| -> io::Result<(File, memmap2::Mmap)> {
                let file = memory_file(len)?;
                let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
                rustix::fs::fcntl_add_seals(&file, seals)?;
                #[allow(unsafe_code)]
                // SAFETY: the mapping is only ever read through `Piece`s, each over bytes
                // that were written before it was made and are not written again while any
                // `Piece` of them lives (`put` writes only where no live piece lies). The
                // file cannot shrink under the mapping (sealed), and it is this process's
                // own memfd.
                let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
                Ok((file, map))
            })();
            let (file, map) = mapped.inspect_err(|_| {
                LIVE.fetch_sub(1, Ordering::Relaxed);
            })?;
            // From here the shelf gives the budget back (and unregisters) when it drops.
            let shelf = Arc::new(Shelf {
                file: Arc::new(file),
                map,
                pieces: Mutex::new(BTreeMap::new()),
            });
            register(&shelf.map, shelf.file.clone())?;
            Ok(shelf)
        }

        pub(crate) fn put(shelf: &Arc<Shelf>, offset: u64, data: &[u8]) -> Option<Bytes> {
            let len = data.len();
            let start = usize::try_from(offset).ok()?;
            let end = start.checked_add(len)?;
            if len == 0 || start % page_size() != 0 || end > shelf.map.len() {
                return None;
            }
            let mut pieces = shelf.pieces.lock().ok()?;
            if let Some((at, (piece_len, holders))) = pieces.range_mut(..end as u64).next_back()
                && *at as usize + *piece_len > start
            {
                // Only the same bytes at the same place may share a live piece.
                if *at as usize != start || *piece_len != len || shelf.map[start..end] != *data {
                    return None;
                }
                *holders += 1;
            } else {
                if let Err(e) = shelf.file.write_all_at(data, offset) {
                    tracing::debug!(error = %e, "memory file write failed; keeping heap bytes");
                    shelf.punch(start, len);
                    return None;
                }
                // Fault the pages in now: readers in user space (TLS, HTTP/3) then take no
                // page faults. Only an optimisation; old kernels refuse it.
                let _ = shelf
                    .map
                    .advise_range(memmap2::Advice::PopulateRead, start, len);
                pieces.insert(offset, (len, 1));
            }
            drop(pieces);
            Some(Bytes::from_owner(Piece {
                shelf: shelf.clone(),
                offset: start,
                len,
            }))
        }

        /// Gives back the pages of bytes `offset..offset + len` (whole pages: a piece ends
        /// where the next begins, at a page boundary, or at the end of the object).
        fn punch(&self, offset: usize, len: usize) {
            let page = page_size();
            let len = len.div_ceil(page) * page;
            let flags =
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            if let Err(e) = rustix::fs::fallocate(&*self.file, flags, offset as u64, len as u64) {
                tracing::warn!(error = %e, "could not free a memory file's pages");
            }
        }
    }

    fn page_size() -> usize {
        rustix::param::page_size()
    }

    pub(super) fn raise_descriptor_limit() -> io::Result<u64> {
        let limit = rustix::process::getrlimit(Resource::Nofile);
        let Some(hard) = limit.maximum else {
            return Ok(u64::MAX);
        };
        if limit.current.is_some_and(|soft| soft < hard) {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            if rustix::process::setrlimit(Resource::Nofile, raised).is_err() {
                return Ok(limit.current.unwrap_or(hard));
            }
        }
        Ok(hard)
    }

    pub(super) fn file_of(chunk: &[u8]) -> Option<(Arc<File>, u64)> {
        if LIVE.load(Ordering::Relaxed) == 0 || chunk.is_empty() {
            return None;
        }
        let at = chunk.as_ptr() as usize;
        let maps = MAPS.read().ok()?;
        let (&start, region) = maps.range(..=at).next_back()?;
        (at + chunk.len() <= start + region.len).then(|| (region.file.clone(), (at - start) as u64))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::sync::atomic::AtomicUsize;

    pub(super) static BUDGET: AtomicUsize = AtomicUsize::new(0);
    pub(super) static LIVE: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn copy(_data: &[u8]) -> Option<bytes::Bytes> {
        None
    }

    pub(crate) struct Shelf;

    impl Shelf {
        pub(crate) fn new(_len: u64) -> Option<std::sync::Arc<Shelf>> {
            None
        }

        pub(crate) fn put(
            _shelf: &std::sync::Arc<Shelf>,
            _offset: u64,
            _data: &[u8],
        ) -> Option<bytes::Bytes> {
            None
        }
    }

    pub(super) fn file_of(_chunk: &[u8]) -> Option<(std::sync::Arc<std::fs::File>, u64)> {
        None
    }

    pub(super) fn raise_descriptor_limit() -> std::io::Result<u64> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::sync::Arc;

    /// The tests count live files: one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn copies_are_sealed_files_found_from_any_slice() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        set_budget(usize::MAX);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let bytes = copy(&data).expect("a memory file");
        assert_eq!(&bytes[..], &data[..]);
        let part = bytes.slice(4096..70_000);
        let (file, offset) = file_of(&part).expect("the slice's file");
        assert_eq!(offset, 4096);
        let mut back = vec![0u8; part.len()];
        file.read_exact_at(&mut back, offset).unwrap();
        assert_eq!(back, &data[4096..70_000]);
        // Sealed: the file takes no write.
        assert!(file.write_at(b"x", 0).is_err());
        // Reads (sendfile's among them) leave its access time alone.
        let flags = rustix::fs::fcntl_getfl(&*file).unwrap();
        assert!(flags.contains(rustix::fs::OFlags::NOATIME), "{flags:?}");
        // Heap bytes are not found.
        assert!(file_of(&data[10..20]).is_none());
        // Nothing else in this crate's tests makes memory files meanwhile.
        let before = live();
        drop((bytes, part, file));
        assert_eq!(live(), before - 1);
        assert!(copy(&[]).is_none());
    }

    #[test]
    fn shelves_keep_an_objects_pieces_side_by_side_and_free_each() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        set_budget(usize::MAX);
        let before = live();
        const PIECE: usize = 64 * 1024;
        let object: Vec<u8> = (0..(3 * PIECE + 1000) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let len = object.len() as u64;
        let piece = |i: usize| &object[i * PIECE..((i + 1) * PIECE).min(object.len())];
        let shelves = Shelves::default();
        let a = shelves.put(&7u8, len, 0, piece(0)).expect("a piece");
        let b = shelves
            .put(&7u8, len, PIECE as u64, piece(1))
            .expect("a piece");
        let last = shelves
            .put(&7u8, len, 3 * PIECE as u64, piece(3))
            .expect("the tail");
        assert_eq!(live(), before + 1, "one file for the object");
        assert_eq!((&a[..], &b[..], &last[..]), (piece(0), piece(1), piece(3)));
        // Neighbours lie side by side in one file.
        let (file_a, at_a) = file_of(&a[100..]).expect("a's file");
        let (file_b, at_b) = file_of(&b[..]).expect("b's file");
        assert!(Arc::ptr_eq(&file_a, &file_b));
        assert_eq!((at_a, at_b), (100, PIECE as u64));
        let mut back = vec![0u8; 2 * PIECE - 100];
        file_a.read_exact_at(&mut back, 100).unwrap();
        assert_eq!(back, &object[100..2 * PIECE]);

        // Refused: a misaligned piece, a piece overlapping a live one, other bytes where a
        // piece lives, a piece past the end. The same bytes at the same place are shared.
        assert!(shelves.put(&7u8, len, 100, &object[100..200]).is_none());
        assert!(shelves.put(&7u8, len, 0, &object[..4096]).is_none());
        assert!(shelves.put(&7u8, len, PIECE as u64, piece(0)).is_none());
        assert!(shelves.put(&7u8, len, 4 * PIECE as u64, piece(0)).is_none());
        let b_again = shelves
            .put(&7u8, len, PIECE as u64, piece(1))
            .expect("shared");
        assert_eq!(&b_again[..], piece(1));

        // A piece's pages leave the file when its last holder drops, not before.
        let blocks = || file_a.metadata().unwrap().blocks();
        let full = blocks();
        drop(b);
        assert_eq!(blocks(), full);
        assert_eq!(&b_again[..], piece(1));
        drop(b_again);
        assert!(blocks() < full, "{} of {full} blocks left", blocks());
        let mut hole = vec![1u8; PIECE];
        file_a.read_exact_at(&mut hole, PIECE as u64).unwrap();
        assert!(hole.iter().all(|&byte| byte == 0));
        // Its place takes new bytes; the rest is untouched.
        let b = shelves
            .put(&7u8, len, PIECE as u64, piece(1))
            .expect("refilled");
        assert_eq!((&a[..], &b[..], &last[..]), (piece(0), piece(1), piece(3)));

        // The file closes with the object's last piece.
        drop((a, b, last, file_a, file_b));
        assert_eq!(live(), before);
    }

    #[test]
    fn shelves_forget_objects_whose_pieces_are_gone() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        set_budget(usize::MAX);
        let shelves = Shelves::default();
        let kept: Vec<Bytes> = (0..10u32)
            .map(|key| shelves.put(&key, 4096, 0, &[1u8; 4096]).expect("a piece"))
            .collect();
        for key in 10..10_000u32 {
            drop(shelves.put(&key, 4096, 0, &[2u8; 4096]).expect("a piece"));
        }
        let registry = shelves.shelves.lock().unwrap();
        assert!(
            registry.by_key.len() <= 128,
            "{} entries",
            registry.by_key.len()
        );
        assert!((0..10u32).all(|key| registry.by_key[&key].strong_count() == 1));
        drop((registry, kept));
    }
}
