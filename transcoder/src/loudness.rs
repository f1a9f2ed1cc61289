//! EBU R128 loudness of the master (ITU-R BS.1770 integrated loudness and true peak) and the
//! track gain derived from it.

use cadenza_common::Loudness;
use ebur128::{Channel, EbuR128, Mode};

use crate::TranscodeError;
use crate::decode::{Layout, Speaker};

/// Loudness the gain aims for, LUFS (what the large streaming services normalise to).
pub const TARGET_LUFS: f64 = -14.0;
/// Highest true peak a gained track may reach, dBTP.
pub const PEAK_CEILING_DBTP: f64 = -1.0;
/// Integrated loudness reported for silence: the BS.1770 absolute gate.
const SILENCE_LUFS: f64 = -70.0;
/// True peak reported for digital silence.
const SILENCE_DBTP: f64 = -120.0;

/// The gain that brings `integrated_lufs` to the target without pushing the true peak above
/// the ceiling. Silence (no integrated loudness) gets 0 dB.
pub fn track_gain(integrated_lufs: f64, true_peak_dbtp: f64) -> f64 {
    if !integrated_lufs.is_finite() {
        return 0.0;
    }
    let wanted = TARGET_LUFS - integrated_lufs;
    let headroom = PEAK_CEILING_DBTP - true_peak_dbtp;
    if true_peak_dbtp.is_finite() {
        wanted.min(headroom)
    } else {
        wanted
    }
}

/// BS.1770 weighting role of a speaker (LFE and heights are not weighted).
fn channel(speaker: Speaker) -> Channel {
    match speaker {
        // Mono is heard on both speakers.
        Speaker::Mono => Channel::DualMono,
        Speaker::Left => Channel::Left,
        Speaker::Right => Channel::Right,
        Speaker::Centre => Channel::Center,
        Speaker::LeftSurround => Channel::LeftSurround,
        Speaker::RightSurround => Channel::RightSurround,
        Speaker::Lfe | Speaker::Other => Channel::Unused,
    }
}

/// Measures a master as it is decoded.
pub struct Meter {
    inner: EbuR128,
    channels: u32,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Meter({} channels)", self.channels)
    }
}

fn meter_error(e: ebur128::Error) -> TranscodeError {
    TranscodeError::Encode(format!("loudness meter: {e}"))
}

impl Meter {
    /// A meter for `layout` at `rate`.
    pub fn new(layout: Layout, rate: u32) -> Result<Self, TranscodeError> {
        let channels =
            u32::try_from(layout.count).map_err(|_| TranscodeError::Encode("channels".into()))?;
        let mut inner =
            EbuR128::new(channels, rate, Mode::I | Mode::TRUE_PEAK).map_err(meter_error)?;
        let map: Vec<Channel> = layout.speakers().into_iter().map(channel).collect();
        inner.set_channel_map(&map).map_err(meter_error)?;
        Ok(Self { inner, channels })
    }

    /// Adds decoded planes.
    pub fn add(&mut self, planes: &[Vec<f32>]) -> Result<(), TranscodeError> {
        let refs: Vec<&[f32]> = planes.iter().map(Vec::as_slice).collect();
        self.inner.add_frames_planar_f32(&refs).map_err(meter_error)
    }

    /// The result.
    pub fn finish(&self) -> Result<Loudness, TranscodeError> {
        let integrated = self.inner.loudness_global().map_err(meter_error)?;
        let mut peak = 0.0f64;
        for c in 0..self.channels {
            peak = peak.max(self.inner.true_peak(c).map_err(meter_error)?);
        }
        let true_peak_dbtp = 20.0 * peak.log10();
        let gain = track_gain(integrated, true_peak_dbtp);
        // Silence has no loudness (−inf); report the BS.1770 absolute gate and a floor
        // instead, so every value is a finite number in JSON and SQL.
        let round = |x: f64, floor: f64| {
            if x.is_finite() {
                ((x * 100.0).round() / 100.0).max(floor)
            } else {
                floor
            }
        };
        Ok(Loudness {
            integrated_lufs: round(integrated, SILENCE_LUFS),
            true_peak_dbtp: round(true_peak_dbtp, SILENCE_DBTP),
            track_gain_db: round(gain, -99.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gain_aims_for_the_target_within_the_peak_ceiling() {
        // Quiet with headroom: full gain.
        assert!((track_gain(-20.0, -10.0) - 6.0).abs() < 1e-9);
        // Quiet but peaky: limited by the ceiling.
        assert!((track_gain(-20.0, -3.0) - 2.0).abs() < 1e-9);
        // Loud: turned down, whatever the peak.
        assert!((track_gain(-8.0, 0.5) - -6.0).abs() < 1e-9);
        // Silence.
        assert_eq!(track_gain(f64::NEG_INFINITY, f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn a_full_scale_sine_measures_as_bs1770_says() {
        // BS.1770-4: a 997 Hz sine at 0 dBFS in one channel of a stereo pair reads −3.01 LUFS;
        // in both, 0.0 LUFS.
        let rate = 48_000;
        let tone: Vec<f32> = (0..rate * 5)
            .map(|i| {
                (2.0 * std::f64::consts::PI * 997.0 * f64::from(i) / f64::from(rate)).sin() as f32
            })
            .collect();
        let stereo = Layout {
            count: 2,
            positions: 0b11,
        };
        let mut one = Meter::new(stereo, rate).unwrap();
        one.add(&[tone.clone(), vec![0.0; tone.len()]]).unwrap();
        let l = one.finish().unwrap();
        assert!((l.integrated_lufs - -3.01).abs() < 0.05, "{l:?}");
        let mut both = Meter::new(stereo, rate).unwrap();
        both.add(&[tone.clone(), tone]).unwrap();
        let l = both.finish().unwrap();
        assert!(l.integrated_lufs.abs() < 0.05, "{l:?}");
        assert!(l.true_peak_dbtp.abs() < 0.1, "{l:?}");
    }
}
