//! The edge's access log in a file of its own (nginx's `access_log PATH buffer=… flush=1s`):
//! at thousands of requests a second, lines through stderr and the journal cost more than
//! the requests. Lines are appended through a buffer written out every second, when it
//! fills, and at exit; `SIGHUP` reopens the path, so logrotate can move the file away and
//! have a new one made (`postrotate: systemctl reload cadenza-edge`).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes held before a write to the file.
const BUFFER: usize = 64 * 1024;

/// An access log file, shared by the logging layer that writes it and the tasks that flush
/// and reopen it.
#[derive(Clone)]
pub struct AccessFile {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl AccessFile {
    /// Opens (creating, appending to) `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open(path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                out: Mutex::new(BufWriter::with_capacity(BUFFER, file)),
            }),
        })
    }

    fn out(&self) -> MutexGuard<'_, BufWriter<File>> {
        self.inner.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes out what the buffer holds.
    pub fn flush(&self) -> io::Result<()> {
        self.out().flush()
    }

    /// Writes out what the buffer holds, then goes on in a file opened anew at the path (the
    /// old one may have been moved away). On failure the old file is kept.
    pub fn reopen(&self) -> io::Result<()> {
        let file = open(&self.inner.path)?;
        let mut out = self.out();
        out.flush()?;
        *out = BufWriter::with_capacity(BUFFER, file);
        Ok(())
    }

    /// The path it writes to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// One event's line, written into the buffer whole when dropped (tracing's formatter may
/// write a line in pieces).
pub struct Line {
    file: AccessFile,
    line: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        // A full disk loses lines, not the request: nothing here can answer the error.
        let _ = self.file.out().write_all(&self.line);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AccessFile {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            file: self.clone(),
            line: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_on_flush_and_a_moved_file_is_replaced_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessFile::open(&path).unwrap();
        let write = |text: &str| {
            let mut line = tracing_subscriber::fmt::MakeWriter::make_writer(&log);
            line.write_all(text.as_bytes()).unwrap();
        };
        write("one\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "buffered");
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        // logrotate moves the file; lines go on to it until the reopen.
        let moved = dir.path().join("access.log.1");
        std::fs::rename(&path, &moved).unwrap();
        write("two\n");
        log.reopen().unwrap();
        write("three\n");
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
