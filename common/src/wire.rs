//! JSON bodies exchanged between the player, the label's pipeline and the services.

use serde::{Deserialize, Serialize};

use crate::crypto::ContentKey;
use crate::ids::{AlbumId, ArtistId, FileId, JobId, TrackId, UploadId};
use crate::territories::Territories;
use crate::token::EdgeToken;

/// A rendition tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// 96 kbps.
    Low,
    /// 160 kbps.
    Normal,
    /// 320 kbps.
    High,
}

impl Quality {
    /// Every tier, lowest first.
    pub const ALL: [Quality; 3] = [Quality::Low, Quality::Normal, Quality::High];

    /// Nominal bitrate in kbit/s.
    pub fn kbps(self) -> u32 {
        match self {
            Self::Low => 96,
            Self::Normal => 160,
            Self::High => 320,
        }
    }

    /// The lowercase name used in JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

impl std::str::FromStr for Quality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" | "96" => Ok(Self::Low),
            "normal" | "160" => Ok(Self::Normal),
            "high" | "320" => Ok(Self::High),
            _ => Err(format!("unknown quality {s:?}: use low, normal or high")),
        }
    }
}

/// The origin's answer to a master upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReceipt {
    pub upload_id: UploadId,
    pub size: u64,
    /// SHA-256 of the master, hexadecimal.
    pub sha256: String,
}

/// A resumable upload's state (`GET /v1/uploads/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    pub upload_id: UploadId,
    /// Declared length in bytes.
    pub length: u64,
    /// Bytes received and committed.
    pub offset: u64,
    /// Every byte arrived.
    pub complete: bool,
    /// The master is in the object store.
    pub stored: bool,
    /// SHA-256 of the master, hexadecimal, once complete.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The file name the client declared, sanitized.
    #[serde(default)]
    pub filename: Option<String>,
    /// Seconds since the epoch after which an incomplete upload is removed.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// A licence window: the track may be heard in `territories` from `starts_at` (inclusive)
/// until `ends_at` (exclusive), seconds since the epoch; an absent bound is open.
///
/// Text form (the CLI's `--licence`): `TERRITORIES[@START..END]`, e.g. `GB,SE@1700000000..`
/// or `WW,-CN@..1800000000`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Licence {
    pub territories: Territories,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
}

impl Licence {
    /// Licensed in `territories` for all time.
    pub fn always(territories: Territories) -> Self {
        Self {
            territories,
            starts_at: None,
            ends_at: None,
        }
    }

    /// Why the window cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        match (self.starts_at, self.ends_at) {
            (Some(s), Some(e)) if e <= s => Err(format!(
                "licence for {} ends ({e}) before it starts ({s})",
                self.territories
            )),
            _ => Ok(()),
        }
    }
}

impl std::str::FromStr for Licence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (territories, window) = s.split_once('@').unwrap_or((s, ".."));
        let territories = territories.parse().map_err(|e| format!("{e}"))?;
        let (start, end) = window
            .split_once("..")
            .ok_or_else(|| format!("licence window {window:?} is not START..END"))?;
        let bound = |b: &str| -> Result<Option<u64>, String> {
            let b = b.trim();
            if b.is_empty() {
                return Ok(None);
            }
            b.parse()
                .map(Some)
                .map_err(|_| format!("{b:?} is not seconds since the epoch"))
        };
        let licence = Licence {
            territories,
            starts_at: bound(start)?,
            ends_at: bound(end)?,
        };
        licence.check()?;
        Ok(licence)
    }
}

/// Metadata a label submits with an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRequest {
    pub upload_id: UploadId,
    pub title: String,
    /// The primary (display) artist.
    pub artist: String,
    /// Further credited artists, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub featuring: Vec<String>,
    #[serde(default)]
    pub isrc: Option<String>,
    pub territories: Territories,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<String>,
    /// Position on the album, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_number: Option<u32>,
    /// When the track may first be played, seconds since the epoch (an embargo until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_at: Option<u64>,
    /// Licence windows per territory. When absent, the track is licensed in `territories`
    /// for all time; when given, the windows alone decide where and when it plays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licences: Vec<Licence>,
}

