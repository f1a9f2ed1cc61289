//! Fitting each tier's libvorbis quality to this master, so the mean bitrate of an unmanaged
//! VBR rendition lands near the tier's nominal bitrate.
//!
//! libvorbis maps a bitrate to a quality through fixed tables, and the bitrate a quality
//! yields then follows the material: dense noise-like masters come out 30 % under, sparse
//! ones far over. Managed ABR holds the mean but costs several times the CPU. Instead the
//! pipeline encodes a short excerpt of the master at a few qualities, steering by
//! [`next_quality`], encodes the whole track at the fitted quality, and re-encodes any tier
//! whose whole-track mean still misses (by the same rule, from the whole-track point).

use std::io::Write;
use std::sync::Arc;

use cadenza_common::Quality;

use crate::TranscodeError;
use crate::encode::{
    OUTPUT_RATE, QUALITY_RANGE, Setting, TierEncoder, nominal_rate, quality_for_rate,
};

/// Audible seconds of the master the fitting encodes.
pub const EXCERPT_SECONDS: u32 = 8;
/// At most this many seconds are read waiting for audible ones (a long silent intro).
pub const EXCERPT_MAX_SECONDS: u32 = 60;
/// A master this long or longer is sampled in [`SPANS`] spans spread over its length,
/// which represent it better than its start.
pub const SPREAD_FROM_SECONDS: u32 = 60;
/// Spans sampled from a long master, [`EXCERPT_SECONDS`] in all.
pub const SPANS: u32 = 4;
/// A block whose peak is under this is silence for the excerpt's purposes (−80 dBFS).
const SILENCE: f32 = 1e-4;
/// Excerpt encodes per tier at most.
const EXCERPT_TRIES: usize = 4;
/// The excerpt is close enough within this fraction of the nominal bitrate.
const EXCERPT_TOLERANCE: f64 = 0.05;
/// A whole-track mean further than this from nominal sends the tier to a second encode:
/// the ±10 % the tiers promise.
pub const TRACK_TOLERANCE: f64 = 0.10;

/// One measured point: a quality and the mean bitrate it gave, bit/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub quality: f32,
    pub rate: f64,
}

/// The quality to try next to reach `target` bit/s, given the points measured so far on the
/// same material (latest last), clamped to [`QUALITY_RANGE`].
///
/// libvorbis's curve is monotone but uneven (its modes change at some qualities), so a
/// point under and a point over the target bracket it, and the next try interpolates
/// between the closest such pair in (quality, log bitrate). Without a bracket, two points
/// give a secant and one point assumes the material keeps its ratio to libvorbis's table.
pub fn next_quality(points: &[Point], target: f64) -> f32 {
    let (lo, hi) = QUALITY_RANGE;
    let ratio_model = |p: &Point| quality_for_rate(target * nominal_rate(p.quality) / p.rate);
    let interpolate = |a: &Point, b: &Point| -> Option<f32> {
        let dq = f64::from(b.quality - a.quality);
        if dq.abs() < 1e-4 || a.rate <= 0.0 || b.rate <= 0.0 {
            return None;
        }
        let slope = (b.rate.ln() - a.rate.ln()) / dq;
        (slope > 1e-6).then(|| b.quality + ((target.ln() - b.rate.ln()) / slope) as f32)
    };
    let under = points
        .iter()
        .filter(|p| p.rate < target)
        .max_by(|a, b| a.rate.total_cmp(&b.rate));
    let over = points
        .iter()
        .filter(|p| p.rate >= target)
        .min_by(|a, b| a.rate.total_cmp(&b.rate));
    let q = match (under, over, points) {
        (_, _, []) => quality_for_rate(target),
        (Some(u), Some(o), _) => interpolate(u, o).unwrap_or((u.quality + o.quality) / 2.0),
        (_, _, [.., a, b]) => match interpolate(a, b) {
            Some(q) => q,
            None if b.rate > 0.0 => ratio_model(b),
            None => hi,
        },
        (_, _, [p]) if p.rate > 0.0 => ratio_model(p),
        (_, _, [_]) => hi,
    };
    q.clamp(lo, hi)
}

/// A tier's fitted quality and what the excerpt showed of the material's curve there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fitted {
    pub quality: f32,
    /// d ln(bitrate) / d quality near `quality`, from the two excerpt points closest to it.
    pub slope: Option<f64>,
}

/// The log-bitrate slope through the two points closest to `quality`, when it rises.
fn local_slope(points: &[Point], quality: f32) -> Option<f64> {
    let mut near: Vec<&Point> = points.iter().filter(|p| p.rate > 0.0).collect();
    near.sort_by(|a, b| {
        (a.quality - quality)
            .abs()
            .total_cmp(&(b.quality - quality).abs())
    });
    let [a, b, ..] = near[..] else {
        return None;
    };
    let dq = f64::from(b.quality - a.quality);
    let slope = (b.rate.ln() - a.rate.ln()) / dq;
    (dq.abs() > 1e-4 && slope > 1e-6).then_some(slope)
}

