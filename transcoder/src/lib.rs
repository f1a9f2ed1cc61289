//! The transcoder: a master in, three encrypted Ogg Vorbis renditions out.
//!
//! [`transcode`] decodes a master once with symphonia (refusing damaged or out-of-bounds
//! files with a reason), folds it to stereo, resamples it to 44.1 kHz and feeds the same
//! blocks to one libvorbis encoder per tier (96/160/320 kbps). [`seal`] encrypts a rendition
//! under a fresh AES-128-CTR key and names it by the hash of its encrypted bytes. The
//! [`worker`] leases jobs from the control plane, fetches masters from the origin and stores
//! the renditions there. Nothing here listens on a port.

mod decode;
mod encode;
mod features;
mod fit;
mod loudness;
mod mix;
mod ogg_pages;
mod pipeline;
mod resample;
mod seek;
mod spool;
mod tags;
pub mod worker;

pub use decode::{DecodeLimits, Layout, MasterDecoder, MasterFormat};
pub use encode::{BitrateMode, OUTPUT_RATE};
pub use features::FeatureMeter;
pub use loudness::{PEAK_CEILING_DBTP, TARGET_LUFS, track_gain};
pub use ogg_pages::OggError;
pub use pipeline::{
    PlainRendition, SealedRendition, TranscodeOptions, Transcoded, seal, transcode,
};
pub use resample::Resampler;
pub use seek::build as build_seek_index;
pub use spool::SpoolFile;

/// Why a transcode did not produce renditions.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The master is unusable; the reason is for the label. Retrying cannot help.
    #[error("master refused: {0}")]
    Refused(String),
    /// Reading the master or writing output failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// libvorbis refused the configuration or failed.
    #[error("encoder error: {0}")]
    Encode(String),
}

impl TranscodeError {
    /// Whether another attempt cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}
