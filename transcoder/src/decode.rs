//! Master decoding with symphonia: any supported container and codec in, planar `f32` blocks
//! out, with the limits that keep a hostile file from costing more than a real one.

use std::fs::File;
use std::path::Path;

use symphonia::core::audio::{Channels, GenericAudioBufferRef};
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::common::Limit;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, SeekMode, SeekTo, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

use crate::TranscodeError;

/// Bounds on what a master may be.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Longest accepted duration, seconds.
    pub max_duration_secs: u64,
    /// Lowest and highest accepted sample rates, Hz.
    pub sample_rate: (u32, u32),
    /// Most channels accepted.
    pub max_channels: usize,
    /// Decoded PCM (as 32-bit samples) may be at most this many times the file's size, once
    /// past `expansion_floor_bytes`: real music compresses a few times, a "decode bomb" of
    /// silence thousands of times.
    pub max_expansion: u64,
    /// Decoded bytes allowed before the expansion ratio is enforced.
    pub expansion_floor_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_duration_secs: 2 * 60 * 60,
            sample_rate: (8_000, 384_000),
            max_channels: 8,
            max_expansion: 1000,
            expansion_floor_bytes: 64 << 20,
        }
    }
}

/// What the master is, learnt from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterFormat {
    pub sample_rate: u32,
    pub channels: Layout,
    /// Frame count the container declares, when it declares one.
    pub declared_frames: Option<u64>,
}

/// Channel layout: where each decoded plane sits, as symphonia position bits (in plane order),
/// or `None` per plane for unpositioned channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of planes.
    pub count: usize,
    /// Position bitmask (symphonia `Position` bits), 0 when the channels are unpositioned.
    pub positions: u64,
}

/// What a decoded plane carries, as far as fold-down and loudness metering care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The only channel of a mono master.
    Mono,
    /// Front left (and left-centre, left wide).
    Left,
    /// Front right (and right-centre, right wide).
    Right,
    /// Front centre.
    Centre,
    /// Low-frequency effects.
    Lfe,
    /// Rear or side left.
    LeftSurround,
    /// Rear or side right.
    RightSurround,
    /// Rear centre, heights, and unpositioned channels past the first two.
    Other,
}

impl Layout {
    /// The role of each plane, in plane order. This is the one place symphonia's position
    /// bits are interpreted.
    pub fn speakers(&self) -> Vec<Speaker> {
        if self.count == 1 {
            return vec![Speaker::Mono];
        }
        if self.positions == 0 {
            // Unpositioned: the first two are taken as left and right.
            return (0..self.count)
                .map(|i| match i {
                    0 => Speaker::Left,
                    1 => Speaker::Right,
                    _ => Speaker::Other,
                })
                .collect();
        }
        (0..64)
            .filter(|bit| self.positions & (1u64 << bit) != 0)
            .map(|bit| match bit {
                0 | 6 | 24 => Speaker::Left,
                1 | 7 | 25 => Speaker::Right,
                2 => Speaker::Centre,
                3 | 12 => Speaker::Lfe,
                4 | 9 => Speaker::LeftSurround,
                5 | 10 => Speaker::RightSurround,
                _ => Speaker::Other,
            })
            .collect()
    }
}

/// A decoder over one master, yielding planar blocks.
pub struct MasterDecoder {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    info: MasterFormat,
    max_frames: u64,
    /// Decoded bytes (32-bit samples) beyond which the file is a decode bomb.
    max_decoded_bytes: u64,
    decoded_frames: u64,
    finished: bool,
    /// Why the decoder can no longer be trusted (it panicked); every later call says so.
    broken: Option<String>,
}

impl std::fmt::Debug for MasterDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterDecoder({:?})", self.info)
    }
}

fn refused(reason: impl Into<String>) -> TranscodeError {
    TranscodeError::Refused(reason.into())
}

/// Runs `f`; a panic inside it (symphonia's, on a file it does not expect: the `master` fuzz
/// target found a WAV header whose channel count overflows its arithmetic) comes back as the
/// reason to refuse the master with, rather than ending the worker's task and having the same
/// file retried.
fn catch_decoder_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        format!("the decoder failed on this file while {what} ({why})")
    })
}

fn describe(e: SymError) -> String {
    match e {
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends in the middle of the audio (truncated)".to_owned()
        }
        other => other.to_string(),
    }
}

