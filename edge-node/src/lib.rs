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
mod disk;
mod disks;
mod h3;
mod memo;
mod metrics;
mod resident;
mod service;
mod shield;
mod slice_index;
mod slices;
mod upstream;

pub use admin::EdgeAdmin;
pub use cache::{SliceCache, UpstreamConfig, slice_capacity};
pub use disk::DiskTier;
pub use disks::Disks;
pub use h3::{
    FrameTooLong, FrameWatch, H3Error, H3Limits, H3Listening, body_bytes as h3_body_bytes, serve_h3,
};
pub use metrics::EdgeMetrics;
pub use service::{CorsOrigins, Edge, EdgeConfig, UnknownCountry};
pub use shield::Shield;
pub use slice_index::SliceIndex;
pub use slices::{SliceMath, SlicePart};
pub use upstream::{Breaker, Upstreams};

/// Checks the GeoIP database file every `every`, and at once on SIGHUP (`systemctl reload`
/// after `geoipupdate`), and swaps in a changed, valid one, until `shutdown` fires. A bad file
/// is logged and the previous database keeps serving.
pub fn spawn_geo_reloader(
    geo: std::sync::Arc<cadenza_geo::ReloadingGeo>,
    every: std::time::Duration,
    shutdown: cadenza_common::http::Shutdown,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    cadenza_common::follow::spawn_follower("the GeoIP database", every, shutdown, move || match geo
        .reload_if_changed()
    {
        Ok(true) => tracing::info!("GeoIP database reloaded"),
        Ok(false) => {}
        Err(e) => tracing::error!(
            error = %e,
            "GeoIP reload refused; the previous database stays in service"
        ),
    })
}
