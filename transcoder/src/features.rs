//! Acoustic features for recommendations, computed on the 44.1 kHz stereo signal as it
//! streams past: tempo, spectral centroid, energy and dynamics. Deterministic: the same
//! samples always give the same numbers (single-threaded `f32`/`f64` arithmetic, no
//! randomness).
//!
//! - **Tempo**: an onset-strength envelope (half-wave rectified rise of log energy over
//!   256-frame hops, ≈172 Hz) is autocorrelated over lags of 60–200 BPM; the peak, weighted
//!   toward 120 BPM on a log scale to settle octave ambiguity, is refined by parabolic
//!   interpolation.
//! - **Spectral centroid**: magnitude-weighted mean frequency of 2048-point Hann-windowed
//!   FFT frames, averaged over frames that are not silent.
//! - **Energy**: mean RMS level in dBFS over those frames; **dynamics**: the spread (95th
//!   minus 10th percentile) of per-frame RMS levels in dB.

use cadenza_common::AcousticFeatures;

const RATE: f64 = 44_100.0;
const HOP: usize = 256;
const FFT: usize = 2048;
/// Frames quieter than this (dBFS RMS) are silence and do not count.
const SILENT_DB: f64 = -70.0;
/// Frame levels are counted in bins this wide (dB) from `SILENT_DB` up to `LOUDEST_DB`, so
/// the level percentiles take constant memory whatever the track's length.
const LEVEL_BIN_DB: f64 = 0.01;
const LOUDEST_DB: f64 = 10.0;
/// Tempo is estimated from the onset envelope of the first ten minutes (hops of 256 frames),
/// which keeps the envelope bounded for long tracks.
const MAX_TEMPO_HOPS: usize = (10.0 * 60.0 * RATE) as usize / HOP;

/// Accumulates features block by block.
#[derive(Debug)]
pub struct FeatureMeter {
    mono: Vec<f32>,
    hop_energy: Vec<f64>,
    pending_hop: Vec<f32>,
    /// Counts of non-silent frame levels per `LEVEL_BIN_DB` bin.
    level_bins: Vec<u64>,
    level_frames: u64,
    level_sum_db: f64,
    centroid_sum: f64,
    centroid_frames: u64,
    window: Vec<f32>,
    /// `e^{-2πik/FFT}` for `k < FFT/2`, so the transform computes no trigonometry.
    twiddles: Vec<(f64, f64)>,
}

impl Default for FeatureMeter {
    fn default() -> Self {
        let window = (0..FFT)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / FFT as f64).cos()) as f32
            })
            .collect();
        Self {
            mono: Vec::with_capacity(2 * FFT),
            hop_energy: Vec::new(),
            pending_hop: Vec::with_capacity(HOP),
            level_bins: vec![0; ((LOUDEST_DB - SILENT_DB) / LEVEL_BIN_DB) as usize + 1],
            level_frames: 0,
            level_sum_db: 0.0,
            centroid_sum: 0.0,
            centroid_frames: 0,
            window,
            twiddles: twiddles(FFT),
        }
    }
}

fn db(power: f64) -> f64 {
    10.0 * power.max(1e-12).log10()
}

impl FeatureMeter {
    /// Adds stereo 44.1 kHz frames.
    pub fn add(&mut self, left: &[f32], right: &[f32]) {
        for (l, r) in left.iter().zip(right) {
            let m = 0.5 * (l + r);
            self.pending_hop.push(m);
            if self.pending_hop.len() == HOP {
                let e: f64 = self
                    .pending_hop
                    .iter()
                    .map(|&x| f64::from(x) * f64::from(x))
                    .sum();
                if self.hop_energy.len() < MAX_TEMPO_HOPS {
                    self.hop_energy.push(e / HOP as f64);
                }
                self.pending_hop.clear();
            }
            self.mono.push(m);
            if self.mono.len() == FFT {
                self.spectral_frame();
                self.mono.clear();
            }
        }
    }

