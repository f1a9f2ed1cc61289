//! Building a playback grant: pure, given the track, its renditions, the signing key and
//! `now`.

use std::time::Duration;

use cadenza_common::{PlaybackGrant, Quality, RenditionRecord, SigningKey, TokenClaims, TrackView};

use crate::rights::Allowed;

/// How grants are made.
#[derive(Debug, Clone)]
pub struct GrantPolicy {
    /// Token lifetime beyond the track's duration, so a listener can pause and seek through
    /// the whole track on one grant.
    pub token_slack: Duration,
    /// The edges grants may list, each with the countries it serves; a grant lists them
    /// best first for the listener (see [`crate::fleet`]).
    pub edges: Vec<crate::fleet::EdgeSite>,
}

impl Default for GrantPolicy {
    fn default() -> Self {
        Self {
            token_slack: Duration::from_secs(3600),
            edges: Vec::new(),
        }
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

/// The grant for `rendition` of `track`, valid from `now` (seconds since the epoch), as far
/// as the rights decision `allowed` lets it: the token names the territories licensed now
/// and expires when the right does, if that is sooner.
pub fn build(
    track: &TrackView,
    rendition: &RenditionRecord,
    allowed: &Allowed,
    key: &SigningKey,
    policy: &GrantPolicy,
    edges: Vec<String>,
    now: u64,
) -> PlaybackGrant {
    let duration_ms = track.duration_ms.unwrap_or(0);
    let lifetime = now + policy.token_slack.as_secs() + duration_ms.div_ceil(1000);
    let expires_at = allowed.until.map_or(lifetime, |u| u.min(lifetime));
    let token = key.sign(&TokenClaims {
        file_id: rendition.file_id.clone(),
        expires_at,
        territories: allowed.territories.clone(),
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
        edges,
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
    fn token_carries_todays_territories_and_ends_with_the_right() {
        let (key, _) = SigningKey::generate("k1").expect("key");
        let track: TrackView = serde_json::from_value(serde_json::json!({
            "track_id": cadenza_common::TrackId::random(),
            "title": "t", "artist": "a", "isrc": null, "territories": "WW",
            "status": "ready", "failure": null, "duration_ms": 200_000,
            "renditions": [], "loudness": null, "features": null,
        }))
        .expect("track view");
        let r = rendition(Quality::Normal);
        let policy = GrantPolicy::default();
        let limited = Allowed {
            until: Some(1_000 + 60),
            territories: "GB,SE".parse().expect("territories"),
        };
        let grant = build(&track, &r, &limited, &key, &policy, Vec::new(), 1_000);
        assert_eq!(grant.expires_at, 1_060);
        let open = Allowed {
            until: None,
            ..limited
        };
        let grant = build(&track, &r, &open, &key, &policy, Vec::new(), 1_000);
        assert_eq!(grant.expires_at, 1_000 + 3_600 + 200);
        let mut keys = cadenza_common::VerifyingKeys::default();
        keys.insert(key.kid(), key.public_key());
        let claims = keys
            .verify_signature(&grant.token.0)
            .expect("token verifies");
        assert_eq!(claims.territories.to_string(), "GB,SE");
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
}
