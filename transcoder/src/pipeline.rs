//! Decode once, fold, resample, encode three tiers; then seal each rendition.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use cadenza_common::{
    AcousticFeatures, ContentKey, FileId, Loudness, Quality, RenditionRecord, SeekIndex, hex_encode,
};
use ring::digest::{Context, SHA256};

use crate::TranscodeError;
use crate::decode::{DecodeLimits, MasterDecoder, MasterFormat};
use crate::encode::{BitrateMode, OUTPUT_RATE, Setting, TierEncoder};
use crate::features::FeatureMeter;
use crate::fit::{self, Block, Excerpt};
use crate::loudness::Meter;
use crate::mix::Downmix;
use crate::ogg_pages::pages_in;
use crate::resample::Resampler;
use crate::spool::SpoolFile;

/// How to transcode.
#[derive(Debug, Clone, Default)]
pub struct TranscodeOptions {
    /// Bounds on the master.
    pub limits: DecodeLimits,
    /// Seed for the Ogg stream serials, so one master always gives the same bytes.
    pub serial_seed: u32,
    /// How each tier is held to its nominal bitrate.
    pub bitrate_mode: BitrateMode,
    /// Vorbis comments written into every rendition (TITLE, ARTIST, ISRC…).
    pub comments: Vec<(&'static str, String)>,
    /// Where renditions are spooled while they are made (the system's temporary directory
    /// when `None`). They are files from the first byte, so memory does not grow with the
    /// track's length.
    pub spool_dir: Option<PathBuf>,
}

/// A rendition before encryption, in a spool file that is removed when this is dropped.
#[derive(Debug)]
pub struct PlainRendition {
    pub quality: Quality,
    /// The Ogg Vorbis file.
    pub file: SpoolFile,
    /// Its length in bytes.
    pub size: u64,
    /// Mean bitrate of the file over its duration, kbit/s.
    pub bitrate_kbps: u32,
    /// The libvorbis quality it was encoded at (unmanaged VBR at a chosen quality).
    pub vorbis_quality: Option<f32>,
    /// Whole-track encodes this tier took (2 when the fitted quality was corrected).
    pub encodes: u32,
    /// Where to read from for a given time.
    pub seek_index: SeekIndex,
}

impl PlainRendition {
    /// Where the Ogg file is.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The whole Ogg file (for tools and tests).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        self.file.read()
    }
}

/// The result of a transcode.
#[derive(Debug)]
pub struct Transcoded {
    pub master: MasterFormat,
    /// Frames decoded from the master, at its own rate.
    pub master_frames: u64,
    /// Frames in every rendition, at 44.1 kHz.
    pub output_frames: u64,
    /// EBU R128 loudness of the master and the gain toward the target.
    pub loudness: Loudness,
    /// Acoustic features for recommendations.
    pub features: AcousticFeatures,
    /// Renditions, lowest tier first.
    pub renditions: Vec<PlainRendition>,
}

/// Entries in each rendition's seek index.
const SEEK_POINTS: usize = 100;

/// Blocks queued per encoder before the decoder waits: bounds memory whatever the length.
const QUEUE_BLOCKS: usize = 64;