    fn spectral_frame(&mut self) {
        let power: f64 = self
            .mono
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            / FFT as f64;
        let level = db(power);
        if level < SILENT_DB {
            return;
        }
        let bin = ((level.min(LOUDEST_DB) - SILENT_DB) / LEVEL_BIN_DB).round() as usize;
        if let Some(count) = self.level_bins.get_mut(bin) {
            *count += 1;
        }
        self.level_frames += 1;
        self.level_sum_db += level;
        let mut re: Vec<f64> = self
            .mono
            .iter()
            .zip(&self.window)
            .map(|(&x, &w)| f64::from(x * w))
            .collect();
        let mut im = vec![0.0f64; FFT];
        fft(&mut re, &mut im, &self.twiddles);
        let (mut weighted, mut total) = (0.0, 0.0);
        for k in 1..FFT / 2 {
            let mag = (re[k] * re[k] + im[k] * im[k]).sqrt();
            weighted += mag * k as f64 * RATE / FFT as f64;
            total += mag;
        }
        if total > 0.0 {
            self.centroid_sum += weighted / total;
            self.centroid_frames += 1;
        }
    }

    /// The features of everything added.
    pub fn finish(&self) -> AcousticFeatures {
        // The level at rank round((n - 1)·p) of the sorted levels, read off the histogram.
        let pct = |p: f64| -> f64 {
            if self.level_frames == 0 {
                return SILENT_DB;
            }
            let rank = ((self.level_frames - 1) as f64 * p).round() as u64;
            let mut seen = 0u64;
            for (bin, &count) in self.level_bins.iter().enumerate() {
                seen += count;
                if seen > rank {
                    return SILENT_DB + bin as f64 * LEVEL_BIN_DB;
                }
            }
            LOUDEST_DB
        };
        let energy = if self.level_frames == 0 {
            SILENT_DB
        } else {
            self.level_sum_db / self.level_frames as f64
        };
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        AcousticFeatures {
            tempo_bpm: self.tempo().map(round1),
            spectral_centroid_hz: if self.centroid_frames > 0 {
                (self.centroid_sum / self.centroid_frames as f64).round()
            } else {
                0.0
            },
            energy_dbfs: round1(energy),
            dynamics_db: round1(pct(0.95) - pct(0.10)),
        }
    }

    fn tempo(&self) -> Option<f64> {
        let env: Vec<f64> = self
            .hop_energy
            .windows(2)
            .map(|w| (db(w[1]) - db(w[0])).max(0.0))
            .collect();
        let hops_per_sec = RATE / HOP as f64;
        if env.len() < (hops_per_sec * 4.0) as usize {
            return None; // under four seconds: no meaningful tempo
        }
        let mean = env.iter().sum::<f64>() / env.len() as f64;
        let env: Vec<f64> = env.iter().map(|x| x - mean).collect();
        let lag_for = |bpm: f64| (60.0 * hops_per_sec / bpm).round() as usize;
        let (min_lag, max_lag) = (lag_for(200.0), lag_for(60.0));
        let acf = |lag: usize| -> f64 {
            env.iter().zip(&env[lag..]).map(|(a, b)| a * b).sum::<f64>() / (env.len() - lag) as f64
        };
        let values: Vec<f64> = (min_lag - 1..=max_lag + 1).map(acf).collect();
        let weight = |lag: f64| {
            let bpm = 60.0 * hops_per_sec / lag;
            (-0.5 * (bpm / 120.0).log2().powi(2)).exp()
        };
        let mut best: Option<(usize, f64)> = None;
        for i in 1..values.len() - 1 {
            let lag = min_lag - 1 + i;
            let v = values[i];
            if v > 0.0 && v >= values[i - 1] && v >= values[i + 1] {
                let score = v * weight(lag as f64);
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((i, score));
                }
            }
        }
        let (i, _) = best?;
        let (a, b, c) = (values[i - 1], values[i], values[i + 1]);
        let denom = a - 2.0 * b + c;
        let shift = if denom.abs() > 1e-12 {
            0.5 * (a - c) / denom
        } else {
            0.0
        };
        let lag = (min_lag - 1 + i) as f64 + shift.clamp(-0.5, 0.5);
        Some(60.0 * hops_per_sec / lag)
    }
}

