//! Bytes kept in memory files, so that a cleartext socket can be handed them by `sendfile`
//! instead of copying them through user space (what nginx's `sendfile on` does for files on
//! disk).
//!
//! [`copy`] writes bytes into a memfd of their own, seals it against any further change and
//! returns `Bytes` over a read-only mapping of it: readers see the file's pages, and
//! [`file_of`] finds the file and offset behind any slice of such `Bytes`, for as long as the
//! slice is alive. A sealed file cannot change, and the kernel holds its own reference to
//! every page it has queued on a socket, so bytes in flight stay intact after the last
//! `Bytes` drops and the file closes.
//!
//! Each file is an open descriptor. [`set_budget`] bounds how many exist at once (none by
//! default); past it [`copy`] declines, and the caller keeps its ordinary bytes.

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

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, RwLock};

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
        if data.is_empty() {
            return None;
        }
        if LIVE.fetch_add(1, Ordering::Relaxed) >= BUDGET.load(Ordering::Relaxed) {
            LIVE.fetch_sub(1, Ordering::Relaxed);
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
        let fd = rustix::fs::memfd_create(
            "cadenza-bytes",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let file = File::from(fd);
        file.set_len(data.len() as u64)?;
        file.write_all_at(data, 0)?;
        let seals = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&file, seals)?;
        // Every sendfile from the file would otherwise update its access time (touch_atime,
        // 0.85 % of the edge's samples serving HTTP/1.1 hits).
        if let Err(e) = rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::NOATIME) {
            tracing::debug!(error = %e, "O_NOATIME refused on a memory file");
        }
        #[allow(unsafe_code)]
        // SAFETY: mapping a file is unsafe because the file could change under the mapping.
        // This one cannot: it is sealed against writes, shrinking and growing, and the seals
        // against removal.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
        let region = Region {
            len: map.len(),
            file: Arc::new(file),
        };
        let start = map.as_ptr() as usize;
        let mut maps = MAPS
            .write()
            .map_err(|_| io::Error::other("memory file registry poisoned"))?;
        maps.insert(start, region);
        Ok(Mapping(map))
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
    use std::os::unix::fs::FileExt;

    #[test]
    fn copies_are_sealed_files_found_from_any_slice() {
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
        // Nothing else in this crate's tests makes memory files.
        let before = live();
        drop((bytes, part, file));
        assert_eq!(live(), before - 1);
        assert!(copy(&[]).is_none());
    }
}
