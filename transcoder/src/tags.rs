//! ReplayGain comments. The master's loudness is known only once it has been decoded, after
//! the Vorbis comment header was written, so the header carries fixed-width placeholders that
//! are overwritten in place (same length, so no page moves) and their page re-checksummed.

use cadenza_common::Loudness;

use std::io::{Read, Seek, SeekFrom, Write};

use crate::TranscodeError;
use crate::ogg_pages::{Page, pages, reseal};

const GAIN: &str = "REPLAYGAIN_TRACK_GAIN";
const PEAK: &str = "REPLAYGAIN_TRACK_PEAK";
const GAIN_PLACEHOLDER: &str = "+00.00 dB";
const PEAK_PLACEHOLDER: &str = "0.000000";

/// The comments to put in every rendition's header before encoding.
pub fn placeholders() -> Vec<(&'static str, String)> {
    vec![
        (GAIN, GAIN_PLACEHOLDER.to_owned()),
        (PEAK, PEAK_PLACEHOLDER.to_owned()),
        ("REPLAYGAIN_REFERENCE_LOUDNESS", "-14.00 LUFS".to_owned()),
    ]
}

fn gain_text(db: f64) -> String {
    format!("{:+06.2} dB", db.clamp(-99.99, 99.99))
}

fn peak_text(dbtp: f64) -> String {
    let linear = if dbtp.is_finite() {
        10f64.powf(dbtp / 20.0)
    } else {
        0.0
    };
    format!("{:.6}", linear.clamp(0.0, 9.999_999))
}

/// Writes the measured values over the placeholders of the Ogg file `file`, whose pages are
/// `all`: only its first pages (the headers) are read and rewritten.
pub fn patch_file<F: Read + Write + Seek>(
    file: &mut F,
    all: &[Page],
    loudness: &Loudness,
) -> Result<(), TranscodeError> {
    let end = all
        .iter()
        .take(3)
        .map(|p| p.offset + p.len)
        .max()
        .unwrap_or(0);
    let mut head = vec![0u8; end];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut head)?;
    patch(&mut head, loudness)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&head)?;
    file.flush()?;
    Ok(())
}

/// Writes the measured values over the placeholders of `ogg`.
pub fn patch(ogg: &mut [u8], loudness: &Loudness) -> Result<(), TranscodeError> {
    let all = pages(ogg).map_err(|e| TranscodeError::Encode(e.to_string()))?;
    for (tag, placeholder, value) in [
        (GAIN, GAIN_PLACEHOLDER, gain_text(loudness.track_gain_db)),
        (PEAK, PEAK_PLACEHOLDER, peak_text(loudness.true_peak_dbtp)),
    ] {
        debug_assert_eq!(placeholder.len(), value.len());
        let needle = format!("{tag}={placeholder}");
        // The comment header is in the first pages; look no further than the first three.
        let page = all
            .iter()
            .take(3)
            .find_map(|p| {
                let bytes = &ogg[p.offset..p.offset + p.len];
                bytes
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                    .map(|at| (*p, p.offset + at + tag.len() + 1))
            })
            .ok_or_else(|| TranscodeError::Encode(format!("{tag} placeholder not found")))?;
        let (page, at) = page;
        ogg[at..at + value.len()].copy_from_slice(value.as_bytes());
        reseal(ogg, page);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_the_placeholders_width() {
        for db in [0.0, 5.234, -12.4, -120.0, 250.0] {
            assert_eq!(gain_text(db).len(), GAIN_PLACEHOLDER.len(), "{db}");
        }
        assert_eq!(gain_text(-5.0), "-05.00 dB");
        for dbtp in [0.0, -1.0, 3.0, 40.0, f64::NEG_INFINITY] {
            assert_eq!(peak_text(dbtp).len(), PEAK_PLACEHOLDER.len(), "{dbtp}");
        }
        assert_eq!(peak_text(0.0), "1.000000");
    }
}
