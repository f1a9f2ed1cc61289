//! The edge's HTTP API.
//!
//! | route | what |
//! |---|---|
//! | `GET, HEAD /a/{file_id}` | rendition bytes by range; token in `Authorization: Bearer` or `?t=` |
//! | `GET, HEAD /v1/objects/{file_id}` | the same bytes for the region's other edges (shield tier); the edge key in `Authorization: Bearer` |
//! | `GET /healthz` | liveness, and the ids of the token keys in service (`{"ok": true, "token_keys": [..]}`) |
//! | `OPTIONS /a/{file_id}` | a browser's CORS preflight for a web player (no token asked) |
//!
//! Every answer under `/a/` (errors included, so a web player's script can read the reason)
//! carries CORS headers for the origins [`CorsOrigins`] allows.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use cadenza_common::http::CorsOrigins;
use cadenza_common::http::{
    ApiError, Body, BoxError, ConnInfo, Cors, Handler, bearer_token, json_response, plan_span,
    range_plan, ranged_response,
};
use cadenza_common::{FileId, TokenClaims, TokenError, VerifyingKeys, check_claims, explicit_span};
use cadenza_geo::{Cidr, ReloadingGeo, client_ip};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::cache::{FetchError, Outcome, SliceCache};

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
    /// Public keys of the control plane's token signers the edge starts with (taken by
    /// [`Edge::new`]; [`Edge::replace_token_keys`] changes them after).
    pub keys: VerifyingKeys,
    /// How far past expiry a token is still accepted.
    pub token_leeway: Duration,
    /// Country database, reloaded when its file changes; without one, territories are not
    /// checked here.
    pub geo: Option<Arc<ReloadingGeo>>,
    /// Proxies whose `X-Forwarded-For` is believed (load balancers in front of the edge).
    pub trusted_proxies: Vec<Cidr>,
    /// Policy for addresses the database does not place.
    pub unknown_country: UnknownCountry,
    /// Slices past the end of a request to fetch ahead of the player.
    pub read_ahead_slices: u64,
    /// `Alt-Svc` value advertising HTTP/3, when the edge serves it (on TCP responses only:
    /// a client already on HTTP/3 has no use for it).
    pub alt_svc: Option<http::HeaderValue>,
    /// Log every request (target `access`: method, path, status, bytes, protocol, client —
    /// the address the territory check places —, peer — the connection's, with its port —,
    /// milliseconds).
    pub access_log: bool,
    /// The key the region's other edges present to fetch slices of files this edge owns
    /// (`/v1/objects/{id}`, the origin's object API); `None` serves no peers.
    pub peer_key: Option<String>,
    /// Web pages whose scripts may read rendition responses (CORS).
    pub cors: CorsOrigins,
}

/// RFC 9211's header: how the cache handled the request.
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// What a web player's script may send and read, besides the CORS-safelisted headers.
const CORS_METHODS: &str = "GET, HEAD";
const CORS_REQUEST_HEADERS: &str = "Authorization, Range, If-Range, If-None-Match";
const CORS_EXPOSED_HEADERS: &str = "Content-Range, Accept-Ranges, ETag, Cache-Status";

/// The edge service.
#[derive(Debug)]
pub struct Edge {
    config: EdgeConfig,
    cache: Arc<SliceCache>,
    /// CORS for `/a/`, from `config.cors`.
    cors: Cors,
    /// The token keys in service, replaced whole by [`Edge::replace_token_keys`]; read only
    /// to check a signature not remembered.
    keys: std::sync::RwLock<VerifyingKeys>,
    /// The number of the key set in service, raised under `keys`' write lock at each
    /// replacement: a remembered token is checked against it with one load, no lock.
    key_set: std::sync::atomic::AtomicU64,
    /// Tokens whose signature was checked, by their text, with the number of the key set
    /// that checked it: an entry of an older set is checked again, so a key withdrawn stops
    /// working at once. Entries live at most [`VERIFIED_TTL`]; expiry and file are checked
    /// on every use regardless.
    verified: crate::memo::Memo<String, (u64, TokenClaims)>,
}

