//! The edge's HTTP API.
//!
//! | route | what |
//! |---|---|
//! | `GET, HEAD /a/{file_id}` | rendition bytes by range; token in `Authorization: Bearer` or `?t=` |
//! | `GET /healthz` | liveness |

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cadenza_common::http::{
    ApiError, Body, BoxError, ConnInfo, Handler, bearer_token, json_response, plan_span,
    range_plan, ranged_response,
};
use cadenza_common::{FileId, TokenClaims, TokenError, VerifyingKeys};
use cadenza_geo::GeoDb;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::cache::{FetchError, SliceCache};
use crate::slices::SlicePart;

/// What to do with a listener whose country the GeoIP database does not know (private
/// addresses, new allocations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownCountry {
    /// Serve them.
    Allow,
    /// Refuse them with 451.
    Deny,
}

/// How the edge checks requests.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Public keys of the control plane's token signers.
    pub keys: VerifyingKeys,
    /// How far past expiry a token is still accepted.
    pub token_leeway: Duration,
    /// Country database; without one, territories are not checked here.
    pub geo: Option<Arc<GeoDb>>,
    /// Policy for addresses the database does not place.
    pub unknown_country: UnknownCountry,
}

/// The edge service.
#[derive(Debug)]
pub struct Edge {
    config: EdgeConfig,
    cache: Arc<SliceCache>,
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::NotFound => ApiError::not_found("no such file"),
            FetchError::Upstream(detail) => {
                tracing::warn!(%detail, "origin fetch failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    "the origin could not be reached",
                )
            }
        }
    }
}

fn token_refused(e: &TokenError) -> ApiError {
    ApiError::forbidden(e.reason(), e.to_string())
}

impl Edge {
    /// An edge answering from `cache`.
    pub fn new(config: EdgeConfig, cache: Arc<SliceCache>) -> Self {
        Self { config, cache }
    }

    /// The slice cache, for stats and tests.
    pub fn cache(&self) -> &Arc<SliceCache> {
        &self.cache
    }

    fn check_token(&self, req: &Request<Incoming>, id: &FileId) -> Result<TokenClaims, ApiError> {
        let token = bearer_token(req.headers())
            .or_else(|| {
                req.uri()
                    .query()?
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("t="))
            })
            .unwrap_or("");
        self.config
            .keys
            .verify(token, id, SystemTime::now(), self.config.token_leeway)
            .map_err(|e| token_refused(&e))
    }

    fn check_territory(&self, claims: &TokenClaims, conn: &ConnInfo) -> Result<(), ApiError> {
        let Some(geo) = &self.config.geo else {
            return Ok(());
        };
        let unavailable = |reason: &'static str, msg: String| {
            ApiError::new(StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, reason, msg)
        };
        match geo.country(conn.peer.ip()) {
            Some(country) if claims.territories.allows(&country) => Ok(()),
            Some(country) => Err(unavailable(
                "territory",
                format!("not licensed in {country}"),
            )),
            None if self.config.unknown_country == UnknownCountry::Allow => Ok(()),
            None => Err(unavailable(
                "country_unknown",
                "listener country unknown".into(),
            )),
        }
    }

    async fn serve_file(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let id: FileId = id
            .parse()
            .map_err(|e: cadenza_common::IdError| ApiError::bad_request("bad_id", e.to_string()))?;
        let claims = self.check_token(&req, &id)?;
        self.check_territory(&claims, &conn)?;
        let size = self.cache.size(&id).await?;
        let plan = range_plan(req.headers(), size);
        let mut body = None;
        if req.method() == Method::GET
            && let Some((offset, len)) = plan_span(plan, size).filter(|(_, len)| *len > 0)
        {
            body = Some(self.stream(id.clone(), offset, len).await?);
        }
        Ok(ranged_response(
            req.method(),
            plan,
            size,
            id.as_str(),
            |_, _| body.take().unwrap_or_else(cadenza_common::http::empty),
        ))
    }

    /// A body for `len` bytes from `offset`. The first slice is in hand before the response
    /// starts, so an origin failure is a 502 rather than a cut-off body; later slices are
    /// fetched as the client reads.
    async fn stream(&self, id: FileId, offset: u64, len: u64) -> Result<Body, ApiError> {
        let mut parts = self.cache.math().parts(offset, len);
        let Some(first) = parts.next() else {
            return Ok(cadenza_common::http::empty());
        };
        let first_bytes = cut(&self.cache.slice(&id, first.index).await?, first)?;
        let cache = self.cache.clone();
        let rest =
            futures_util::stream::unfold((parts, cache, id), |(mut parts, cache, id)| async move {
                let part = parts.next()?;
                let item = match cache.slice(&id, part.index).await {
                    Ok(slice) => cut(&slice, part).map_err(|e| Box::new(e) as BoxError),
                    Err(e) => Err(Box::new(e) as BoxError),
                };
                Some((item.map(Frame::data), (parts, cache, id)))
            });
        let head = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(first_bytes))]);
        Ok(StreamBody::new(futures_util::StreamExt::chain(head, rest)).boxed_unsync())
    }
}

/// The part of a slice a request wants.
fn cut(slice: &Bytes, part: SlicePart) -> Result<Bytes, ApiError> {
    slice
        .get(part.skip..part.skip + part.take)
        .map(|_| slice.slice(part.skip..part.skip + part.take))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "short_slice",
                "cached slice is short",
            )
        })
}

impl Handler for Edge {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let result = match (req.method(), segments.as_slice()) {
            (&Method::GET | &Method::HEAD, ["a", id]) => {
                let id = (*id).to_owned();
                self.serve_file(req, conn, &id).await
            }
            (&Method::GET, ["healthz"]) => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"ok": true}),
            )),
            (_, ["a", _]) => Err(ApiError::method_not_allowed()),
            _ => Err(ApiError::not_found("no such endpoint")),
        };
        result.unwrap_or_else(ApiError::into_response)
    }
}
