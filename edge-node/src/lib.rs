//! The edge: serves encrypted renditions by byte range to players holding a signed token.
//!
//! A request for `/a/{file_id}` is checked (token signature, expiry and file; listener
//! country against the token's territories when a GeoIP database is configured), then
//! answered from a cache of fixed, aligned slices held in memory (moka, weighted by bytes).
//! A missing slice is fetched once from the origin however many requests want it — moka's
//! `try_get_with` collapses concurrent loads of one key. Renditions are immutable and
//! content-addressed, so a cached slice never goes stale. The edge holds no content keys.

mod admin;
mod cache;
mod h3;
mod metrics;
mod service;
mod slices;

pub use admin::EdgeAdmin;
pub use cache::{SliceCache, UpstreamConfig};
pub use h3::{H3Error, H3Limits, H3Listening, serve_h3};
pub use metrics::EdgeMetrics;
pub use service::{Edge, EdgeConfig, UnknownCountry};
pub use slices::SliceMath;