/// Tokens remembered as verified.
const VERIFIED_TOKENS: usize = 50_000;
/// How long a verified token is remembered.
pub const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

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
    pub fn new(mut config: EdgeConfig, cache: Arc<SliceCache>) -> Self {
        let keys = std::mem::take(&mut config.keys);
        cache.metrics().token_keys_in_service(&keys.ids());
        let cors = Cors::new(
            config.cors.clone(),
            CORS_METHODS,
            CORS_REQUEST_HEADERS,
            CORS_EXPOSED_HEADERS,
        );
        Self {
            keys: std::sync::RwLock::new(keys),
            key_set: std::sync::atomic::AtomicU64::new(0),
            config,
            cors,
            cache,
            verified: crate::memo::Memo::new(VERIFIED_TOKENS, Some(VERIFIED_TTL)),
        }
    }

    /// Puts `keys` in service in place of the token keys before, for the next request (a
    /// rotation's new key added; later the old one withdrawn). Tokens already verified are
    /// checked again against the new set. False, and nothing done, when `keys` are the keys
    /// in service.
    pub fn replace_token_keys(&self, keys: VerifyingKeys) -> bool {
        let mut current = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if *current == keys {
            return false;
        }
        self.cache.metrics().token_keys_in_service(&keys.ids());
        *current = keys;
        self.key_set
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        true
    }

    fn current_keys(&self) -> std::sync::RwLockReadGuard<'_, VerifyingKeys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The slice cache, for stats and tests.
    pub fn cache(&self) -> &Arc<SliceCache> {
        &self.cache
    }

    async fn check_token(&self, req: &Parts, id: &FileId) -> Result<TokenClaims, ApiError> {
        let token = bearer_token(&req.headers)
            .or_else(|| {
                req.uri
                    .query()?
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("t="))
            })
            .unwrap_or("");
        // A player sends the same token with every range of a track: its signature is checked
        // once and remembered; expiry and file are checked on every request.
        let set = self.key_set.load(std::sync::atomic::Ordering::Acquire);
        let claims = match self.verified.get(token) {
            Some((checked_by, claims)) if checked_by == set => claims,
            _ => {
                // Under the read lock the set cannot change, so the number read with it
                // is the one that checked.
                let keys = self.current_keys();
                let set = self.key_set.load(std::sync::atomic::Ordering::Acquire);
                let claims = keys
                    .verify_signature(token)
                    .map_err(|e| token_refused(&e))?;
                drop(keys);
                self.verified
                    .insert(token.to_owned(), (set, claims.clone()));
                claims
            }
        };
        check_claims(&claims, id, SystemTime::now(), self.config.token_leeway)
            .map_err(|e| token_refused(&e))?;
        Ok(claims)
    }

    async fn serve_file(
        &self,
        req: &Parts,
        client: IpAddr,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let id: FileId = id
            .parse()
            .map_err(|e: cadenza_common::IdError| ApiError::bad_request("bad_id", e.to_string()))?;
        let claims = self.check_token(req, &id).await?;
        check_territory(&self.config, &claims, client)?;
        self.serve_bytes(req, id, true).await
    }

    /// A slice range for another edge of the region, which owns no token: the edge key
    /// authorises it. The asking edge reads ahead itself, so this one does not.
    async fn serve_peer(&self, req: &Parts, id: &str) -> Result<Response<Body>, ApiError> {
        let expected = self
            .config
            .peer_key
            .as_deref()
            .ok_or_else(|| ApiError::not_found("no such endpoint"))?;
        cadenza_common::http::require_bearer(&req.headers, expected)?;
        let id: FileId = id
            .parse()
            .map_err(|e: cadenza_common::IdError| ApiError::bad_request("bad_id", e.to_string()))?;
        self.serve_bytes(req, id, false).await
    }

    /// The requested bytes of `id` from the cache, reading ahead when `read_ahead` and the
    /// request looks sequential.
    async fn serve_bytes(
        &self,
        req: &Parts,
        id: FileId,
        read_ahead: bool,
    ) -> Result<Response<Body>, ApiError> {
        let slice_size = self.cache.math().slice_size();
        let range = req.headers.get(http::header::RANGE).map(|v| v.as_bytes());
        let (first_hint, last_hint) = explicit_span(range).unwrap_or((0, None));
        // A file whose size is not known yet is learnt from the bytes asked for, fetched
        // now: their fetch is this request's, whatever the body's first read finds.
        let (size, learnt_by) = self.cache.size_via(&id, first_hint, last_hint).await?;
        let plan = range_plan(&req.headers, size, id.as_str());
        let mut body = None;
        if req.method == Method::GET
            && let Some((offset, len)) = plan_span(plan, size).filter(|(_, len)| *len > 0)
        {
            // Audio is read front to back: when this request starts a file or continues where
            // an earlier one ended, warm the slices after it now. A random seek does not pay
            // for slices nobody may ask for.
            let first = offset / slice_size;
            let last = (offset + len - 1) / slice_size;
            let sequential = offset == 0 || (first > 0 && self.cache.holds(&id, first - 1));
            if read_ahead && sequential {
                self.cache
                    .prefetch(&id, last + 1, self.config.read_ahead_slices, size);
            }
            body = Some(self.stream(id.clone(), offset, len, sequential).await?);
        }
        let outcome = body
            .as_ref()
            .map(|(_, outcome)| learnt_by.unwrap_or(*outcome));
        let mut resp = ranged_response(&req.method, plan, size, id.as_str(), |_, _| {
            body.take()
                .map_or_else(cadenza_common::http::empty, |(body, _)| body)
        });
        // Where the bytes came from (RFC 9211): a player's developer or an operator with
        // curl sees a hit, a partial hit or a miss without the metrics.
        if let Some(outcome) = outcome {
            resp.headers_mut().insert(
                CACHE_STATUS,
                http::HeaderValue::from_static(outcome.cache_status()),
            );
        }
        Ok(resp)
    }

    /// A body for `len` bytes from `offset`, and where its first slice came from. The first
    /// slice is in hand before the response starts, so an origin failure is a 502 rather
    /// than a cut-off body; later slices are fetched as the client reads. A `sequential`
    /// reader gets whole slices (it will want the rest); a random seek fetches only what it
    /// asked for when that is cold.
    async fn stream(
        &self,
        id: FileId,
        offset: u64,
        len: u64,
        sequential: bool,
    ) -> Result<(Body, Outcome), ApiError> {
        let mut parts = self.cache.math().parts(offset, len);
        let Some(first) = parts.next() else {
            return Ok((cadenza_common::http::empty(), Outcome::Memory));
        };
        let (first_bytes, outcome) = self.cache.part_from(&id, first, sequential).await?;
        // A hit only if the later slices are held too (RFC 9211's `fwd=partial` otherwise).
        let last = (offset + len - 1) / self.cache.math().slice_size();
        let outcome = match outcome {
            Outcome::Memory | Outcome::Disk
                if (first.index + 1..=last).any(|i| !self.cache.holds_anywhere(&id, i)) =>
            {
                Outcome::Partial
            }
            outcome => outcome,
        };
        let cache = self.cache.clone();
        let rest = futures_util::stream::unfold(
            (parts, cache, id),
            move |(mut parts, cache, id)| async move {
                let part = parts.next()?;
                let item = cache
                    .part(&id, part, sequential)
                    .await
                    .map_err(|e| Box::new(e) as BoxError);
                Some((item.map(Frame::data), (parts, cache, id)))
            },
        );
        let head = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(first_bytes))]);
        let body = StreamBody::new(futures_util::StreamExt::chain(head, rest)).boxed_unsync();
        Ok((body, outcome))
    }
}

