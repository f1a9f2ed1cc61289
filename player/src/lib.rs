//! The player library: ask for a grant, fetch encrypted byte ranges from the edges, decrypt,
//! decode, and hand PCM to a sink.
//!
//! Fetching runs on the async runtime; decoding runs on a blocking thread fed through a
//! bounded channel, so playback starts as soon as the first range is decrypted and memory
//! stays bounded whatever the track's length. When an edge fails, the next range is asked of
//! the next edge in the grant.

mod decode;
mod fetch;
mod wav;

mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cadenza_common::http::client::{self, ClientError, HttpClient};
use cadenza_common::{PlaybackGrant, PlaybackRequest, Quality, TrackId};
use http::Method;

pub use decode::DecodeReport;
pub use session::Login;
pub use wav::WavWriter;

use session::Session;

/// Why playback failed.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// The control plane refused or could not be reached.
    #[error("grant refused: {0}")]
    Grant(#[source] ClientError),
    /// Signing in failed, or the player has not signed in.
    #[error("sign-in failed: {0}")]
    SignIn(String),
    /// Every edge failed for a range.
    #[error("no edge could serve bytes {offset}-: {last_error}")]
    Edges { offset: u64, last_error: String },
    /// The grant lists no edges.
    #[error("the grant lists no edges")]
    NoEdges,
    /// The audio did not decode.
    #[error("decode failed: {0}")]
    Decode(String),
    /// Writing the output failed.
    #[error("output failed: {0}")]
    Output(#[from] std::io::Error),
}

/// What to play and where the PCM goes.
#[derive(Debug, Clone)]
pub struct PlayOptions {
    pub track: TrackId,
    pub quality: Quality,
    /// Write a 16-bit WAV here; `None` decodes and discards.
    pub wav_out: Option<PathBuf>,
    /// Size of each range request after the first.
    pub chunk_bytes: u64,
    /// Size of the first range request: small, so audio starts sooner.
    pub first_chunk_bytes: u64,
    /// Start this far into the track, through the rendition's seek index.
    pub start_at: Option<Duration>,
}

impl PlayOptions {
    /// Defaults for `track` at `quality`.
    pub fn new(track: TrackId, quality: Quality) -> Self {
        Self {
            track,
            quality,
            wav_out: None,
            chunk_bytes: 256 * 1024,
            first_chunk_bytes: 32 * 1024,
            start_at: None,
        }
    }
}

/// What a play measured.
#[derive(Debug, Clone)]
pub struct PlayReport {
    pub grant: PlaybackGrant,
    /// Encrypted bytes fetched.
    pub bytes: u64,
    /// From the grant request to the first decoded PCM frame.
    pub time_to_first_audio: Duration,
    /// From the grant request to the end of decoding.
    pub total_time: Duration,
    /// Decoder results.
    pub decoded: DecodeReport,
    /// Range requests made, and how many went to a fallback edge.
    pub requests: u32,
    pub failovers: u32,
    /// The frame (44.1 kHz) decoding resumed at: 0, or the seek point used.
    pub start_frame: u64,
}

/// A player talking to one control plane, signed in as one listener.
#[derive(Debug, Clone)]
pub struct Player {
    client: HttpClient,
    control_plane: String,
    session: Arc<Session>,
}

const GRANT_TIMEOUT: Duration = Duration::from_secs(10);

impl Player {
    /// Signs in to the control plane at `control_plane` through `client` (which must trust
    /// the services' certificates), with OAuth 2.0's password grant. The player keeps the
    /// access token fresh with the refresh token it was given.
    pub async fn sign_in(
        client: HttpClient,
        control_plane: impl Into<String>,
        login: &Login,
    ) -> Result<Self, PlayError> {
        let control_plane = control_plane.into();
        let session = Session::sign_in(&client, &control_plane, login).await?;
        Ok(Self {
            client,
            control_plane,
            session: Arc::new(session),
        })
    }

    /// An access token for the control plane's listener endpoints, fresh for a while yet.
    pub async fn access_token(&self) -> Result<String, PlayError> {
        self.session
            .access_token(&self.client, &self.control_plane)
            .await
    }

    /// Asks the control plane for a grant. A token the control plane no longer accepts
    /// (it rotated its key, say) is renewed once and the request made again.
    pub async fn grant(
        &self,
        track: &TrackId,
        quality: Quality,
    ) -> Result<PlaybackGrant, PlayError> {
        let url = format!("{}/v1/playback", self.control_plane);
        let req = PlaybackRequest {
            track_id: track.clone(),
            quality: Some(quality),
        };
        let mut renewed = false;
        loop {
            let token = self.access_token().await?;
            match client::call_json(
                &self.client,
                Method::POST,
                &url,
                Some(&token),
                Some(&req),
                GRANT_TIMEOUT,
            )
            .await
            {
                Err(ClientError::Status { status, .. })
                    if status == http::StatusCode::UNAUTHORIZED && !renewed =>
                {
                    self.session.forget(&token).await;
                    renewed = true;
                }
                answer => return answer.map_err(PlayError::Grant),
            }
        }
    }

    /// Plays a track to the end.
    pub async fn play(&self, options: &PlayOptions) -> Result<PlayReport, PlayError> {
        let started = Instant::now();
        let grant = self.grant(&options.track, options.quality).await?;
        if grant.edges.is_empty() {
            return Err(PlayError::NoEdges);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let wav_out = options.wav_out.clone();
        let decoder = tokio::task::spawn_blocking(move || decode::run(rx, wav_out, started));
        let plan = fetch::plan(&grant, options.start_at);
        let start_frame = plan.start_frame;
        let fetched = fetch::run(&self.client, &grant, options, &plan, tx).await;
        let decoded = decoder
            .await
            .map_err(|e| PlayError::Decode(format!("decoder thread failed: {e}")))?;
        let stats = fetched?;
        let decoded = decoded?;
        Ok(PlayReport {
            time_to_first_audio: decoded.first_audio_at.unwrap_or_default(),
            total_time: started.elapsed(),
            grant,
            bytes: stats.bytes,
            decoded,
            requests: stats.requests,
            failovers: stats.failovers,
            start_frame,
        })
    }
}