/// What the origin registers with the control plane for an ingest: the label's metadata,
/// which label sent it, and the master's SHA-256 (with the ISRC, the idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRegistration {
    #[serde(flatten)]
    pub ingest: IngestRequest,
    pub label_id: String,
    pub master_sha256: String,
}

/// A label's new API key, shown once (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelKey {
    pub label_id: String,
    pub name: String,
    pub api_key: String,
}

/// Where a track is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackStatus {
    /// Upload stored, waiting for a transcoder.
    Received,
    /// A transcoder holds the job.
    Transcoding,
    /// Every rendition is stored: playable.
    Ready,
    /// Refused; `TrackView::failure` says why.
    Failed,
}

/// The answer to an ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub track_id: TrackId,
    pub status: TrackStatus,
    /// True when this ingest repeated an earlier one (same upload, or same ISRC and master)
    /// and the existing track was returned.
    #[serde(default)]
    pub duplicate: bool,
}

/// One rendition as the transcoder reports it and the control plane stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenditionRecord {
    pub quality: Quality,
    pub file_id: FileId,
    /// Size of the encrypted file in bytes.
    pub size: u64,
    /// Measured mean bitrate of the Vorbis stream, kbit/s.
    pub bitrate_kbps: u32,
    pub key: ContentKey,
    /// SHA-256 of the unencrypted Ogg file, hexadecimal.
    pub plaintext_sha256: String,
    /// Where to start reading for a given time.
    pub seek_index: SeekIndex,
}

/// EBU R128 measurements of a master and the playback gain derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Loudness {
    /// Integrated loudness, LUFS (−70, the BS.1770 absolute gate, for silence).
    pub integrated_lufs: f64,
    /// Highest true peak over all channels, dBTP.
    pub true_peak_dbtp: f64,
    /// Gain toward −14 LUFS, limited so the true peak stays at or under −1 dBTP. Players
    /// apply it; it is never applied to the stored samples.
    pub track_gain_db: f64,
}

/// What a track sounds like, for recommendations (see the transcoder's `features` module).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AcousticFeatures {
    /// Beats per minute, when the track has a measurable pulse (and is at least 4 s long).
    pub tempo_bpm: Option<f64>,
    /// Mean spectral centroid, Hz: brightness.
    pub spectral_centroid_hz: f64,
    /// Mean RMS level of non-silent frames, dBFS.
    pub energy_dbfs: f64,
    /// Spread of frame levels (95th − 10th percentile), dB.
    pub dynamics_db: f64,
}

/// A seek point: decoding from byte `.1` (after the headers) resumes at PCM frame `.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekPoint(pub u64, pub u64);

/// How to seek in a rendition with one range request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekIndex {
    /// Bytes `0..header_bytes` hold the Vorbis headers a decoder needs first.
    pub header_bytes: u64,
    /// Exact length of the rendition in PCM frames at 44.1 kHz.
    pub frames: u64,
    /// Points in increasing order of frame and offset, about a hundred.
    pub points: Vec<SeekPoint>,
}

impl SeekIndex {
    /// The point to start from to reach `frame`: the last one at or before it.
    pub fn point_for(&self, frame: u64) -> Option<SeekPoint> {
        let i = self.points.partition_point(|p| p.0 <= frame);
        i.checked_sub(1).map(|i| self.points[i])
    }
}