impl MasterDecoder {
    /// Opens a master file and checks its format against `limits`.
    pub fn open(path: &Path, limits: &DecodeLimits) -> Result<Self, TranscodeError> {
        let file = File::open(path).map_err(TranscodeError::Io)?;
        let file_len = file.metadata().map_err(TranscodeError::Io)?.len();
        let ext = path.extension().and_then(|e| e.to_str());
        Self::open_source(Box::new(file), file_len, ext, limits)
    }

    /// The same over a master held in memory (`ext` as a file name's would be, a hint only):
    /// what the fuzz targets in `fuzz/` feed arbitrary bytes through.
    pub fn open_bytes(
        bytes: Vec<u8>,
        ext: Option<&str>,
        limits: &DecodeLimits,
    ) -> Result<Self, TranscodeError> {
        let len = bytes.len() as u64;
        Self::open_source(Box::new(std::io::Cursor::new(bytes)), len, ext, limits)
    }

    fn open_source(
        source: Box<dyn MediaSource>,
        file_len: u64,
        ext: Option<&str>,
        limits: &DecodeLimits,
    ) -> Result<Self, TranscodeError> {
        catch_decoder_panic("reading its headers", || {
            Self::open_unguarded(source, file_len, ext, limits)
        })
        .unwrap_or_else(|reason| Err(refused(reason)))
    }

