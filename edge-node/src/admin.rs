//! The edge's admin listener: operators' commands and observability, kept off the public
//! port.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /healthz` | — | the process is up |
//! | `GET /readyz` | — | the edge can serve (it holds token keys) and is not draining |
//! | `GET /metrics` | — | Prometheus text exposition |
//! | `GET /admin/v1/stats` | bearer | cache size and counters as JSON |
//! | `POST /admin/v1/purge` | bearer | `{"file_ids": [...]}`: drop every cached slice of those files |
//! | `POST /admin/v1/prewarm` | bearer | `{"file_ids": [...], "slices": K}`: fetch the first K slices (all when absent) |

use std::sync::Arc;

use cadenza_common::FileId;
use cadenza_common::http::{
    ApiError, Body, ConnInfo, Handler, full, health, json_response, read_json, require_bearer,
};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::cache::SliceCache;

/// The admin service.
#[derive(Debug)]
pub struct EdgeAdmin {
    cache: Arc<SliceCache>,
    token: String,
    ready: bool,
    /// Set once shutdown has begun: `/readyz` then says 503, so a balancer's health check
    /// takes the edge out of rotation while it still serves.
    draining: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Deserialize)]
struct Purge {
    file_ids: Vec<FileId>,
}

#[derive(Debug, Deserialize)]
struct Prewarm {
    file_ids: Vec<FileId>,
    #[serde(default)]
    slices: Option<u64>,
}

/// Most files one purge or pre-warm may name.
const MAX_FILES: usize = 10_000;

impl EdgeAdmin {
    /// Admin for `cache`, commands authorised by `token`; `ready` is whether the edge has
    /// what it needs to serve.
    pub fn new(cache: Arc<SliceCache>, token: String, ready: bool) -> Self {
        Self {
            cache,
            token,
            ready,
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers 503 `draining`.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        require_bearer(req.headers(), &self.token)
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => Ok(health()),
            (&Method::GET, "/readyz")
                if self.draining.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "draining",
                    "the edge is shutting down",
                ))
            }
            (&Method::GET, "/readyz") if self.ready => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"ready": true}),
            )),
            (&Method::GET, "/readyz") => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "no token keys loaded",
            )),
            (&Method::GET, "/metrics") => {
                self.cache.usage().await;
                self.cache.disk_usage().await;
                let mut resp = Response::new(full(self.cache.metrics().render()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                Ok(resp)
            }
            (&Method::GET, "/admin/v1/stats") => {
                self.authorize(&req)?;
                let (bytes, entries) = self.cache.usage().await;
                let (disk_bytes, disk_slices) = self.cache.disk_usage().await.unwrap_or((0, 0));
                let m = self.cache.metrics();
                let disks: Vec<_> = self
                    .cache
                    .disks()
                    .into_iter()
                    .map(|(dir, in_service, bytes)| {
                        serde_json::json!({
                            "dir": dir.display().to_string(),
                            "in_service": in_service,
                            "bytes": bytes,
                        })
                    })
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({
                        "cache_bytes": bytes,
                        "cache_slices": entries,
                        "slice_bytes": self.cache.math().slice_size(),
                        "disk_bytes": disk_bytes,
                        "disk_slices": disk_slices,
                        "disk_index_bytes": m.disk_index_bytes.get(),
                        "disk_scanning": m.disk_scanning.get() == 1,
                        "disk_hits": m.disk_hits.get(),
                        "disk_corrupt": m.disk_corrupt.get(),
                        "disk_read_errors": m.disk_read_errors.get(),
                        "disk_write_errors": m.disk_write_errors.get(),
                        "disks": disks,
                        "hits": m.hits.get(),
                        "misses": m.misses.get(),
                        "collapsed_waiters": m.collapsed.get(),
                        "prefetches": m.prefetches.get(),
                        "origin_fetches": self.cache.origin_fetches(),
                        "bytes_served": m.bytes_served.get(),
                        // Process-wide: slices held in memory files, and HTTP/1.1 body
                        // bytes sent from them by sendfile.
                        "memory_files": cadenza_common::mapped::live(),
                        "sendfile_bytes": cadenza_common::http::h1::sent_by_file(),
                        // HTTP/3 body bytes handed to quinn by reference, and copied.
                        "h3_body_bytes_lent": crate::h3_body_bytes().0,
                        "h3_body_bytes_copied": crate::h3_body_bytes().1,
                    }),
                ))
            }
            (&Method::POST, "/admin/v1/purge") => {
                self.authorize(&req)?;
                let purge: Purge = read_json(req.into_body(), 1 << 20).await?;
                if purge.file_ids.len() > MAX_FILES {
                    return Err(ApiError::bad_request(
                        "too_many",
                        format!("at most {MAX_FILES} files per purge"),
                    ));
                }
                let purged = self.cache.purge(&purge.file_ids).await;
                tracing::info!(purged, "purged files");
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"purged": purged}),
                ))
            }
            (&Method::POST, "/admin/v1/prewarm") => {
                self.authorize(&req)?;
                let warm: Prewarm = read_json(req.into_body(), 1 << 20).await?;
                if warm.file_ids.len() > MAX_FILES {
                    return Err(ApiError::bad_request(
                        "too_many",
                        format!("at most {MAX_FILES} files per pre-warm"),
                    ));
                }
                let mut fetched = 0u64;
                let mut failed = Vec::new();
                for id in &warm.file_ids {
                    match self.cache.warm(id, warm.slices).await {
                        Ok(n) => fetched += n,
                        Err(e) => {
                            failed.push(serde_json::json!({"file_id": id, "error": e.to_string()}))
                        }
                    }
                }
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"slices": fetched, "failed": failed}),
                ))
            }
            _ => Err(ApiError::not_found("no such endpoint")),
        }
    }
}

impl Handler for EdgeAdmin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        self.route(req)
            .await
            .unwrap_or_else(ApiError::into_response)
    }
}