/// Transcodes the master at `path` into every tier. Blocking: run it on a blocking thread.
///
/// The master is decoded, folded and resampled once on the calling thread; each tier's
/// encoder runs on its own thread fed through a bounded queue, so the tiers encode in
/// parallel and memory does not grow with the track's length. In the fitted mode the first
/// seconds are held while each tier's quality is fitted on them, and a tier whose mean
/// still misses its nominal bitrate is encoded once more from a second decode.
pub fn transcode(path: &Path, options: &TranscodeOptions) -> Result<Transcoded, TranscodeError> {
    let mut source = Stereo::open(path, &options.limits)?;
    let master = source.decoder.format();
    let spool = options.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut comments = options.comments.clone();
    comments.extend(crate::tags::placeholders());
    let mut analysis = Analysis {
        meter: Meter::new(master.channels, master.sample_rate)?,
        features: FeatureMeter::default(),
    };
    let serial = |i: usize| (options.serial_seed ^ (i as u32 + 1)) as i32;

    let mode = options.bitrate_mode;
    let settings = match mode {
        BitrateMode::Fitted => {
            let started = std::time::Instant::now();
            let excerpt = excerpt_of(path, &options.limits)?;
            let qualities = excerpt.fit(&Quality::ALL, &comments)?;
            tracing::debug!(
                ?qualities,
                seconds = started.elapsed().as_secs_f64(),
                audible_frames = excerpt.audible_frames(),
                "fitted"
            );
            qualities
                .into_iter()
                .map(|f| (Setting::Quality(f.quality), Some(f)))
                .collect()
        }
        BitrateMode::Vbr => vec![(Setting::Vbr, None); Quality::ALL.len()],
        BitrateMode::Abr => vec![(Setting::Abr, None); Quality::ALL.len()],
    };
    let tiers: Vec<Tier> = Quality::ALL
        .iter()
        .zip(settings)
        .enumerate()
        .map(|(i, (&quality, (setting, fitted)))| Tier {
            quality,
            serial: serial(i),
            setting,
            fitted,
            passes: 1,
        })
        .collect();
    let pass = Pass {
        tiers: &tiers,
        comments: &comments,
        spool: &spool,
    };
    let started = std::time::Instant::now();
    let (output_frames, outputs) = pass.run(&mut source, Some(&mut analysis))?;
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "first pass");
    let master_frames = source.decoder.decoded_frames();
    drop(source);
    let seconds = output_frames as f64 / f64::from(OUTPUT_RATE);
    let mean_rate = |file: &File| -> Result<f64, TranscodeError> {
        let bytes = file.metadata()?.len();
        Ok(if seconds > 0.0 {
            bytes as f64 * 8.0 / seconds
        } else {
            0.0
        })
    };
    let mut encoded = Vec::with_capacity(tiers.len());
    for (tier, output) in tiers.iter().zip(outputs) {
        let rate = mean_rate(&output.1)?;
        encoded.push((tier.clone(), output, rate));
    }

    // A fitted tier whose whole-track mean misses is encoded again at a quality steered
    // from the whole-track point; the closer of the two encodes is kept.
    if mode == BitrateMode::Fitted {
        let retry: Vec<(usize, Tier)> = encoded
            .iter()
            .enumerate()
            .filter_map(|(i, (tier, _, rate))| {
                let target = f64::from(tier.quality.kbps()) * 1000.0;
                let fitted = tier.fitted?;
                if fit::within(*rate, target, fit::TRACK_TOLERANCE) {
                    return None;
                }
                let next = fit::corrected(fitted, *rate, target);
                ((next - fitted.quality).abs() >= 1e-3).then(|| {
                    let mut again = tier.clone();
                    again.setting = Setting::Quality(next);
                    again.passes += 1;
                    (i, again)
                })
            })
            .collect();
        if !retry.is_empty() {
            let started = std::time::Instant::now();
            let again: Vec<Tier> = retry.iter().map(|(_, t)| t.clone()).collect();
            let pass = Pass {
                tiers: &again,
                ..pass
            };
            let mut source = Stereo::open(path, &options.limits)?;
            let (frames, outputs) = pass.run(&mut source, None)?;
            if frames != output_frames {
                return Err(TranscodeError::Encode(format!(
                    "the second decode gave {frames} frames, the first {output_frames}"
                )));
            }
            for ((i, tier), output) in retry.into_iter().zip(outputs) {
                let rate = mean_rate(&output.1)?;
                tracing::debug!(
                    tier = tier.quality.as_str(),
                    first = encoded[i].2,
                    second = rate,
                    setting = ?tier.setting,
                    seconds = started.elapsed().as_secs_f64(),
                    "second pass"
                );
                let target = f64::from(tier.quality.kbps()) * 1000.0;
                if (rate - target).abs() < (encoded[i].2 - target).abs() {
                    encoded[i] = (tier, output, rate);
                } else {
                    encoded[i].0.passes = tier.passes;
                }
            }
        }
    }

    let loudness = analysis.meter.finish()?;
    let renditions = encoded
        .into_iter()
        .map(|(tier, (spooled, mut file), rate)| {
            let quality = tier.quality;
            let size = file.metadata()?.len();
            file.seek(SeekFrom::Start(0))?;
            let ogg_error =
                |e: crate::OggError| TranscodeError::Encode(format!("{}: {e}", quality.as_str()));
            let pages = pages_in(&mut BufReader::with_capacity(256 * 1024, &mut file))
                .map_err(ogg_error)?;
            crate::tags::patch_file(&mut file, &pages, &loudness)?;
            let seek_index = crate::seek::from_pages(&pages, size, SEEK_POINTS);
            // Gapless: the last granule position must be the resampled length exactly.
            if seek_index.frames != output_frames {
                return Err(TranscodeError::Encode(format!(
                    "{}: the stream ends at frame {} but {output_frames} were encoded",
                    quality.as_str(),
                    seek_index.frames
                )));
            }
            Ok(PlainRendition {
                quality,
                file: spooled,
                size,
                bitrate_kbps: (rate / 1000.0).round() as u32,
                vorbis_quality: match tier.setting {
                    Setting::Quality(q) => Some(q),
                    Setting::Vbr | Setting::Abr => None,
                },
                encodes: tier.passes,
                seek_index,
            })
        })
        .collect::<Result<Vec<_>, TranscodeError>>()?;
    Ok(Transcoded {
        master,
        master_frames,
        output_frames,
        loudness,
        features: analysis.features.finish(),
        renditions,
    })
}

