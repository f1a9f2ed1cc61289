//! Types and plumbing shared by every Cadenza service and the player.
//!
//! This crate holds what crosses a process boundary — identifiers, the playback grant, the
//! signed edge token, content encryption — and the HTTP plumbing written once for the edge,
//! the origin and the control plane (TLS, ALPN-negotiated HTTP/1.1 and HTTP/2, limits,
//! graceful shutdown, error → response). It holds no service logic: nothing here knows about
//! catalogues, caches or codecs.

mod crypto;
pub mod follow;
pub mod http;
mod ids;
pub mod listen_fds;
pub mod mapped;
mod range;
mod territories;
mod token;
mod wire;

pub use crypto::{ContentKey, CryptoError, random_bytes};
pub use ids::{
    AlbumId, ArtistId, FileId, IdError, JobId, TrackId, UploadId, hex_decode, hex_encode,
};
pub use range::{ByteRange, RangeRequest, explicit_span, first_byte, parse_range};
pub use territories::{Territories, TerritoryError};
pub use token::{
    EdgeToken, SigningKey, TokenClaims, TokenError, VerifyingKeys, check_claims,
    verify_leeway_default,
};
pub use wire::{
    AcousticFeatures, AlbumSummary, AlbumView, ArtistView, IngestRequest, IngestResponse, JobLease,
    JobOutcome, LabelKey, Licence, Loudness, PlaybackGrant, PlaybackRequest, Quality,
    RenditionRecord, RenditionSummary, SeekIndex, SeekPoint, TrackRegistration, TrackStatus,
    TrackSummary, TrackView, UploadReceipt, UploadStatus,
};
