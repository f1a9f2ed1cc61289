//! Ogg Vorbis encoding with libvorbis (aoTuV) through `vorbis_rs`, one encoder per tier.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::num::{NonZeroU8, NonZeroU32};

use cadenza_common::Quality;
use vorbis_rs::{VorbisBitrateManagementStrategy, VorbisEncoder, VorbisEncoderBuilder};

use crate::TranscodeError;

/// The sample rate every rendition is encoded at.
pub const OUTPUT_RATE: u32 = 44_100;

/// How each tier is held to its nominal bitrate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BitrateMode {
    /// Unmanaged quality VBR at a quality fitted to this master, so that the mean bitrate
    /// lands near the nominal one: calibrated on an excerpt, verified on the whole track,
    /// and corrected by a second encode of any tier that still misses (see `fit`).
    #[default]
    Fitted,
    /// Unmanaged VBR at the quality libvorbis associates with the nominal bitrate, as
    /// `oggenc -b` does: one pass, and the mean follows the music's difficulty.
    Vbr,
    /// Managed average bitrate: the bitrate engine holds the mean at the nominal rate, at
    /// several times the CPU.
    Abr,
}

impl std::str::FromStr for BitrateMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fitted" => Ok(Self::Fitted),
            "vbr" => Ok(Self::Vbr),
            "abr" => Ok(Self::Abr),
            _ => Err(format!(
                "unknown bitrate mode {s:?}: use fitted, vbr or abr"
            )),
        }
    }
}

/// What one encoder is asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// Unmanaged VBR at this libvorbis quality (−0.1 to 1.0).
    Quality(f32),
    /// Unmanaged VBR at the quality libvorbis maps the tier's nominal bitrate to.
    Vbr,
    /// Managed ABR at the tier's nominal bitrate.
    Abr,
}

/// libvorbis's (aoTuV's) nominal stereo 44.1 kHz bitrate, bit/s, at each tenth of quality
/// from −0.2 to 1.0 (`rate_mapping_44_stereo` per channel, times two).
const NOMINAL_RATES: [f64; 13] = [
    32_000.0, 48_000.0, 64_000.0, 80_000.0, 96_000.0, 112_000.0, 128_000.0, 160_000.0, 192_000.0,
    224_000.0, 256_000.0, 320_000.0, 500_002.0,
];

/// The lowest and highest quality the fitting uses.
pub const QUALITY_RANGE: (f32, f32) = (-0.1, 1.0);

/// The bitrate libvorbis's tables give a quality, bit/s (piecewise linear, as libvorbis
/// interpolates them).
pub fn nominal_rate(quality: f32) -> f64 {
    let x = ((f64::from(quality) + 0.2) * 10.0).clamp(0.0, 12.0);
    let i = (x.floor() as usize).min(11);
    let t = x - i as f64;
    NOMINAL_RATES[i] + (NOMINAL_RATES[i + 1] - NOMINAL_RATES[i]) * t
}

/// The quality whose nominal bitrate is `rate` bit/s (the inverse of [`nominal_rate`]),
/// clamped to [`QUALITY_RANGE`].
pub fn quality_for_rate(rate: f64) -> f32 {
    let (lo, hi) = QUALITY_RANGE;
    let Some(i) = NOMINAL_RATES.windows(2).position(|w| rate < w[1]) else {
        return hi;
    };
    let (a, b) = (NOMINAL_RATES[i], NOMINAL_RATES[i + 1]);
    let x = i as f64 + ((rate - a) / (b - a)).max(0.0);
    ((x / 10.0 - 0.2) as f32).clamp(lo, hi)
}

/// One tier's encoder writing its Ogg file to disk.
pub struct TierEncoder<W: Write = BufWriter<File>> {
    quality: Quality,
    encoder: VorbisEncoder<W>,
}

impl<W: Write> std::fmt::Debug for TierEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TierEncoder({:?})", self.quality)
    }
}

fn encoder_error(quality: Quality, e: vorbis_rs::VorbisError) -> TranscodeError {
    TranscodeError::Encode(format!("{} kbps: {e}", quality.kbps()))
}

impl TierEncoder {
    /// An encoder writing its Ogg file to `file`, buffered.
    pub fn to_file(
        quality: Quality,
        serial: i32,
        setting: Setting,
        comments: &[(&str, String)],
        file: File,
    ) -> Result<Self, TranscodeError> {
        Self::new(
            quality,
            serial,
            setting,
            comments,
            BufWriter::with_capacity(256 * 1024, file),
        )
    }

    /// Ends the stream and returns the Ogg file, flushed.
    pub fn finish_file(self) -> Result<File, TranscodeError> {
        self.finish()?
            .into_inner()
            .map_err(|e| TranscodeError::Io(e.into_error()))
    }
}

impl<W: Write> TierEncoder<W> {
    /// A stereo 44.1 kHz encoder for `quality`, with a fixed Ogg stream serial so that the
    /// same input always gives the same bytes, and the given Vorbis comments.
    pub fn new(
        quality: Quality,
        serial: i32,
        setting: Setting,
        comments: &[(&str, String)],
        sink: W,
    ) -> Result<Self, TranscodeError> {
        let rate =
            NonZeroU32::new(OUTPUT_RATE).ok_or_else(|| TranscodeError::Encode("rate".into()))?;
        let channels =
            NonZeroU8::new(2).ok_or_else(|| TranscodeError::Encode("channels".into()))?;
        let bitrate = NonZeroU32::new(quality.kbps() * 1000)
            .ok_or_else(|| TranscodeError::Encode("bitrate".into()))?;
        let mut builder = VorbisEncoderBuilder::new_with_serial(rate, channels, sink, serial);
        builder.bitrate_management_strategy(match setting {
            Setting::Quality(target_quality) => {
                VorbisBitrateManagementStrategy::QualityVbr { target_quality }
            }
            Setting::Vbr => VorbisBitrateManagementStrategy::Vbr {
                target_bitrate: bitrate,
            },
            Setting::Abr => VorbisBitrateManagementStrategy::Abr {
                average_bitrate: bitrate,
            },
        });
        for (tag, value) in comments {
            builder
                .comment_tag(*tag, value.as_str())
                .map_err(|e| encoder_error(quality, e))?;
        }
        let encoder = builder.build().map_err(|e| encoder_error(quality, e))?;
        Ok(Self { quality, encoder })
    }

    /// Encodes a block of stereo frames.
    pub fn encode(&mut self, left: &[f32], right: &[f32]) -> Result<(), TranscodeError> {
        if left.is_empty() {
            return Ok(());
        }
        self.encoder
            .encode_audio_block([left, right])
            .map_err(|e| encoder_error(self.quality, e))
    }

    /// Ends the stream and returns the sink, flushed.
    pub fn finish(self) -> Result<W, TranscodeError> {
        let quality = self.quality;
        let mut sink = self
            .encoder
            .finish()
            .map_err(|e| encoder_error(quality, e))?;
        sink.flush()?;
        Ok(sink)
    }
}