/// The quality for a second whole-track encode, from the first one's `quality` and mean
/// `rate`: along the excerpt's local slope when there is one (the whole track differs from
/// the excerpt by a factor, not in shape), else by [`next_quality`] from that one point.
pub fn corrected(fitted: Fitted, rate: f64, target: f64) -> f32 {
    let (lo, hi) = QUALITY_RANGE;
    let point = Point {
        quality: fitted.quality,
        rate,
    };
    match fitted.slope {
        Some(slope) if rate > 0.0 => {
            (fitted.quality + ((target / rate).ln() / slope) as f32).clamp(lo, hi)
        }
        _ => next_quality(&[point], target),
    }
}

/// Whether a measured mean is close enough to `target`.
pub fn within(rate: f64, target: f64, tolerance: f64) -> bool {
    (rate / target - 1.0).abs() <= tolerance
}

/// Stereo 44.1 kHz frames, shared by the encoders that take them.
pub type Block = Arc<[Vec<f32>; 2]>;

/// Parts of the master the fitting encodes.
#[derive(Debug, Default)]
pub struct Excerpt {
    blocks: Vec<Block>,
    /// The first block that is not silence: leading silence is read but not fitted on.
    first_audible: Option<usize>,
    audible_frames: usize,
    read_frames: usize,
}

impl Excerpt {
    /// Adds a block.
    pub fn add(&mut self, block: Block) {
        self.read_frames += block[0].len();
        if self.first_audible.is_none() && block.iter().flatten().any(|s| s.abs() > SILENCE) {
            self.first_audible = Some(self.blocks.len());
        }
        if self.first_audible.is_some() {
            self.audible_frames += block[0].len();
        }
        self.blocks.push(block);
    }

    /// Audible frames held.
    pub fn audible_frames(&self) -> usize {
        self.audible_frames
    }

    /// Whether enough is held to fit on.
    pub fn is_full(&self) -> bool {
        self.audible_frames >= (EXCERPT_SECONDS * OUTPUT_RATE) as usize
            || self.read_frames >= (EXCERPT_MAX_SECONDS * OUTPUT_RATE) as usize
    }

    fn audible(&self) -> &[Block] {
        self.first_audible.map_or(&[], |i| &self.blocks[i..])
    }

    /// Fits a quality for each tier (run in parallel), in `tiers` order. An empty excerpt
    /// (a silent master) keeps libvorbis's own mapping.
    pub fn fit(
        &self,
        tiers: &[Quality],
        comments: &[(&str, String)],
    ) -> Result<Vec<Fitted>, TranscodeError> {
        std::thread::scope(|scope| {
            let workers: Vec<_> = tiers
                .iter()
                .map(|&tier| scope.spawn(move || self.fit_tier(tier, comments)))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(TranscodeError::Encode("fitting thread panicked".into()))
                    })
                })
                .collect()
        })
    }

    fn fit_tier(
        &self,
        tier: Quality,
        comments: &[(&str, String)],
    ) -> Result<Fitted, TranscodeError> {
        let target = f64::from(tier.kbps()) * 1000.0;
        let mut points: Vec<Point> = Vec::with_capacity(EXCERPT_TRIES);
        if self.audible_frames == 0 {
            return Ok(Fitted {
                quality: next_quality(&points, target),
                slope: None,
            });
        }
        let mut met = None;
        for _ in 0..EXCERPT_TRIES {
            let quality = next_quality(&points, target);
            if points.iter().any(|p| (p.quality - quality).abs() < 1e-3) {
                break;
            }
            let rate = self.rate_at(tier, quality, comments)?;
            points.push(Point { quality, rate });
            if within(rate, target, EXCERPT_TOLERANCE) {
                met = Some(quality);
                break;
            }
        }
        tracing::debug!(tier = tier.as_str(), ?points, "excerpt fitted");
        // Short of the tolerance, the next try's quality is the best estimate there is.
        let quality = met.unwrap_or_else(|| next_quality(&points, target));
        Ok(Fitted {
            quality,
            slope: local_slope(&points, quality),
        })
    }

    /// The mean bitrate of the excerpt encoded at `quality`, bit/s.
    fn rate_at(
        &self,
        tier: Quality,
        quality: f32,
        comments: &[(&str, String)],
    ) -> Result<f64, TranscodeError> {
        let mut encoder =
            TierEncoder::new(tier, 1, Setting::Quality(quality), comments, Counter(0))?;
        for block in self.audible() {
            encoder.encode(&block[0], &block[1])?;
        }
        let bytes = encoder.finish()?.0;
        let seconds = self.audible_frames as f64 / f64::from(OUTPUT_RATE);
        Ok(bytes as f64 * 8.0 / seconds)
    }
}

