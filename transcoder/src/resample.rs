//! Streaming sample-rate conversion by windowed-sinc interpolation.
//!
//! Output frame `n` sits at input time `t = n · in_rate / out_rate`, computed exactly in
//! integers, so there is no drift however long the track. Its value is the sum of input
//! frames within `half` of `t` weighted by a Blackman-windowed sinc whose cutoff is 0.97 of the
//! lower Nyquist frequency; the kernel is read from a table of `PHASES` fractional positions
//! with linear interpolation between them. The kernel is centred on `t` (it looks ahead), so
//! there is no delay to trim: feeding `N` input frames and finishing yields exactly
//! `round(N · out_rate / in_rate)` output frames — gapless.

/// Fractional positions in the kernel table.
const PHASES: usize = 256;
/// Zero crossings of the sinc on each side of the centre, at the cutoff frequency.
const ZERO_CROSSINGS: f64 = 16.0;
/// Cutoff as a fraction of the lower Nyquist frequency.
const CUTOFF: f64 = 0.97;

/// A resampler for one channel group.
#[derive(Debug)]
pub struct Resampler {
    in_rate: u64,
    out_rate: u64,
    /// Taps on each side of the centre.
    half: usize,
    /// `(PHASES + 1) × 2·half` kernel values.
    table: Vec<f32>,
    /// Buffered input per channel; `history[c][0]` is absolute input frame `base`.
    history: Vec<Vec<f32>>,
    base: u64,
    /// Input frames received so far.
    received: u64,
    /// Next output frame to produce.
    next_out: u64,
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

fn blackman(x: f64) -> f64 {
    // x in [-1, 1]
    if x.abs() >= 1.0 {
        return 0.0;
    }
    let a = std::f64::consts::PI * x;
    0.42 + 0.5 * a.cos() + 0.08 * (2.0 * a).cos()
}

impl Resampler {
    /// A resampler from `in_rate` to `out_rate` for `channels` channels.
    pub fn new(in_rate: u32, out_rate: u32, channels: usize) -> Self {
        let fc = CUTOFF * (f64::from(out_rate) / f64::from(in_rate)).min(1.0);
        let half = (ZERO_CROSSINGS / fc).ceil() as usize;
        let taps = 2 * half;
        let mut table = Vec::with_capacity((PHASES + 1) * taps);
        for p in 0..=PHASES {
            let frac = p as f64 / PHASES as f64;
            for m in 0..taps {
                // Distance from output time to the tap's input frame.
                let d = frac + (half as f64 - 1.0) - m as f64;
                table.push((fc * sinc(fc * d) * blackman(d / half as f64)) as f32);
            }
        }
        Self {
            in_rate: u64::from(in_rate),
            out_rate: u64::from(out_rate),
            half,
            table,
            history: vec![Vec::new(); channels],
            base: 0,
            received: 0,
            next_out: 0,
        }
    }

    /// Adds input frames and appends every output frame now computable to `out`.
    pub fn process(&mut self, input: &[Vec<f32>], out: &mut [Vec<f32>]) {
        let frames = input.first().map_or(0, Vec::len);
        for (h, i) in self.history.iter_mut().zip(input) {
            h.extend_from_slice(i);
        }
        self.received += frames as u64;
        self.produce(self.received, out);
        self.trim();
    }

    /// Flushes the tail: frames past the end of the input are silence.
    pub fn finish(&mut self, out: &mut [Vec<f32>]) {
        let total_out = (self.received * self.out_rate + self.in_rate / 2) / self.in_rate;
        let pad = 2 * self.half + 2;
        for h in &mut self.history {
            h.extend(std::iter::repeat_n(0.0, pad));
        }
        let available = self.received + pad as u64;
        self.produce_until(available, total_out, out);
    }

    fn produce(&mut self, available: u64, out: &mut [Vec<f32>]) {
        self.produce_until(available, u64::MAX, out);
    }

