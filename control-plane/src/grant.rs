//! Building a playback grant: pure, given the track, its renditions, the signing key and
//! `now`.

use std::time::Duration;

use cadenza_common::{PlaybackGrant, Quality, RenditionRecord, SigningKey, TokenClaims, TrackView};

/// How grants are made.
#[derive(Debug, Clone)]
pub struct GrantPolicy {
    /// Token lifetime beyond the track's duration, so a listener can pause and seek through
    /// the whole track on one grant.
    pub token_slack: Duration,
    /// Edge base URLs in preference order.
    pub edges: Vec<String>,
}

impl Default for GrantPolicy {
    fn default() -> Self {
        Self {
            token_slack: Duration::from_secs(3600),
            edges: Vec::new(),
        }
    }
}

/// Why a track may not be played right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// Its label took it down.
    TakenDown,
    /// Its release time has not come (seconds since the epoch).
    Embargoed { until: u64 },
}

/// Whether `track` may be played at `now`, as far as its own state goes (territories are the
/// edge's check).
pub fn availability(track: &TrackView, now: u64) -> Result<(), Unavailable> {
    if track.taken_down_at.is_some_and(|t| t <= now) {
        return Err(Unavailable::TakenDown);
    }
    match track.release_at {
        Some(until) if now < until => Err(Unavailable::Embargoed { until }),
        _ => Ok(()),
    }
}

/// The rendition to serve for `want`: that tier, else the best tier below it, else the
/// lowest above it.
pub fn choose(renditions: &[RenditionRecord], want: Quality) -> Option<&RenditionRecord> {
    renditions
        .iter()
        .filter(|r| r.quality <= want)
        .max_by_key(|r| r.quality)
        .or_else(|| renditions.iter().min_by_key(|r| r.quality))
}

/// The grant for `rendition` of `track`, valid from `now` (seconds since the epoch).
pub fn build(
    track: &TrackView,
    rendition: &RenditionRecord,
    key: &SigningKey,
    policy: &GrantPolicy,
    now: u64,
) -> PlaybackGrant {
    let duration_ms = track.duration_ms.unwrap_or(0);
    let expires_at = now + policy.token_slack.as_secs() + duration_ms.div_ceil(1000);
    let token = key.sign(&TokenClaims {
        file_id: rendition.file_id.clone(),
        expires_at,
        territories: track.territories.clone(),
    });
    PlaybackGrant {
        track_id: track.track_id.clone(),
        quality: rendition.quality,
        file_id: rendition.file_id.clone(),
        size: rendition.size,
        format: "ogg/vorbis".to_owned(),
        bitrate_kbps: rendition.bitrate_kbps,
        duration_ms,
        key: rendition.key.clone(),
        edges: policy.edges.clone(),
        token,
        expires_at,
        seek_index: rendition.seek_index.clone(),
        loudness: track.loudness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadenza_common::{ContentKey, FileId};

    fn rendition(quality: Quality) -> RenditionRecord {
        RenditionRecord {
            quality,
            file_id: FileId::random(),
            size: 1,
            bitrate_kbps: quality.kbps(),
            key: ContentKey::random(),
            plaintext_sha256: String::new(),
            seek_index: Default::default(),
        }
    }

    #[test]
    fn quality_falls_back_down_then_up() {
        use Quality::*;
        let all = [rendition(Low), rendition(Normal), rendition(High)];
        assert_eq!(choose(&all, Normal).map(|r| r.quality), Some(Normal));
        let no_normal = [rendition(Low), rendition(High)];
        assert_eq!(choose(&no_normal, Normal).map(|r| r.quality), Some(Low));
        let only_high = [rendition(High)];
        assert_eq!(choose(&only_high, Low).map(|r| r.quality), Some(High));
        assert!(choose(&[], High).is_none());
    }

    fn track(release_at: Option<u64>, taken_down_at: Option<u64>) -> TrackView {
        TrackView {
            track_id: cadenza_common::TrackId::random(),
            title: "t".into(),
            artist: "a".into(),
            featuring: Vec::new(),
            isrc: None,
            album: None,
            track_number: None,
            release_at,
            label_id: None,
            taken_down_at,
            territories: cadenza_common::Territories::worldwide(),
            status: cadenza_common::TrackStatus::Ready,
            failure: None,
            duration_ms: None,
            renditions: Vec::new(),
            loudness: None,
            features: None,
        }
    }

    #[test]
    fn embargo_and_takedown_decide_availability() {
        let cases = [
            (None, None, 100, Ok(())),
            (
                Some(100),
                None,
                99,
                Err(Unavailable::Embargoed { until: 100 }),
            ),
            (Some(100), None, 100, Ok(())),
            (None, Some(50), 100, Err(Unavailable::TakenDown)),
            (None, Some(150), 100, Ok(())),
            (Some(200), Some(50), 100, Err(Unavailable::TakenDown)),
        ];
        for (release, down, now, want) in cases {
            assert_eq!(
                availability(&track(release, down), now),
                want,
                "{release:?} {down:?} {now}"
            );
        }
    }
}