/// One tier's encoder configuration.
#[derive(Debug, Clone)]
struct Tier {
    quality: Quality,
    serial: i32,
    setting: Setting,
    /// What the fitting found, in the fitted mode.
    fitted: Option<fit::Fitted>,
    /// Whole-track encodes this tier has had.
    passes: u32,
}

/// What the master's decode measures on the way.
struct Analysis {
    meter: Meter,
    features: FeatureMeter,
}

/// One decode of the master feeding a set of tier encoders.
#[derive(Clone, Copy)]
struct Pass<'a> {
    tiers: &'a [Tier],
    comments: &'a [(&'static str, String)],
    spool: &'a Path,
}

impl Pass<'_> {
    /// Encodes the whole of `source` into every tier, in parallel. Returns the frames
    /// encoded and each tier's spool file, positioned anywhere.
    fn run(
        &self,
        source: &mut Stereo,
        mut analysis: Option<&mut Analysis>,
    ) -> Result<(u64, Vec<(SpoolFile, File)>), TranscodeError> {
        std::thread::scope(|scope| {
            let mut queues = Vec::with_capacity(self.tiers.len());
            let mut workers = Vec::with_capacity(self.tiers.len());
            for tier in self.tiers {
                let (tx, rx) = sync_channel::<Block>(QUEUE_BLOCKS);
                queues.push(tx);
                let (comments, spool) = (self.comments, self.spool);
                // libvorbis state is made and used on the thread that owns it.
                workers.push(
                    scope.spawn(move || -> Result<(SpoolFile, File), TranscodeError> {
                        let (spooled, sink) = SpoolFile::create(spool, tier.quality.as_str())?;
                        let mut encoder = TierEncoder::to_file(
                            tier.quality,
                            tier.serial,
                            tier.setting,
                            comments,
                            sink,
                        )?;
                        for block in rx {
                            encoder.encode(&block[0], &block[1])?;
                        }
                        Ok((spooled, encoder.finish_file()?))
                    }),
                );
            }
            let send = |block: Block, frames: &mut u64| -> Result<(), TranscodeError> {
                *frames += block[0].len() as u64;
                for q in &queues {
                    // A closed queue means its encoder failed; its own error is reported.
                    q.send(block.clone())
                        .map_err(|_| TranscodeError::Encode("an encoder stopped early".into()))?;
                }
                Ok(())
            };
            let mut frames = 0u64;
            let fed = loop {
                match source.next(analysis.as_deref_mut()) {
                    Ok(Some(block)) => {
                        if let Err(e) = send(block, &mut frames) {
                            break Err(e);
                        }
                    }
                    Ok(None) => break Ok(frames),
                    Err(e) => break Err(e),
                }
            };
            drop(queues);
            let outputs: Vec<Result<(SpoolFile, File), TranscodeError>> = workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(TranscodeError::Encode("encoder thread panicked".into()))
                    })
                })
                .collect();
            // A decode error explains an encoder that stopped early, so it is reported first.
            let frames = fed?;
            Ok((frames, outputs.into_iter().collect::<Result<Vec<_>, _>>()?))
        })
    }
}

