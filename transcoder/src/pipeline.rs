//! Decode once, fold, resample, encode three tiers; then seal each rendition.

use std::path::Path;

use cadenza_common::{ContentKey, FileId, Quality, RenditionRecord, hex_encode};
use ring::digest::{SHA256, digest};

use crate::TranscodeError;
use crate::decode::{DecodeLimits, MasterDecoder, MasterFormat};
use crate::encode::{OUTPUT_RATE, TierEncoder};
use crate::mix::Downmix;
use crate::resample::Resampler;

/// How to transcode.
#[derive(Debug, Clone, Default)]
pub struct TranscodeOptions {
    /// Bounds on the master.
    pub limits: DecodeLimits,
    /// Seed for the Ogg stream serials, so one master always gives the same bytes.
    pub serial_seed: u32,
    /// Vorbis comments written into every rendition (TITLE, ARTIST, ISRC…).
    pub comments: Vec<(&'static str, String)>,
}

/// A rendition before encryption.
#[derive(Debug, Clone)]
pub struct PlainRendition {
    pub quality: Quality,
    /// The Ogg Vorbis file.
    pub ogg: Vec<u8>,
    /// Mean bitrate of the file over its duration, kbit/s.
    pub bitrate_kbps: u32,
}

/// The result of a transcode.
#[derive(Debug, Clone)]
pub struct Transcoded {
    pub master: MasterFormat,
    /// Frames decoded from the master, at its own rate.
    pub master_frames: u64,
    /// Frames in every rendition, at 44.1 kHz.
    pub output_frames: u64,
    /// Renditions, lowest tier first.
    pub renditions: Vec<PlainRendition>,
}

/// Transcodes the master at `path` into every tier. Blocking: run it on a blocking thread.
pub fn transcode(path: &Path, options: &TranscodeOptions) -> Result<Transcoded, TranscodeError> {
    let mut decoder = MasterDecoder::open(path, &options.limits)?;
    let master = decoder.format();
    let downmix = Downmix::for_layout(master.channels);
    let mut resampler = (master.sample_rate != OUTPUT_RATE)
        .then(|| Resampler::new(master.sample_rate, OUTPUT_RATE, 2));
    let mut encoders = Quality::ALL
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let serial = (options.serial_seed ^ (i as u32 + 1)) as i32;
            TierEncoder::new(q, serial, &options.comments)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut planes = Vec::new();
    let (mut left, mut right) = (Vec::new(), Vec::new());
    let mut resampled = vec![Vec::new(), Vec::new()];
    let mut output_frames = 0u64;
    let mut emit =
        |stereo: &mut [Vec<f32>], encoders: &mut [TierEncoder]| -> Result<(), TranscodeError> {
            output_frames += stereo[0].len() as u64;
            for enc in encoders.iter_mut() {
                enc.encode(&stereo[0], &stereo[1])?;
            }
            stereo.iter_mut().for_each(Vec::clear);
            Ok(())
        };
    while decoder.next_block(&mut planes)? > 0 {
        downmix.apply(&planes, &mut left, &mut right);
        match resampler.as_mut() {
            Some(r) => r.process(
                &[std::mem::take(&mut left), std::mem::take(&mut right)],
                &mut resampled,
            ),
            None => {
                resampled[0].append(&mut left);
                resampled[1].append(&mut right);
            }
        }
        emit(&mut resampled, &mut encoders)?;
    }
    if let Some(r) = resampler.as_mut() {
        r.finish(&mut resampled);
        emit(&mut resampled, &mut encoders)?;
    }
    let master_frames = decoder.decoded_frames();
    let seconds = output_frames as f64 / f64::from(OUTPUT_RATE);
    let renditions = encoders
        .into_iter()
        .map(|enc| {
            let quality = enc.quality();
            let ogg = enc.finish()?;
            let bitrate_kbps = if seconds > 0.0 {
                (ogg.len() as f64 * 8.0 / seconds / 1000.0).round() as u32
            } else {
                0
            };
            Ok(PlainRendition {
                quality,
                ogg,
                bitrate_kbps,
            })
        })
        .collect::<Result<Vec<_>, TranscodeError>>()?;
    Ok(Transcoded {
        master,
        master_frames,
        output_frames,
        renditions,
    })
}

/// A rendition encrypted and named, ready to store.
#[derive(Debug, Clone)]
pub struct SealedRendition {
    /// What the control plane records.
    pub record: RenditionRecord,
    /// The encrypted file.
    pub bytes: Vec<u8>,
}

/// Encrypts a rendition under a fresh random key and IV and names it by content.
pub fn seal(plain: &PlainRendition) -> SealedRendition {
    let key = ContentKey::random();
    let plaintext_sha256 = hex_encode(digest(&SHA256, &plain.ogg).as_ref());
    let mut bytes = plain.ogg.clone();
    key.apply_at(0, &mut bytes);
    let file_id = FileId::from_bytes(digest(&SHA256, &bytes).as_ref());
    SealedRendition {
        record: RenditionRecord {
            quality: plain.quality,
            file_id,
            size: bytes.len() as u64,
            bitrate_kbps: plain.bitrate_kbps,
            key,
            plaintext_sha256,
        },
        bytes,
    }
}
