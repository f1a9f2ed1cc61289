//! Walking and checksumming Ogg pages (RFC 3533), in memory or streamed from a file.

use std::io::Read;

/// One Ogg page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Where the page starts.
    pub offset: usize,
    /// Total length, header included.
    pub len: usize,
    /// Granule position, `None` when no packet ends on the page (-1).
    pub granule: Option<u64>,
    /// The page begins with the rest of a packet from the previous page.
    pub continued: bool,
}

/// Why a file's pages could not be walked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OggError {
    /// No `OggS` capture pattern where a page should start.
    #[error("no Ogg page at byte {0}")]
    NoPage(u64),
    /// A page runs past the end of the file.
    #[error("the Ogg page at byte {0} is cut short")]
    Truncated(u64),
    /// The file could not be read.
    #[error("reading the Ogg file failed: {0}")]
    Io(String),
}

/// Every page of `ogg`, in order.
pub fn pages(ogg: &[u8]) -> Result<Vec<Page>, OggError> {
    let mut reader = ogg;
    pages_in(&mut reader)
}

/// Every page of the stream `r` yields, in order, reading headers and skipping bodies; a
/// buffered file reader walks an hour-long rendition without holding it.
pub fn pages_in<R: Read>(r: &mut R) -> Result<Vec<Page>, OggError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut head = [0u8; 27];
    let mut table = [0u8; 255];
    loop {
        let at = pos as u64;
        // End of stream exactly at a page boundary is the normal end.
        let got = read_full(r, &mut head).map_err(|e| OggError::Io(e.to_string()))?;
        if got == 0 {
            return Ok(out);
        }
        if got < head.len() {
            return Err(OggError::Truncated(at));
        }
        if &head[..4] != b"OggS" {
            return Err(OggError::NoPage(at));
        }
        let mut granule = [0u8; 8];
        granule.copy_from_slice(&head[6..14]);
        let granule = i64::from_le_bytes(granule);
        let segments = usize::from(head[26]);
        let table = &mut table[..segments];
        if read_full(r, table).map_err(|e| OggError::Io(e.to_string()))? < segments {
            return Err(OggError::Truncated(at));
        }
        let body: usize = table.iter().map(|&s| usize::from(s)).sum();
        let skipped = std::io::copy(&mut r.by_ref().take(body as u64), &mut std::io::sink())
            .map_err(|e| OggError::Io(e.to_string()))?;
        if skipped < body as u64 {
            return Err(OggError::Truncated(at));
        }
        let len = 27 + segments + body;
        out.push(Page {
            offset: pos,
            len,
            granule: u64::try_from(granule).ok(),
            continued: head[5] & 0x01 != 0,
        });
        pos += len;
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The Ogg CRC-32 (polynomial 0x04c11db7, no reflection, initial value 0) of `page` with its
/// checksum field taken as zero.
pub fn page_crc(page: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
            }
            *entry = r;
        }
        t
    });
    let mut crc = 0u32;
    for (i, &b) in page.iter().enumerate() {
        let b = if (22..26).contains(&i) { 0 } else { b };
        crc = (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// Rewrites the checksum of the page at `page`.
pub fn reseal(ogg: &mut [u8], page: Page) {
    let bytes = &mut ogg[page.offset..page.offset + page.len];
    let crc = page_crc(bytes);
    bytes[22..26].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_libvorbis_output() {
        let done = crate::transcode(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/flac/mono.flac"),
            &crate::TranscodeOptions::default(),
        )
        .unwrap();
        let ogg = &done.renditions[0].read().unwrap();
        assert_eq!(
            pages(ogg).unwrap(),
            pages_in(&mut std::io::BufReader::new(
                std::fs::File::open(done.renditions[0].path()).unwrap()
            ))
            .unwrap()
        );
        assert_eq!(
            pages(&ogg[..ogg.len() - 1]),
            Err(OggError::Truncated(
                pages(ogg).unwrap().last().unwrap().offset as u64
            ))
        );
        for page in pages(ogg).unwrap() {
            let bytes = &ogg[page.offset..page.offset + page.len];
            let stored = u32::from_le_bytes([bytes[22], bytes[23], bytes[24], bytes[25]]);
            assert_eq!(page_crc(bytes), stored, "page at {}", page.offset);
        }
    }
}