/// Refuses (451) a listener whose country is outside the token's territories. Without a
/// GeoIP database territories are not checked here (the control plane still is the one that
/// grants).
fn check_territory(config: &EdgeConfig, claims: &TokenClaims, ip: IpAddr) -> Result<(), ApiError> {
    let Some(geo) = &config.geo else {
        return Ok(());
    };
    let unavailable = |reason: &'static str, msg: String| {
        ApiError::new(StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, reason, msg)
    };
    match geo.get().country(ip) {
        Some(country) if claims.territories.allows(&country) => Ok(()),
        Some(country) => Err(unavailable(
            "territory",
            format!("not licensed in {country}"),
        )),
        None if config.unknown_country == UnknownCountry::Allow => Ok(()),
        None => Err(unavailable(
            "country_unknown",
            "listener country unknown".into(),
        )),
    }
}

impl Edge {
    /// Answers one request, whatever the protocol it came on (`protocol` labels metrics).
    pub async fn respond(
        &self,
        req: &Parts,
        conn: ConnInfo,
        protocol: &'static str,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let is_get = req.method == Method::GET;
        let path = req.uri.path();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // The client past trusted proxies' headers: what the territory check places, and what
        // the access log names. Worked out once, and only for a request that needs it.
        let client_of = || {
            let forwarded = req
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            client_ip(conn.peer.ip(), forwarded, &self.config.trusted_proxies)
        };
        let mut client = None;
        let result = match (&req.method, segments.as_slice()) {
            (&Method::GET | &Method::HEAD, ["a", id]) => {
                let client = *client.get_or_insert_with(client_of);
                self.serve_file(req, client, id).await
            }
            (&Method::GET | &Method::HEAD, ["v1", "objects", id]) => self.serve_peer(req, id).await,
            // Liveness, with the token keys in service: the control plane reads them before
            // it signs with a new key.
            (&Method::GET, ["healthz"]) => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"ok": true, "token_keys": self.current_keys().ids()}),
            )),
            // A web player's preflight carries no token; the GET that follows does.
            (&Method::OPTIONS, ["a", _]) => {
                self.cors.preflight(req.headers.get(http::header::ORIGIN))
            }
            (_, ["a", _]) => Err(ApiError::method_not_allowed()),
            _ => Err(ApiError::not_found("no such endpoint")),
        };
        let mut resp = result.unwrap_or_else(ApiError::into_response);
        if let ["a", _] = segments.as_slice() {
            self.cors
                .apply(req.headers.get(http::header::ORIGIN), &mut resp);
        }
        if let Some(alt_svc) = self.config.alt_svc.as_ref().filter(|_| protocol != "h3") {
            resp.headers_mut()
                .insert(http::header::ALT_SVC, alt_svc.clone());
        }
        let m = self.cache.metrics();
        m.requests
            .with_label_values(&[protocol, resp.status().as_str()])
            .inc();
        let elapsed = started.elapsed();
        m.ttfb_seconds.observe(elapsed.as_secs_f64());
        let sent = if is_get && resp.status().is_success() {
            resp.headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(0)
        } else {
            0
        };
        m.bytes_served.inc_by(sent);
        if self.config.access_log {
            let client = client.unwrap_or_else(client_of);
            tracing::info!(
                target: "access",
                method = %req.method,
                path = req.uri.path(),
                status = resp.status().as_u16(),
                bytes = sent,
                protocol,
                client = %client,
                peer = %conn.peer,
                cache = resp
                    .headers()
                    .get(CACHE_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                ms = elapsed.as_secs_f64() * 1000.0,
            );
        }
        resp
    }
}