/// `(cos, sin)` of `-2πk/n` for `k < n/2`.
fn twiddles(n: usize) -> Vec<(f64, f64)> {
    (0..n / 2)
        .map(|k| {
            let (s, c) = (-2.0 * std::f64::consts::PI * k as f64 / n as f64).sin_cos();
            (c, s)
        })
        .collect()
}

/// In-place iterative radix-2 FFT; `re.len()` must be a power of two and `tw` its
/// [`twiddles`].
fn fft(re: &mut [f64], im: &mut [f64], tw: &[(f64, f64)]) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let stride = n / len;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (c, s) = tw[k * stride];
                let (a, b) = (start + k, start + k + len / 2);
                let tr = re[b] * c - im[b] * s;
                let ti = re[b] * s + im[b] * c;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
        len <<= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(signal: &[f32]) -> AcousticFeatures {
        let mut m = FeatureMeter::default();
        for chunk in signal.chunks(1000) {
            m.add(chunk, chunk);
        }
        m.finish()
    }

    #[test]
    fn a_pure_tone_has_its_frequency_as_centroid_and_steady_level() {
        let tone: Vec<f32> = (0..44_100 * 5)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / RATE).sin()) as f32)
            .collect();
        let f = measure(&tone);
        assert!((f.spectral_centroid_hz - 1000.0).abs() < 30.0, "{f:?}");
        // RMS of a 0.5-amplitude sine: 0.354 → −9.0 dBFS.
        assert!((f.energy_dbfs - -9.0).abs() < 0.2, "{f:?}");
        assert!(f.dynamics_db < 0.5, "{f:?}");
    }

    #[test]
    fn a_click_track_has_its_tempo() {
        for bpm in [90.0, 120.0, 140.0] {
            let period = (RATE * 60.0 / bpm) as usize;
            let click: Vec<f32> = (0..44_100 * 20)
                .map(|i| {
                    let t = i % period;
                    if t < 200 {
                        (0.8 * (t as f64 * 0.3).sin()) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            let f = measure(&click);
            let got = f.tempo_bpm.unwrap_or(0.0);
            assert!((got - bpm).abs() < 1.5, "{bpm} BPM click read as {got}");
        }
    }

    #[test]
    fn level_percentiles_come_from_the_histogram_exactly_enough() {
        // 5 s of a tone at -20 dB RMS, then 5 s at -40 dB: dynamics (95th − 10th percentile)
        // is 20 dB and the mean level -30 dB, whatever the histogram's bin width.
        let tone = |amp: f32| -> Vec<f32> {
            (0..44_100 * 5)
                .map(|i| amp * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 44_100.0).sin())
                .collect()
        };
        let mut meter = FeatureMeter::default();
        for amp in [0.141_421_36, 0.014_142_136] {
            let x = tone(amp);
            meter.add(&x, &x);
        }
        let f = meter.finish();
        assert!((f.dynamics_db - 20.0).abs() <= 0.1, "{f:?}");
        assert!((f.energy_dbfs + 30.0).abs() <= 0.2, "{f:?}");
    }

    #[test]
    fn features_are_deterministic_and_silence_is_handled() {
        let noise: Vec<f32> = (0..44_100 * 6u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32) - 0.5)
            .collect();
        assert_eq!(measure(&noise), measure(&noise));
        let silent = measure(&vec![0.0; 44_100 * 5]);
        assert_eq!(silent.energy_dbfs, SILENT_DB);
        assert_eq!(silent.spectral_centroid_hz, 0.0);
    }

    #[test]
    fn fft_matches_a_direct_dft() {
        let x: Vec<f64> = (0..16).map(|i| ((i * 7) % 5) as f64 - 2.0).collect();
        let (mut re, mut im) = (x.clone(), vec![0.0; 16]);
        fft(&mut re, &mut im, &twiddles(16));
        for k in 0..16 {
            let (mut r, mut m) = (0.0, 0.0);
            for (n, v) in x.iter().enumerate() {
                let a = -2.0 * std::f64::consts::PI * (k * n) as f64 / 16.0;
                r += v * a.cos();
                m += v * a.sin();
            }
            assert!((re[k] - r).abs() < 1e-9 && (im[k] - m).abs() < 1e-9);
        }
    }
}