/// A sink that only counts bytes.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Material whose bitrate is `scale` times libvorbis's table, bent by `bend` per
    /// quality step, like a real master's curve.
    fn material(scale: f64, bend: f64) -> impl Fn(f32) -> f64 {
        move |q| nominal_rate(q) * scale * (1.0 + bend * f64::from(q))
    }

    #[test]
    fn the_first_guess_is_libvorbis_own_mapping() {
        assert!((next_quality(&[], 160_000.0) - 0.5).abs() < 1e-6);
        assert!((next_quality(&[], 96_000.0) - 0.2).abs() < 1e-6);
        assert!((next_quality(&[], 320_000.0) - 0.9).abs() < 1e-6);
        assert!((quality_for_rate(nominal_rate(0.37)) - 0.37).abs() < 1e-5);
    }

    #[test]
    fn steering_reaches_the_target_on_curves_unlike_the_table() {
        for (scale, bend) in [(0.7, 0.0), (1.3, 0.0), (0.7, 0.4), (1.25, -0.3), (0.9, 0.2)] {
            let rate = material(scale, bend);
            for target in [96_000.0, 160_000.0, 320_000.0] {
                let mut points = Vec::new();
                for _ in 0..EXCERPT_TRIES {
                    let quality = next_quality(&points, target);
                    points.push(Point {
                        quality,
                        rate: rate(quality),
                    });
                }
                let last = points[points.len() - 1];
                // Unreachable targets stop at the end of the range instead.
                let reachable = rate(QUALITY_RANGE.1) >= target && rate(QUALITY_RANGE.0) <= target;
                if reachable {
                    assert!(
                        within(last.rate, target, 0.02),
                        "scale {scale} bend {bend} target {target}: {points:?}"
                    );
                } else {
                    assert!(last.quality == QUALITY_RANGE.1 || last.quality == QUALITY_RANGE.0);
                }
            }
        }
    }

    #[test]
    fn a_bracket_is_interpolated_inside() {
        // Uneven, like libvorbis around a mode change: the secant from the first two
        // points overshoots, and the bracket then pulls the next try between them.
        let points = [
            Point {
                quality: 0.2,
                rate: 72_000.0,
            },
            Point {
                quality: 0.4,
                rate: 85_000.0,
            },
            Point {
                quality: 0.55,
                rate: 114_000.0,
            },
        ];
        let q = next_quality(&points, 96_000.0);
        assert!(q > 0.4 && q < 0.55, "{q}");
    }

    #[test]
    fn a_correction_follows_the_excerpt_slope() {
        let excerpt = [
            Point {
                quality: 0.4,
                rate: 85_000.0,
            },
            Point {
                quality: 0.55,
                rate: 114_000.0,
            },
        ];
        let slope = local_slope(&excerpt, 0.45).unwrap();
        let fitted = Fitted {
            quality: 0.45,
            slope: Some(slope),
        };
        // The whole track spent 8 % less than the excerpt promised at this quality; the same
        // curve shifted by that factor reaches the target a little higher up.
        let q = corrected(fitted, 84_000.0, 96_000.0);
        let expected = 0.45 + ((96.0f64 / 84.0).ln() / slope) as f32;
        assert!((q - expected).abs() < 1e-6 && q > 0.45 && q < 0.55, "{q}");
        // Without a slope, the one-point rule.
        let alone = corrected(
            Fitted {
                quality: 0.45,
                slope: None,
            },
            84_000.0,
            96_000.0,
        );
        assert!(alone > 0.45, "{alone}");
        // A falling or flat pair gives no slope.
        assert_eq!(local_slope(&excerpt[..1], 0.4), None);
    }

    #[test]
    fn a_silent_point_asks_for_the_top_quality() {
        let q = next_quality(
            &[Point {
                quality: 0.5,
                rate: 0.0,
            }],
            160_000.0,
        );
        assert_eq!(q, QUALITY_RANGE.1);
    }

    #[test]
    fn leading_silence_is_not_fitted_on() {
        let block = |v: f32| -> Block { Arc::new([vec![v; 100], vec![0.0; 100]]) };
        let mut excerpt = Excerpt::default();
        excerpt.add(block(0.0));
        assert!(excerpt.audible().is_empty());
        excerpt.add(block(0.5));
        excerpt.add(block(0.0));
        assert_eq!((excerpt.audible_frames, excerpt.read_frames), (200, 300));
        assert_eq!(excerpt.audible().len(), 2);
        assert!(!excerpt.is_full());
    }
}
