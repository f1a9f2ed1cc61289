//! Ogg Vorbis encoding with libvorbis (aoTuV) through `vorbis_rs`, one encoder per tier.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::num::{NonZeroU8, NonZeroU32};

use cadenza_common::Quality;
use vorbis_rs::{VorbisBitrateManagementStrategy, VorbisEncoder, VorbisEncoderBuilder};

use crate::TranscodeError;

/// The sample rate every rendition is encoded at.
pub const OUTPUT_RATE: u32 = 44_100;

/// How libvorbis holds each tier to its nominal bitrate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BitrateMode {
    /// Unmanaged VBR at the quality libvorbis associates with the nominal bitrate: the
    /// mean bitrate follows the music's difficulty.
    #[default]
    Vbr,
    /// Managed average bitrate: the bitrate engine holds the mean at the nominal rate.
    Abr,
}

impl std::str::FromStr for BitrateMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vbr" => Ok(Self::Vbr),
            "abr" => Ok(Self::Abr),
            _ => Err(format!("unknown bitrate mode {s:?}: use vbr or abr")),
        }
    }
}

/// One tier's encoder writing its Ogg file to disk.
pub struct TierEncoder {
    quality: Quality,
    encoder: VorbisEncoder<BufWriter<File>>,
}

impl std::fmt::Debug for TierEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TierEncoder({:?})", self.quality)
    }
}

fn encoder_error(quality: Quality, e: vorbis_rs::VorbisError) -> TranscodeError {
    TranscodeError::Encode(format!("{} kbps: {e}", quality.kbps()))
}

impl TierEncoder {
    /// A stereo 44.1 kHz encoder for `quality`, with a fixed Ogg stream serial so that the
    /// same input always gives the same bytes, and the given Vorbis comments.
    pub fn new(
        quality: Quality,
        serial: i32,
        mode: BitrateMode,
        comments: &[(&str, String)],
        sink: File,
    ) -> Result<Self, TranscodeError> {
        let rate =
            NonZeroU32::new(OUTPUT_RATE).ok_or_else(|| TranscodeError::Encode("rate".into()))?;
        let channels =
            NonZeroU8::new(2).ok_or_else(|| TranscodeError::Encode("channels".into()))?;
        let bitrate = NonZeroU32::new(quality.kbps() * 1000)
            .ok_or_else(|| TranscodeError::Encode("bitrate".into()))?;
        let mut builder = VorbisEncoderBuilder::new_with_serial(
            rate,
            channels,
            BufWriter::with_capacity(256 * 1024, sink),
            serial,
        );
        builder.bitrate_management_strategy(match mode {
            BitrateMode::Vbr => VorbisBitrateManagementStrategy::Vbr {
                target_bitrate: bitrate,
            },
            BitrateMode::Abr => VorbisBitrateManagementStrategy::Abr {
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

    /// Ends the stream and returns the Ogg file, flushed.
    pub fn finish(self) -> Result<File, TranscodeError> {
        let quality = self.quality;
        let mut sink = self
            .encoder
            .finish()
            .map_err(|e| encoder_error(quality, e))?;
        sink.flush()?;
        sink.into_inner()
            .map_err(|e| TranscodeError::Io(e.into_error()))
    }
}
