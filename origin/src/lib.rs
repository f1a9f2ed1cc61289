//! The origin: where masters arrive and renditions live.
//!
//! Labels upload masters and submit their metadata here; the origin stores masters in the
//! object store, registers the track and its transcode job with the control plane, and serves
//! rendition bytes to edges by range. Storage sits behind [`ObjectStore`]: [`S3Store`] for any
//! S3-compatible bucket, and the embedded default [`LocalDirStore`], a directory written with
//! fsync + link. The
//! origin never decodes audio and holds no content keys.

mod resumable;
mod s3;
mod service;
mod store;
pub mod tus;
mod uploads;

pub use s3::{MIN_PART_BYTES, S3Config, S3Store};
pub use service::{Origin, OriginConfig};
pub use store::{LocalDirStore, ObjectKey, ObjectRead, ObjectStore, StoreError};
pub use uploads::{Phase, UploadError, UploadState, Uploads};