impl Handler for Edge {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let (parts, _body) = req.into_parts();
        self.handle_parts(parts, conn).await
    }

    // The edge's endpoints are GET and HEAD: HTTP/1.1 takes the lean loop.
    const BODYLESS: bool = true;

    async fn handle_parts(self: Arc<Self>, req: Parts, conn: ConnInfo) -> Response<Body> {
        let protocol = match req.version {
            http::Version::HTTP_2 => "h2",
            http::Version::HTTP_10 => "http/1.0",
            _ => "http/1.1",
        };
        self.respond(&req, conn, protocol).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadenza_common::Territories;

    fn config(geo: bool, unknown: UnknownCountry) -> EdgeConfig {
        let db = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/geoip/GeoIP2-Country-Test.mmdb");
        EdgeConfig {
            keys: VerifyingKeys::default(),
            token_leeway: Duration::from_secs(30),
            geo: geo.then(|| Arc::new(ReloadingGeo::open(&db).unwrap())),
            trusted_proxies: Vec::new(),
            unknown_country: unknown,
            read_ahead_slices: 0,
            alt_svc: None,
            access_log: false,
            peer_key: None,
            cors: CorsOrigins::Any,
        }
    }

    fn claims(territories: &str) -> TokenClaims {
        TokenClaims {
            file_id: FileId::random(),
            expires_at: 0,
            territories: territories.parse::<Territories>().unwrap(),
        }
    }

    #[test]
    fn territories_are_checked_against_the_listeners_country() {
        let sweden: IpAddr = "89.160.20.112".parse().unwrap();
        let japan: IpAddr = "2001:218::1".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let cfg = config(true, UnknownCountry::Deny);
        assert!(check_territory(&cfg, &claims("SE,GB"), sweden).is_ok());
        let refused = check_territory(&cfg, &claims("GB"), sweden).unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS);
        assert_eq!(refused.code(), "territory");
        assert!(check_territory(&cfg, &claims("WW,-JP"), japan).is_err());
        assert!(check_territory(&cfg, &claims("WW,-JP"), sweden).is_ok());
        assert_eq!(
            check_territory(&cfg, &claims("WW"), loopback)
                .unwrap_err()
                .code(),
            "country_unknown"
        );
        let lenient = config(true, UnknownCountry::Allow);
        assert!(check_territory(&lenient, &claims("GB"), loopback).is_ok());
        let no_geo = config(false, UnknownCountry::Deny);
        assert!(check_territory(&no_geo, &claims("GB"), sweden).is_ok());
    }
}
