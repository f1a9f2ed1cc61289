//! The decoding side: a blocking reader over decrypted chunks, symphonia's Ogg demuxer and
//! Vorbis decoder, and the sink.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

use crate::{PlayError, WavWriter};

/// What decoding found.
#[derive(Debug, Clone, Default)]
pub struct DecodeReport {
    pub sample_rate: u32,
    pub channels: usize,
    /// PCM frames decoded.
    pub frames: u64,
    /// Time from the start of the play to the first decoded frame.
    pub first_audio_at: Option<Duration>,
}

impl DecodeReport {
    /// Decoded duration.
    pub fn duration(&self) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.frames as f64 / f64::from(self.sample_rate))
    }
}

/// A forward-only byte source over chunks arriving on a channel.
struct ChunkReader {
    // symphonia wants a `Sync` source; the lock is only ever taken by the decoding thread.
    rx: Mutex<Receiver<Bytes>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while !self.current.has_remaining() {
            let next = match self.rx.get_mut() {
                Ok(rx) => rx.recv(),
                Err(_) => return Ok(0),
            };
            match next {
                Ok(next) => self.current = next,
                Err(_) => return Ok(0), // sender gone: end of file
            }
        }
        let n = buf.len().min(self.current.remaining());
        self.current.copy_to_slice(&mut buf[..n]);
        Ok(n)
    }
}

impl Seek for ChunkReader {
    fn seek(&mut self, _: SeekFrom) -> std::io::Result<u64> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "stream is forward-only",
        ))
    }
}

impl MediaSource for ChunkReader {
    fn is_seekable(&self) -> bool {
        false
    }
    fn byte_len(&self) -> Option<u64> {
        None
    }
}

fn decode_error(e: impl std::fmt::Display) -> PlayError {
    PlayError::Decode(e.to_string())
}

/// Decodes everything arriving on `rx`, writing a WAV to `wav_out` when given.
pub fn run(
    rx: Receiver<Bytes>,
    wav_out: Option<PathBuf>,
    started: Instant,
) -> Result<DecodeReport, PlayError> {
    let source = ChunkReader {
        rx: Mutex::new(rx),
        current: Bytes::new(),
    };
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("ogg");
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(decode_error)?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| PlayError::Decode("no audio track".into()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| PlayError::Decode("no audio codec parameters".into()))?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(decode_error)?;
    let mut report = DecodeReport {
        sample_rate: params.sample_rate.unwrap_or(0),
        channels: params.channels.as_ref().map_or(0, |c| c.count()),
        ..Default::default()
    };
    let mut wav = match &wav_out {
        Some(path) => Some(WavWriter::create(
            path,
            report.sample_rate,
            u16::try_from(report.channels).unwrap_or(2),
        )?),
        None => None,
    };
    let mut planes: Vec<Vec<f32>> = Vec::new();
    while let Some(packet) = format.next_packet().map_err(decode_error)? {
        if packet.track_id != track_id {
            continue;
        }
        let buf = decoder.decode(&packet).map_err(decode_error)?;
        let frames = buf.frames();
        if frames == 0 {
            continue;
        }
        if report.first_audio_at.is_none() {
            report.first_audio_at = Some(started.elapsed());
        }
        report.frames += frames as u64;
        if let Some(w) = wav.as_mut() {
            buf.copy_to_vecs_planar::<f32>(&mut planes);
            w.write_planar(&planes)?;
        }
    }
    if let Some(w) = wav {
        w.finish()?;
    }
    Ok(report)
}
