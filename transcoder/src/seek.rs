//! The seek index of an Ogg Vorbis file: where its headers end and, for about a hundred
//! evenly spaced times, the byte offset of the Ogg page to start decoding from.
//!
//! A page's granule position is the PCM frame at the end of the last packet completed on
//! it, so decoding from the start of page `P` resumes at the granule of the page before `P`.
//! Each point is therefore `(granule of the previous page, offset of P)`. A player that has
//! the headers seeks with one range request from the point at or before its target.

use cadenza_common::{SeekIndex, SeekPoint};

use crate::ogg_pages::{OggError, Page, pages};

/// Builds the index of `ogg` with at most `points` entries (plus the start).
pub fn build(ogg: &[u8], points: usize) -> Result<SeekIndex, OggError> {
    Ok(from_pages(&pages(ogg)?, ogg.len() as u64, points))
}

/// The index from a file's pages (`len`: the file's length).
pub fn from_pages(pages: &[Page], len: u64, points: usize) -> SeekIndex {
    // Vorbis I §A.2: pages holding only headers have granule position 0, and audio begins on
    // a fresh page after them.
    let first_audio = pages
        .iter()
        .position(|p| p.granule != Some(0))
        .unwrap_or(pages.len());
    let header_bytes = pages.get(first_audio).map_or(len, |p| p.offset as u64);
    let frames = pages.iter().filter_map(|p| p.granule).max().unwrap_or(0);
    // Candidate points: (frame decoding resumes at, page offset), for pages that begin with a
    // whole packet (a continued packet cannot be decoded from its second half), keeping the
    // earliest page for each resume frame.
    let mut candidates: Vec<SeekPoint> = Vec::new();
    let mut resume = 0u64;
    for page in &pages[first_audio..] {
        if !page.continued && candidates.last().is_none_or(|c| c.0 != resume) {
            candidates.push(SeekPoint(resume, page.offset as u64));
        }
        if let Some(g) = page.granule {
            resume = g;
        }
    }
    let mut chosen: Vec<SeekPoint> = Vec::with_capacity(points + 1);
    if points > 0 && frames > 0 {
        for k in 0..points as u64 {
            let target = frames * k / points as u64;
            // The last candidate at or before the target.
            let i = candidates.partition_point(|c| c.0 <= target);
            if let Some(&c) = i.checked_sub(1).and_then(|i| candidates.get(i))
                && chosen.last() != Some(&c)
            {
                chosen.push(c);
            }
        }
    }
    SeekIndex {
        header_bytes,
        frames,
        points: chosen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(granule: i64, body: &[u8]) -> Vec<u8> {
        let mut p = b"OggS".to_vec();
        p.push(0);
        p.push(0);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&[0; 12]);
        p.push(1);
        p.push(body.len() as u8);
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn points_resume_at_the_previous_pages_granule() {
        let mut ogg = page(0, b"id");
        ogg.extend(page(0, b"setup"));
        let header = ogg.len() as u64;
        ogg.extend(page(-1, b"partial"));
        ogg.extend(page(1000, b"a"));
        ogg.extend(page(2000, b"b"));
        ogg.extend(page(3000, b"c"));
        let index = build(&ogg, 3).unwrap();
        assert_eq!(index.header_bytes, header);
        assert_eq!(index.frames, 3000);
        let offsets: Vec<u64> = index.points.iter().map(|p| p.1).collect();
        let frames: Vec<u64> = index.points.iter().map(|p| p.0).collect();
        assert_eq!(frames, vec![0, 1000, 2000]);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn damaged_files_are_reported() {
        assert_eq!(build(b"junk", 10), Err(OggError::Truncated(0)));
        let mut ogg = page(0, b"id");
        ogg.extend_from_slice(b"XXXXYYYYYYYYYYYYYYYYYYYYYYYYYYY");
        assert!(matches!(build(&ogg, 10), Err(OggError::NoPage(_))));
        let cut = page(5, b"abcdef");
        assert!(matches!(
            build(&cut[..cut.len() - 2], 10),
            Err(OggError::Truncated(0))
        ));
    }
}
