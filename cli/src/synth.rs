//! A short synthetic master for `cadenza up --demo` when no fixtures are at hand: a few bars
//! of a two-voice melody over a bass line, 44.1 kHz 16-bit stereo WAV.

use std::io::Write;
use std::path::Path;

/// Writes `seconds` of music-like audio to `path`.
pub fn write_demo_master(path: &Path, seconds: u32) -> std::io::Result<()> {
    const RATE: u32 = 44_100;
    let frames = RATE * seconds;
    // A minor pentatonic phrase, an eighth note each at 120 BPM.
    let melody = [220.0, 261.63, 293.66, 329.63, 392.0, 329.63, 293.66, 261.63];
    let bass = [110.0, 110.0, 87.31, 98.0];
    let note_len = RATE / 4;
    let mut data = Vec::with_capacity(frames as usize * 4);
    for n in 0..frames {
        let t = f64::from(n) / f64::from(RATE);
        let idx = (n / note_len) as usize;
        let in_note = f64::from(n % note_len) / f64::from(note_len);
        let envelope = (1.0 - in_note).powf(1.5);
        let m = melody[idx % melody.len()];
        let b = bass[(idx / 4) % bass.len()];
        let lead = (2.0 * std::f64::consts::PI * m * t).sin()
            + 0.3 * (4.0 * std::f64::consts::PI * m * t).sin();
        let low = (2.0 * std::f64::consts::PI * b * t).sin();
        let left = 0.35 * envelope * lead + 0.25 * low;
        let right = 0.25 * envelope * lead + 0.35 * low;
        for s in [left, right] {
            data.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32_000.0) as i16).to_le_bytes());
        }
    }
    let mut out = std::fs::File::create(path)?;
    out.write_all(b"RIFF")?;
    out.write_all(&(36 + data.len() as u32).to_le_bytes())?;
    out.write_all(b"WAVEfmt ")?;
    out.write_all(&16u32.to_le_bytes())?;
    out.write_all(&1u16.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&RATE.to_le_bytes())?;
    out.write_all(&(RATE * 4).to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&16u16.to_le_bytes())?;
    out.write_all(b"data")?;
    out.write_all(&(data.len() as u32).to_le_bytes())?;
    out.write_all(&data)?;
    out.sync_all()
}
