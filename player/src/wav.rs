//! A minimal streaming WAV (RIFF, 16-bit PCM) writer.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// Writes interleaved 16-bit PCM, fixing the header sizes on `finish`.
#[derive(Debug)]
pub struct WavWriter {
    out: BufWriter<File>,
    channels: u16,
    data_bytes: u64,
}

impl WavWriter {
    /// Creates `path` for audio at `rate` with `channels`.
    pub fn create(path: &Path, rate: u32, channels: u16) -> std::io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        let block_align = channels * 2;
        out.write_all(b"RIFF")?;
        out.write_all(&0u32.to_le_bytes())?; // patched in finish
        out.write_all(b"WAVEfmt ")?;
        out.write_all(&16u32.to_le_bytes())?;
        out.write_all(&1u16.to_le_bytes())?; // PCM
        out.write_all(&channels.to_le_bytes())?;
        out.write_all(&rate.to_le_bytes())?;
        out.write_all(&(rate * u32::from(block_align)).to_le_bytes())?;
        out.write_all(&block_align.to_le_bytes())?;
        out.write_all(&16u16.to_le_bytes())?;
        out.write_all(b"data")?;
        out.write_all(&0u32.to_le_bytes())?; // patched in finish
        Ok(Self {
            out,
            channels,
            data_bytes: 0,
        })
    }

    /// Appends planar `f32` frames (one slice per channel).
    pub fn write_planar(&mut self, planes: &[Vec<f32>]) -> std::io::Result<()> {
        let frames = planes.first().map_or(0, Vec::len);
        for i in 0..frames {
            for plane in planes.iter().take(usize::from(self.channels)) {
                let s = (plane[i].clamp(-1.0, 1.0) * 32767.0).round() as i16;
                self.out.write_all(&s.to_le_bytes())?;
            }
        }
        self.data_bytes += frames as u64 * u64::from(self.channels) * 2;
        Ok(())
    }

    /// Writes the final sizes and closes the file.
    pub fn finish(mut self) -> std::io::Result<()> {
        let data = u32::try_from(self.data_bytes).unwrap_or(u32::MAX);
        self.out.seek(SeekFrom::Start(4))?;
        self.out.write_all(&data.saturating_add(36).to_le_bytes())?;
        self.out.seek(SeekFrom::Start(40))?;
        self.out.write_all(&data.to_le_bytes())?;
        self.out.flush()
    }
}
