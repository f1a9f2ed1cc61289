//! Channel layout → stereo.
//!
//! Mono goes to both channels at full level. Multichannel is folded down with the ITU-R
//! BS.775 coefficients (centre and surrounds at −3 dB, LFE dropped), then each output is scaled
//! by the sum of its weights when that exceeds one, so the fold-down cannot clip.

use crate::decode::{Layout, Speaker};

const MINUS_3DB: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Per-plane weights into the left and right outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Downmix {
    weights: Vec<(f32, f32)>,
}

/// (left, right) weight of a speaker (ITU-R BS.775; LFE dropped).
fn weight(speaker: Speaker) -> (f32, f32) {
    match speaker {
        Speaker::Mono => (1.0, 1.0),
        Speaker::Left => (1.0, 0.0),
        Speaker::Right => (0.0, 1.0),
        Speaker::Centre => (MINUS_3DB, MINUS_3DB),
        Speaker::Lfe => (0.0, 0.0),
        Speaker::LeftSurround => (MINUS_3DB, 0.0),
        Speaker::RightSurround => (0.0, MINUS_3DB),
        Speaker::Other => (0.5, 0.5),
    }
}

impl Downmix {
    /// The fold-down for `layout`.
    pub fn for_layout(layout: Layout) -> Self {
        let mut weights: Vec<(f32, f32)> = layout.speakers().into_iter().map(weight).collect();
        let (sum_l, sum_r) = weights
            .iter()
            .fold((0.0f32, 0.0f32), |(l, r), (wl, wr)| (l + wl, r + wr));
        let scale_l = if sum_l > 1.0 { 1.0 / sum_l } else { 1.0 };
        let scale_r = if sum_r > 1.0 { 1.0 / sum_r } else { 1.0 };
        for w in &mut weights {
            w.0 *= scale_l;
            w.1 *= scale_r;
        }
        Self { weights }
    }

    /// Folds `planes` into `left` and `right` (replaced).
    pub fn apply(&self, planes: &[Vec<f32>], left: &mut Vec<f32>, right: &mut Vec<f32>) {
        let frames = planes.first().map_or(0, Vec::len);
        left.clear();
        left.resize(frames, 0.0);
        right.clear();
        right.resize(frames, 0.0);
        for (plane, &(wl, wr)) in planes.iter().zip(&self.weights) {
            if wl != 0.0 {
                left.iter_mut().zip(plane).for_each(|(o, s)| *o += wl * s);
            }
            if wr != 0.0 {
                right.iter_mut().zip(plane).for_each(|(o, s)| *o += wr * s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(positions: u64) -> Layout {
        Layout {
            count: positions.count_ones() as usize,
            positions,
        }
    }

    #[test]
    fn mono_goes_to_both_sides_at_full_level() {
        let mix = Downmix::for_layout(Layout {
            count: 1,
            positions: 0,
        });
        let (mut l, mut r) = (Vec::new(), Vec::new());
        mix.apply(&[vec![0.5, -1.0]], &mut l, &mut r);
        assert_eq!((l, r), (vec![0.5, -1.0], vec![0.5, -1.0]));
    }

    #[test]
    fn stereo_passes_through() {
        let mix = Downmix::for_layout(layout(0b11));
        let (mut l, mut r) = (Vec::new(), Vec::new());
        mix.apply(&[vec![0.25], vec![-0.75]], &mut l, &mut r);
        assert_eq!((l, r), (vec![0.25], vec![-0.75]));
    }

    #[test]
    fn five_one_never_clips_and_drops_lfe() {
        // FL FR FC LFE RL RR, all at full scale.
        let mix = Downmix::for_layout(layout(0b11_1111));
        let planes = vec![vec![1.0f32]; 6];
        let (mut l, mut r) = (Vec::new(), Vec::new());
        mix.apply(&planes, &mut l, &mut r);
        assert!((l[0] - 1.0).abs() < 1e-6 && (r[0] - 1.0).abs() < 1e-6);
        // LFE alone is silent.
        let mut lfe_only = vec![vec![0.0f32]; 6];
        lfe_only[3][0] = 1.0;
        mix.apply(&lfe_only, &mut l, &mut r);
        assert_eq!((l[0], r[0]), (0.0, 0.0));
    }
}
