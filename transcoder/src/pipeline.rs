//! Decode once, fold, resample, encode three tiers; then seal each rendition.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

use cadenza_common::{
    AcousticFeatures, ContentKey, FileId, Loudness, Quality, RenditionRecord, SeekIndex, hex_encode,
};
use ring::digest::{Context, SHA256};

use crate::TranscodeError;
use crate::decode::{DecodeLimits, MasterDecoder, MasterFormat};
use crate::encode::{BitrateMode, OUTPUT_RATE, TierEncoder};
use crate::features::FeatureMeter;
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

/// Stereo 44.1 kHz frames shared by the tier encoders.
type Block = Arc<[Vec<f32>; 2]>;

/// Blocks queued per encoder before the decoder waits: bounds memory whatever the length.
const QUEUE_BLOCKS: usize = 16;

/// Transcodes the master at `path` into every tier. Blocking: run it on a blocking thread.
///
/// The master is decoded, folded and resampled once on the calling thread; each tier's
/// encoder runs on its own thread fed through a bounded queue, so the tiers encode in
/// parallel and memory does not grow with the track's length.
pub fn transcode(path: &Path, options: &TranscodeOptions) -> Result<Transcoded, TranscodeError> {
    let mut decoder = MasterDecoder::open(path, &options.limits)?;
    let master = decoder.format();
    let spool = options.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut comments = options.comments.clone();
    comments.extend(crate::tags::placeholders());
    let mut meter = Meter::new(master.channels, master.sample_rate)?;
    let mut features = FeatureMeter::default();
    std::thread::scope(|scope| {
        let mut queues = Vec::with_capacity(Quality::ALL.len());
        let mut workers = Vec::with_capacity(Quality::ALL.len());
        for (i, &quality) in Quality::ALL.iter().enumerate() {
            let (tx, rx) = sync_channel::<Block>(QUEUE_BLOCKS);
            queues.push(tx);
            let serial = (options.serial_seed ^ (i as u32 + 1)) as i32;
            let comments = &comments;
            let mode = options.bitrate_mode;
            let spool = &spool;
            // libvorbis state is made and used on the thread that owns it.
            workers.push(
                scope.spawn(move || -> Result<(SpoolFile, File), TranscodeError> {
                    let (spooled, sink) = SpoolFile::create(spool, quality.as_str())?;
                    let mut encoder = TierEncoder::new(quality, serial, mode, comments, sink)?;
                    for block in rx {
                        encoder.encode(&block[0], &block[1])?;
                    }
                    Ok((spooled, encoder.finish()?))
                }),
            );
        }
        let fed = feed(&mut decoder, master, &mut meter, &mut features, &queues);
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
        let output_frames = fed?;
        let loudness = meter.finish()?;
        let seconds = output_frames as f64 / f64::from(OUTPUT_RATE);
        let renditions = Quality::ALL
            .iter()
            .zip(outputs)
            .map(|(&quality, output)| {
                let (spooled, mut file) = output?;
                let size = file.metadata()?.len();
                file.seek(SeekFrom::Start(0))?;
                let ogg_error = |e: crate::OggError| {
                    TranscodeError::Encode(format!("{}: {e}", quality.as_str()))
                };
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
                let bitrate_kbps = if seconds > 0.0 {
                    (size as f64 * 8.0 / seconds / 1000.0).round() as u32
                } else {
                    0
                };
                Ok(PlainRendition {
                    quality,
                    file: spooled,
                    size,
                    bitrate_kbps,
                    seek_index,
                })
            })
            .collect::<Result<Vec<_>, TranscodeError>>()?;
        Ok(Transcoded {
            master,
            master_frames: decoder.decoded_frames(),
            output_frames,
            loudness,
            features: features.finish(),
            renditions,
        })
    })
}

/// Decodes, folds and resamples the whole master, sending every block to every queue.
/// Returns the number of output frames.
fn feed(
    decoder: &mut MasterDecoder,
    master: MasterFormat,
    meter: &mut Meter,
    features: &mut FeatureMeter,
    queues: &[SyncSender<Block>],
) -> Result<u64, TranscodeError> {
    let downmix = Downmix::for_layout(master.channels);
    let mut resampler = (master.sample_rate != OUTPUT_RATE)
        .then(|| Resampler::new(master.sample_rate, OUTPUT_RATE, 2))
        .transpose()
        .map_err(TranscodeError::Encode)?;
    let mut planes = Vec::new();
    let (mut left, mut right) = (Vec::new(), Vec::new());
    let mut resampled = vec![Vec::new(), Vec::new()];
    let mut output_frames = 0u64;
    let mut send = |stereo: &mut Vec<Vec<f32>>| -> Result<(), TranscodeError> {
        if stereo[0].is_empty() {
            return Ok(());
        }
        output_frames += stereo[0].len() as u64;
        features.add(&stereo[0], &stereo[1]);
        let block: Block = Arc::new([
            std::mem::take(&mut stereo[0]),
            std::mem::take(&mut stereo[1]),
        ]);
        for q in queues {
            // A closed queue means its encoder failed; its own error is reported.
            q.send(block.clone())
                .map_err(|_| TranscodeError::Encode("an encoder stopped early".into()))?;
        }
        Ok(())
    };
    while decoder.next_block(&mut planes)? > 0 {
        meter.add(&planes)?;
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
        send(&mut resampled)?;
    }
    if let Some(r) = resampler.as_mut() {
        r.finish(&mut resampled);
        send(&mut resampled)?;
    }
    Ok(output_frames)
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
