//! Scratch files that hold a rendition while it is finished, sealed and uploaded, so the
//! compressed audio of a long track never has to sit in memory. A [`SpoolFile`] removes its
//! file when dropped, so an error anywhere leaves no litter; [`SpoolFile::persist`] keeps it.

use std::fs::File;
use std::path::{Path, PathBuf};

use cadenza_common::{hex_encode, random_bytes};

/// A scratch file owned by this value.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    keep: bool,
}

impl SpoolFile {
    /// A new empty file in `dir` (created if missing), named after `what` plus a random part.
    pub fn create(dir: &Path, what: &str) -> std::io::Result<(Self, File)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{what}-{}.spool", hex_encode(&random_bytes::<8>())));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((Self { path, keep: false }, file))
    }

    /// Where the bytes are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file (for tools and tests; the pipeline itself streams).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }

    /// Moves the file to `dest` (copying across filesystems) and stops owning it.
    pub fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        if std::fs::rename(&self.path, dest).is_err() {
            std::fs::copy(&self.path, dest)?;
            std::fs::remove_file(&self.path)?;
        }
        self.keep = true;
        Ok(())
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn dropped_files_vanish_and_persisted_ones_move() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut f) = SpoolFile::create(dir.path(), "a").unwrap();
        std::io::Write::write_all(&mut f, b"abc").unwrap();
        let path = a.path().to_path_buf();
        assert_eq!(a.read().unwrap(), b"abc");
        drop(a);
        assert!(!path.exists());
        let (b, _) = SpoolFile::create(dir.path(), "b").unwrap();
        let dest = dir.path().join("kept");
        b.persist(&dest).unwrap();
        assert!(dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
