//! The control plane: catalogue, transcode jobs and playback grants.
//!
//! It owns the truth about tracks — metadata, territories, renditions and their content keys
//! — in a SQL store (SQLite embedded), queues transcode jobs and leases them to workers, and
//! answers `POST /v1/playback` with a grant: the rendition's file id and key, the edges to
//! fetch it from, and an edge token it signs with Ed25519. It never touches audio bytes.
//! SQLite is the embedded default and PostgreSQL the production store, behind one [`Store`].

pub mod auth;
pub mod fleet;
mod grant;
pub mod openapi;
pub mod rights;
pub mod search;
mod service;
mod store;

pub use fleet::{EdgeSite, Fleet};
pub use grant::GrantPolicy;
pub use service::{ControlPlane, ControlPlaneConfig, CorsOrigins};
pub use store::{
    Backend, ClientKind, KeyRing, MasterKey, NewClient, Refreshed, Registered, Released, Store,
    StoreError, TrackCursor, UserExport, name_key, retry_delay,
};