/// A track as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackView {
    pub track_id: TrackId,
    pub title: String,
    pub artist: String,
    /// The primary artist in the catalogue.
    #[serde(default)]
    pub artist_id: Option<ArtistId>,
    /// The album in the catalogue.
    #[serde(default)]
    pub album_id: Option<AlbumId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub featuring: Vec<String>,
    pub isrc: Option<String>,
    #[serde(default)]
    pub album: Option<String>,
    #[serde(default)]
    pub track_number: Option<u32>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub release_at: Option<u64>,
    /// The label that ingested it.
    #[serde(default)]
    pub label_id: Option<String>,
    /// When the track was taken down (seconds since the epoch); no grants after it.
    #[serde(default)]
    pub taken_down_at: Option<u64>,
    pub territories: Territories,
    /// Where and when it is licensed.
    #[serde(default)]
    pub licences: Vec<Licence>,
    pub status: TrackStatus,
    /// Why the track failed, when it did.
    pub failure: Option<String>,
    /// Duration of the master in milliseconds, once transcoded.
    pub duration_ms: Option<u64>,
    /// Renditions by quality, once ready (keys omitted).
    pub renditions: Vec<RenditionSummary>,
    /// Loudness of the master, once transcoded.
    pub loudness: Option<Loudness>,
    /// Acoustic features, once transcoded.
    pub features: Option<AcousticFeatures>,
}

/// A track in a listing (an album's or an artist's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackSummary {
    pub track_id: TrackId,
    pub title: String,
    /// The primary artist's name.
    pub artist: String,
    #[serde(default)]
    pub track_number: Option<u32>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// An album in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlbumSummary {
    pub album_id: AlbumId,
    pub title: String,
    #[serde(default)]
    pub release_at: Option<u64>,
}

/// An album and its playable tracks in order (`GET /v1/albums/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlbumView {
    pub album_id: AlbumId,
    pub title: String,
    pub artist_id: ArtistId,
    pub artist: String,
    #[serde(default)]
    pub label_id: Option<String>,
    #[serde(default)]
    pub release_at: Option<u64>,
    pub tracks: Vec<TrackSummary>,
}

/// An artist, their albums and the playable tracks that credit them (`GET /v1/artists/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtistView {
    pub artist_id: ArtistId,
    pub name: String,
    pub albums: Vec<AlbumSummary>,
    /// One page of the artist's playable tracks, newest first.
    pub tracks: Vec<TrackSummary>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A rendition without its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenditionSummary {
    pub quality: Quality,
    pub file_id: FileId,
    pub size: u64,
    pub bitrate_kbps: u32,
}

/// A transcode job handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLease {
    pub job_id: JobId,
    pub track_id: TrackId,
    pub upload_id: UploadId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Seconds since the epoch after which the job may be given to another worker.
    pub lease_expires_at: u64,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum JobOutcome {
    /// Every rendition is stored at the origin.
    Completed {
        renditions: Vec<RenditionRecord>,
        /// Frames in the master at its own rate, and that rate.
        master_frames: u64,
        master_sample_rate: u32,
        /// Loudness of the master.
        loudness: Loudness,
        /// Acoustic features of the rendition signal.
        features: AcousticFeatures,
    },
    /// The master was refused, with the reason shown to the label.
    Failed { reason: String },
}

/// A player's request for a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaybackRequest {
    pub track_id: TrackId,
    #[serde(default)]
    pub quality: Option<Quality>,
}

/// Everything a player needs to fetch, decrypt and decode one rendition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybackGrant {
    pub track_id: TrackId,
    pub quality: Quality,
    pub file_id: FileId,
    /// Size of the encrypted file in bytes.
    pub size: u64,
    /// Always `"ogg/vorbis"` today.
    pub format: String,
    pub bitrate_kbps: u32,
    pub duration_ms: u64,
    pub key: ContentKey,
    /// Edge base URLs, best first; the file is at `{edge}/a/{file_id}`.
    pub edges: Vec<String>,
    /// Bearer token for the edges.
    pub token: EdgeToken,
    /// When the token expires, seconds since the epoch.
    pub expires_at: u64,
    /// Where to read from to start at a given time.
    pub seek_index: SeekIndex,
    /// Loudness of the master; players apply `track_gain_db` to normalise.
    pub loudness: Option<Loudness>,
}