/// What the quality fitting encodes, read by a decoder of its own: spans spread over a
/// master whose length the header gives, or its start (after any silence) otherwise, or
/// when the container cannot seek.
fn excerpt_of(path: &Path, limits: &DecodeLimits) -> Result<Excerpt, TranscodeError> {
    let mut source = Stereo::open(path, limits)?;
    let master = source.decoder.format();
    let rate = u64::from(master.sample_rate);
    if let Some(frames) = master.declared_frames
        && frames >= u64::from(fit::SPREAD_FROM_SECONDS) * rate
    {
        let span = u64::from(fit::EXCERPT_SECONDS / fit::SPANS) * u64::from(OUTPUT_RATE);
        let mut excerpt = Excerpt::default();
        let mut spread = || -> Result<(), TranscodeError> {
            for i in 0..u64::from(fit::SPANS) {
                source.seek(frames * (2 * i + 1) / (2 * u64::from(fit::SPANS)))?;
                let mut taken = 0;
                while taken < span {
                    let Some(block) = source.next(None)? else {
                        break;
                    };
                    taken += block[0].len() as u64;
                    excerpt.add(block);
                }
            }
            Ok(())
        };
        match spread() {
            Ok(()) => return Ok(excerpt),
            Err(e) => {
                tracing::debug!(error = %e, "cannot sample spans; fitting on the start");
                source = Stereo::open(path, limits)?;
            }
        }
    }
    let mut excerpt = Excerpt::default();
    while !excerpt.is_full() {
        match source.next(None)? {
            Some(block) => excerpt.add(block),
            None => break,
        }
    }
    Ok(excerpt)
}

/// The master as stereo 44.1 kHz blocks: decoded, folded and resampled.
struct Stereo {
    decoder: MasterDecoder,
    downmix: Downmix,
    resampler: Option<Resampler>,
    planes: Vec<Vec<f32>>,
    out: [Vec<f32>; 2],
    ended: bool,
}

impl Stereo {
    fn open(path: &Path, limits: &DecodeLimits) -> Result<Self, TranscodeError> {
        let decoder = MasterDecoder::open(path, limits)?;
        let master = decoder.format();
        let resampler = (master.sample_rate != OUTPUT_RATE)
            .then(|| Resampler::new(master.sample_rate, OUTPUT_RATE, 2))
            .transpose()
            .map_err(TranscodeError::Encode)?;
        Ok(Self {
            decoder,
            downmix: Downmix::for_layout(master.channels),
            resampler,
            planes: Vec::new(),
            out: [Vec::new(), Vec::new()],
            ended: false,
        })
    }