    fn open_unguarded(
        source: Box<dyn MediaSource>,
        file_len: u64,
        ext: Option<&str>,
        limits: &DecodeLimits,
    ) -> Result<Self, TranscodeError> {
        let mss = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = ext {
            hint.with_extension(ext);
        }
        // Artwork and tags are not needed to transcode; bounding them keeps a master with a
        // huge embedded picture from costing memory.
        let mut meta_opts = MetadataOptions::default();
        meta_opts.limit_tag_bytes = Limit::Maximum(1 << 20);
        meta_opts.limit_visual_bytes = Limit::Maximum(16 << 20);
        let format = symphonia::default::get_probe()
            .probe(&hint, mss, FormatOptions::default(), meta_opts)
            .map_err(|e| match e {
                SymError::IoError(_) => refused("the file's headers are damaged or cut short"),
                other => refused(format!("not a supported audio file: {other}")),
            })?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| refused("the file holds no audio track"))?;
        let track_id = track.id;
        let declared_frames = track.num_frames;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| refused("the audio track has no codec parameters"))?
            .clone();
        let sample_rate = params
            .sample_rate
            .ok_or_else(|| refused("the header gives no sample rate"))?;
        let (lo, hi) = limits.sample_rate;
        if !(lo..=hi).contains(&sample_rate) {
            return Err(refused(format!(
                "sample rate {sample_rate} Hz is outside {lo}–{hi} Hz"
            )));
        }
        let channels = params
            .channels
            .as_ref()
            .ok_or_else(|| refused("the header gives no channel layout"))?;
        let layout = layout_of(channels);
        if layout.count == 0 || layout.count > limits.max_channels {
            return Err(refused(format!(
                "{} channels; between 1 and {} are accepted",
                layout.count, limits.max_channels
            )));
        }
        let max_frames = limits.max_duration_secs * u64::from(sample_rate);
        if let Some(n) = declared_frames
            && n > max_frames
        {
            return Err(refused(format!(
                "declared duration {} s is over the {} s limit",
                n / u64::from(sample_rate),
                limits.max_duration_secs
            )));
        }
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default().verify(true))
            .map_err(|e| refused(format!("unsupported codec: {}", describe(e))))?;
        Ok(Self {
            format,
            decoder,
            track_id,
            info: MasterFormat {
                sample_rate,
                channels: layout,
                declared_frames,
            },
            max_frames,
            max_decoded_bytes: file_len
                .saturating_mul(limits.max_expansion)
                .max(limits.expansion_floor_bytes),
            decoded_frames: 0,
            finished: false,
            broken: None,
        })
    }

    /// The master's format.
    pub fn format(&self) -> MasterFormat {
        self.info
    }

    /// Frames decoded so far.
    pub fn decoded_frames(&self) -> u64 {
        self.decoded_frames
    }

    /// Moves to about `frame` (at or before it, where the container allows), for sampling
    /// parts of the master. The integrity checks at the end no longer apply after a seek.
    pub fn seek(&mut self, frame: u64) -> Result<(), TranscodeError> {
        self.guard("seeking", |d| d.seek_unguarded(frame))
    }

    fn seek_unguarded(&mut self, frame: u64) -> Result<(), TranscodeError> {
        let ts = i64::try_from(frame).map_err(|_| refused("seek position out of range"))?;
        self.format
            .seek(
                SeekMode::Coarse,
                SeekTo::Timestamp {
                    ts: ts.into(),
                    track_id: self.track_id,
                },
            )
            .map_err(|e| refused(format!("cannot seek in the master: {}", describe(e))))?;
        self.decoder.reset();
        Ok(())
    }

    /// Decodes the next block into `planes` (one `Vec` per channel, replaced), returning the
    /// frame count, or `Ok(0)` at the end after every integrity check has passed.
    pub fn next_block(&mut self, planes: &mut Vec<Vec<f32>>) -> Result<usize, TranscodeError> {
        self.guard("decoding", |d| d.next_block_unguarded(planes))
    }

    /// Runs `f`, turning a panic inside symphonia into a refusal of the master, for this call
    /// and every later one (its state is not to be trusted after).
    fn guard<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Self) -> Result<T, TranscodeError>,
    ) -> Result<T, TranscodeError> {
        if let Some(reason) = &self.broken {
            return Err(refused(reason.clone()));
        }
        catch_decoder_panic(what, || f(self)).unwrap_or_else(|reason| {
            self.broken = Some(reason.clone());
            Err(refused(reason))
        })
    }

    fn next_block_unguarded(
        &mut self,
        planes: &mut Vec<Vec<f32>>,
    ) -> Result<usize, TranscodeError> {
        loop {
            if self.finished {
                return Ok(0);
            }
            let packet = match self.format.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => return self.finish().map(|()| 0),
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return self.finish().map(|()| 0);
                }
                Err(e) => {
                    return Err(refused(format!(
                        "the container is damaged: {}",
                        describe(e)
                    )));
                }
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let buf = self
                .decoder
                .decode(&packet)
                .map_err(|e| refused(format!("the audio is damaged: {}", describe(e))))?;
            if buf.frames() == 0 {
                continue;
            }
            if buf.num_planes() != self.info.channels.count {
                return Err(refused("the channel count changes mid-stream"));
            }
            if buf.spec().rate() != self.info.sample_rate {
                return Err(refused("the sample rate changes mid-stream"));
            }
            let frames = buf.frames();
            copy_planar(&buf, planes);
            self.decoded_frames += frames as u64;
            if self.decoded_frames > self.max_frames {
                return Err(refused(format!(
                    "the audio runs past the {} s limit",
                    self.max_frames / u64::from(self.info.sample_rate)
                )));
            }
            let decoded_bytes = self.decoded_frames * self.info.channels.count as u64 * 4;
            if decoded_bytes > self.max_decoded_bytes {
                return Err(refused(format!(
                    "the file decodes to over {} MB of audio, far more than its size allows (a decode bomb?)",
                    decoded_bytes >> 20
                )));
            }
            return Ok(frames);
        }
    }

    fn finish(&mut self) -> Result<(), TranscodeError> {
        self.finished = true;
        if self.decoder.finalize().verify_ok == Some(false) {
            return Err(refused(
                "the decoded audio does not match the checksum in the file (MD5 mismatch)",
            ));
        }
        if self.decoded_frames == 0 {
            return Err(refused("the file holds no audio"));
        }
        // For lossless codecs a count that differs from the header's means lost or invented
        // audio. Lossy codecs (AAC, MP3, Vorbis) legitimately decode encoder priming and
        // padding beyond the declared length, so the check does not apply to them.
        let short_name = self.decoder.codec_info().short_name;
        let lossless = matches!(short_name, "flac" | "alac") || short_name.starts_with("pcm");
        if let Some(declared) = self.info.declared_frames
            && lossless
            && declared != self.decoded_frames
        {
            return Err(refused(format!(
                "the header declares {declared} frames but {} decode",
                self.decoded_frames
            )));
        }
        Ok(())
    }
}

fn copy_planar(buf: &GenericAudioBufferRef<'_>, planes: &mut Vec<Vec<f32>>) {
    buf.copy_to_vecs_planar::<f32>(planes);
}

fn layout_of(channels: &Channels) -> Layout {
    match channels {
        Channels::Positioned(p) => Layout {
            count: p.bits().count_ones() as usize,
            positions: p.bits(),
        },
        other => Layout {
            count: other.count(),
            positions: 0,
        },
    }
}