    /// Produces output frames while their kernel lies within `available` input frames, up to
    /// `limit` frames in all.
    fn produce_until(&mut self, available: u64, limit: u64, out: &mut [Vec<f32>]) {
        let taps = 2 * self.half;
        loop {
            if self.next_out >= limit {
                return;
            }
            let num = self.next_out * self.in_rate;
            let centre = num / self.out_rate;
            let rem = num % self.out_rate;
            // Taps cover input frames centre-half+1 ..= centre+half.
            if centre + self.half as u64 >= available {
                return;
            }
            let pos = rem as f64 * PHASES as f64 / self.out_rate as f64;
            let phase = (pos as usize).min(PHASES - 1);
            let w = (pos - phase as f64) as f32;
            let k0 = &self.table[phase * taps..(phase + 1) * taps];
            let k1 = &self.table[(phase + 1) * taps..(phase + 2) * taps];
            let first = centre as i64 - self.half as i64 + 1;
            for (h, o) in self.history.iter().zip(out.iter_mut()) {
                let mut acc = 0.0f32;
                for m in 0..taps {
                    let idx = first + m as i64 - self.base as i64;
                    if idx < 0 {
                        continue; // before the first frame: silence
                    }
                    let x = h[idx as usize];
                    acc += x * (k0[m] + w * (k1[m] - k0[m]));
                }
                o.push(acc);
            }
            self.next_out += 1;
        }
    }

    /// Drops input no future output needs.
    fn trim(&mut self) {
        let centre = self.next_out * self.in_rate / self.out_rate;
        let keep_from = (centre + 1).saturating_sub(self.half as u64);
        if keep_from > self.base + 8192 {
            let drop = (keep_from - self.base) as usize;
            for h in &mut self.history {
                h.drain(..drop.min(h.len()));
            }
            self.base += drop as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(in_rate: u32, out_rate: u32, input: &[f32], block: usize) -> Vec<f32> {
        let mut r = Resampler::new(in_rate, out_rate, 1);
        let mut out = vec![Vec::new()];
        for chunk in input.chunks(block) {
            r.process(&[chunk.to_vec()], &mut out);
        }
        r.finish(&mut out);
        out.pop().unwrap_or_default()
    }

    fn sine(rate: u32, freq: f64, secs: f64) -> Vec<f32> {
        (0..(f64::from(rate) * secs) as usize)
            .map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin() as f32)
            .collect()
    }

    #[test]
    fn output_length_is_exact_for_any_ratio_and_block_size() {
        for (i, o, n) in [
            (48_000, 44_100, 48_000),
            (22_050, 44_100, 12_345),
            (35_467, 44_100, 35_467),
            (96_000, 44_100, 100_001),
        ] {
            for block in [1, 333, 4096] {
                let out = run(i, o, &vec![0.0; n], block);
                let expected = (n as u64 * u64::from(o) + u64::from(i) / 2) / u64::from(i);
                assert_eq!(out.len() as u64, expected, "{i}->{o} n={n} block={block}");
            }
        }
    }

    #[test]
    fn a_tone_keeps_its_level_and_phase() {
        // 1 kHz at 48 kHz → 44.1 kHz: compare against the ideal tone away from the edges.
        let out = run(48_000, 44_100, &sine(48_000, 1000.0, 0.5), 1000);
        let ideal = sine(44_100, 1000.0, 0.5);
        let err = out[500..ideal.len() - 500]
            .iter()
            .zip(&ideal[500..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 2e-3, "max error {err}");
    }

    #[test]
    fn content_above_the_new_nyquist_is_removed() {
        // 30 kHz at 96 kHz cannot exist at 44.1 kHz; it must not fold back as an alias.
        let out = run(96_000, 44_100, &sine(96_000, 30_000.0, 0.2), 4096);
        let peak = out[200..out.len() - 200]
            .iter()
            .fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(peak < 0.01, "alias peak {peak}");
    }
}