    /// Moves to about `frame` of the master, starting the resampler afresh.
    fn seek(&mut self, frame: u64) -> Result<(), TranscodeError> {
        self.decoder.seek(frame)?;
        let rate = self.decoder.format().sample_rate;
        if self.resampler.is_some() {
            self.resampler =
                Some(Resampler::new(rate, OUTPUT_RATE, 2).map_err(TranscodeError::Encode)?);
        }
        self.out = [Vec::new(), Vec::new()];
        self.ended = false;
        Ok(())
    }

    /// The next block, measured into `analysis` when given; `None` at the end.
    fn next(
        &mut self,
        mut analysis: Option<&mut Analysis>,
    ) -> Result<Option<Block>, TranscodeError> {
        let (mut left, mut right) = (Vec::new(), Vec::new());
        while self.out[0].is_empty() && !self.ended {
            if self.decoder.next_block(&mut self.planes)? == 0 {
                self.ended = true;
                if let Some(r) = self.resampler.as_mut() {
                    r.finish(&mut self.out);
                }
                break;
            }
            if let Some(a) = analysis.as_deref_mut() {
                a.meter.add(&self.planes)?;
            }
            self.downmix.apply(&self.planes, &mut left, &mut right);
            match self.resampler.as_mut() {
                Some(r) => r.process(
                    &[std::mem::take(&mut left), std::mem::take(&mut right)],
                    &mut self.out,
                ),
                None => {
                    self.out[0].append(&mut left);
                    self.out[1].append(&mut right);
                }
            }
        }
        if self.out[0].is_empty() {
            return Ok(None);
        }
        if let Some(a) = analysis {
            a.features.add(&self.out[0], &self.out[1]);
        }
        Ok(Some(Arc::new([
            std::mem::take(&mut self.out[0]),
            std::mem::take(&mut self.out[1]),
        ])))
    }
}

/// A rendition encrypted and named, ready to store, in a spool file removed when this is
/// dropped.
#[derive(Debug)]
pub struct SealedRendition {
    /// What the control plane records.
    pub record: RenditionRecord,
    /// The encrypted file.
    pub file: SpoolFile,
}

impl SealedRendition {
    /// Where the encrypted file is.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The whole encrypted file (for tools and tests).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        self.file.read()
    }
}

/// Bytes encrypted per step while sealing.
const SEAL_CHUNK: usize = 256 * 1024;

/// Encrypts a rendition under a fresh random key and IV into a new spool file beside it, and
/// names it by content; one pass over the file, hashing plaintext and ciphertext as it goes.
pub fn seal(plain: &PlainRendition) -> Result<SealedRendition, TranscodeError> {
    let key = ContentKey::random();
    let dir = plain.path().parent().unwrap_or(Path::new("."));
    let (spooled, out) = SpoolFile::create(dir, &format!("{}-sealed", plain.quality.as_str()))?;
    let mut out = BufWriter::with_capacity(SEAL_CHUNK, out);
    let mut input = File::open(plain.path())?;
    let (mut clear_hash, mut sealed_hash) = (Context::new(&SHA256), Context::new(&SHA256));
    let mut buf = vec![0u8; SEAL_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &mut buf[..n];
        clear_hash.update(chunk);
        key.apply_at(offset, chunk);
        sealed_hash.update(chunk);
        out.write_all(chunk)?;
        offset += n as u64;
    }
    out.flush()?;
    if offset != plain.size {
        return Err(TranscodeError::Encode(format!(
            "{}: the spooled rendition changed size ({} → {offset})",
            plain.quality.as_str(),
            plain.size
        )));
    }
    let file_id = FileId::from_bytes(sealed_hash.finish().as_ref());
    Ok(SealedRendition {
        record: RenditionRecord {
            quality: plain.quality,
            file_id,
            size: offset,
            bitrate_kbps: plain.bitrate_kbps,
            key,
            plaintext_sha256: hex_encode(clear_hash.finish().as_ref()),
            seek_index: plain.seek_index.clone(),
        },
        file: spooled,
    })
}
