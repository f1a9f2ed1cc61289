//! The control plane's HTTP API.
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /v1/playback` | a user | a grant for a track |
//! | `GET /v1/tracks/{id}` | anyone | a track's status, licences and renditions (no keys) |
//! | `GET /v1/search?q=…` | anyone | tracks, albums and artists playable where the listener is |
//! | `GET /v1/albums/{id}` | anyone | an album and its playable tracks in order |
//! | `GET /v1/artists/{id}` | anyone | an artist, their albums and playable tracks |
//! | `GET /v1/edge-keys` | edges | public keys that sign edge tokens |
//! | `POST /internal/v1/tracks` | origin | register an ingested upload, queue its job (idempotent) |
//! | `POST /internal/v1/tracks/{id}/takedown` | origin | withdraw a label's track: no more grants |
//! | `POST /internal/v1/labels` | operator tools | a label (made if new) and a new API key for it |
//! | `POST /internal/v1/label-keys/verify` | origin | the label a key belongs to, or 401 |
//! | `POST /internal/v1/label-keys/revoke` | operator tools | revoke a key |
//! | `POST /internal/v1/jobs/lease?wait_ms=N` | transcoder | lease a job (long poll) |
//! | `POST /internal/v1/jobs/{id}/heartbeat` | transcoder | extend the lease (`{"attempt": n}`) |
//! | `POST /internal/v1/jobs/{id}/complete` | transcoder | report a job's outcome |
//! | `POST /internal/v1/jobs/{id}/release` | transcoder | hand back a failed attempt (retried with backoff) |
//! | `POST /v1/accounts` | anyone | sign up (`{"email", "password"}`) |
//! | `POST /oauth/token` | apps, services | OAuth 2.0 tokens: password, refresh_token, client_credentials |
//! | `GET /v1/me/export` | a user | everything stored about them |
//! | `DELETE /v1/me` | a user | delete the account and its sessions |
//! | `POST /internal/v1/oauth-clients` | operator tools | an OAuth client (`first_party` or `service`) |
//! | `GET /healthz` | anyone | liveness |
//! | `GET /openapi.json` | anyone | the OpenAPI 3.1 description of the public endpoints |
//! | `OPTIONS` any public path, with `Access-Control-Request-Method` | browsers | a CORS preflight for a web player (no token asked) |
//!
//! Every answer outside `/internal/` (errors included, so a web player's script can read the
//! reason) carries CORS headers for the origins [`CorsOrigins`] allows.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
pub use cadenza_common::http::CorsOrigins;
use cadenza_common::http::{
    ApiError, Body, ConnInfo, Cors, Handler, empty, health, json_response, read_json,
    require_bearer,
};
use cadenza_common::{
    AlbumId, ArtistId, IngestResponse, JobId, JobOutcome, PlaybackRequest, Quality, SigningKey,
    TrackId, TrackRegistration, TrackStatus,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::Notify;

use cadenza_geo::{Cidr, ReloadingGeo, client_ip};

use crate::auth::{AccessTokens, AuthConfig, RateLimiter};
use crate::grant::{self, GrantPolicy};
use crate::rights::{self, Refusal, TrackRights};
use crate::search::{Query, SearchIndex};

mod accounts;
use crate::store::{Released, Store, StoreError};

/// How the control plane is set up.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Bearer token for internal endpoints.
    pub service_token: String,
    /// How long a job lease lasts.
    pub job_lease: Duration,
    /// Leases a job may use before it is failed.
    pub max_job_attempts: u32,
    /// The wait before the second attempt of a job whose first failed; it doubles per attempt.
    pub job_retry_backoff: Duration,
    /// Grant policy (token lifetime, edges).
    pub grants: GrantPolicy,
    /// GeoIP country database: with it, a grant is refused (451) where the track is not
    /// licensed; without it the country is unknown and the edge's territory check decides.
    pub geo: Option<Arc<ReloadingGeo>>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Accounts, OAuth tokens and their rate limits.
    pub auth: AuthConfig,
    /// Web pages whose scripts may call the public endpoints (CORS): a web player signing
    /// in, searching and asking for grants from its own origin. `/internal/` is never
    /// offered to pages.
    pub cors: CorsOrigins,
}

/// The control plane service.
pub struct ControlPlane {
    config: ControlPlaneConfig,
    store: Store,
    search: Arc<SearchIndex>,
    tokens: AccessTokens,
    token_limiter: RateLimiter,
    signup_limiter: RateLimiter,
    /// Grants per track since the last [`ControlPlane::flush_plays`].
    plays: std::sync::Mutex<std::collections::HashMap<TrackId, u64>>,
    signing: SigningKey,
    jobs_queued: Notify,
    /// The edges grants list, with what the probes have seen of each.
    fleet: crate::fleet::Fleet,
    /// CORS for the public endpoints, from `config.cors`.
    cors: Cors,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("config", &self.config)
            .finish()
    }
}

const JSON_LIMIT: usize = 1024 * 1024;

/// What a web player's script may send to the public endpoints and read from their answers,
/// besides the CORS-safelisted headers: bearer tokens and JSON bodies in, a rate limit's
/// `Retry-After` out.
const CORS_METHODS: &str = "GET, POST, DELETE";
const CORS_REQUEST_HEADERS: &str = "Authorization, Content-Type";
const CORS_EXPOSED_HEADERS: &str = "Retry-After";

#[derive(serde::Deserialize)]
struct NewLabel {
    name: String,
}

#[derive(serde::Deserialize)]
struct Takedown {
    label_id: String,
    #[serde(default)]
    reason: String,
}

#[derive(serde::Deserialize)]
struct NewOauthClient {
    name: String,
    kind: crate::store::ClientKind,
}

#[derive(serde::Deserialize)]
struct KeyBody {
    api_key: String,
}
const MAX_LEASE_WAIT: Duration = Duration::from_secs(30);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::JobNotLeased(job) => ApiError::new(
                StatusCode::CONFLICT,
                "job_not_leased",
                format!("job {job} is not leased"),
            ),
            StoreError::Invalid(m) => ApiError::bad_request("invalid", m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            other => ApiError::internal(other),
        }
    }
}

impl ControlPlane {
    /// A control plane over `store`, signing edge tokens with `signing`.
    pub fn new(config: ControlPlaneConfig, store: Store, signing: SigningKey) -> Self {
        let auth = &config.auth;
        let tokens = AccessTokens::new(&auth.access_token_key);
        let token_limiter = RateLimiter::new(auth.token_burst, auth.token_rate);
        let signup_limiter = RateLimiter::new(auth.token_burst, auth.token_rate);
        let fleet = crate::fleet::Fleet::new(config.grants.edges.clone());
        let cors = Cors::new(
            config.cors.clone(),
            CORS_METHODS,
            CORS_REQUEST_HEADERS,
            CORS_EXPOSED_HEADERS,
        );
        Self {
            fleet,
            cors,
            config,
            store,
            signing,
            jobs_queued: Notify::new(),
            search: Arc::new(SearchIndex::new(Vec::new())),
            plays: Default::default(),
            tokens,
            token_limiter,
            signup_limiter,
        }
    }

    /// Probes every edge's `/healthz` once, all at the same time, each allowed `timeout`,
    /// and records what it saw; grants then list the edges by it.
    pub async fn probe_edges(
        &self,
        client: &cadenza_common::http::client::HttpClient,
        timeout: std::time::Duration,
    ) {
        let probes = self.fleet.sites().iter().enumerate().map(|(i, site)| {
            let url = format!("{}/healthz", site.url);
            async move {
                let started = std::time::Instant::now();
                let ok = match cadenza_common::http::client::request(
                    Method::GET,
                    &url,
                    None,
                    cadenza_common::http::empty(),
                ) {
                    Ok(req) => cadenza_common::http::client::send(client, req, timeout)
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                (i, ok.then(|| started.elapsed()))
            }
        });
        let now = std::time::Instant::now();
        for (i, outcome) in futures_util::future::join_all(probes).await {
            if outcome.is_none() {
                tracing::warn!(edge = %self.fleet.sites()[i].url, "edge health probe failed");
            }
            self.fleet.record(i, outcome, now);
        }
    }

    /// Writes the plays counted since the last call to the store; returns the tracks
    /// updated. On a store error the counts are kept for the next call.
    pub async fn flush_plays(&self) -> Result<usize, StoreError> {
        let batch: Vec<(TrackId, u64)> = match self.plays.lock() {
            Ok(mut p) => p.drain().collect(),
            Err(poisoned) => poisoned.into_inner().drain().collect(),
        };
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.add_plays(&batch).await {
            let mut plays = match self.plays.lock() {
                Ok(p) => p,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (track, n) in batch {
                *plays.entry(track).or_default() += n;
            }
            return Err(e);
        }
        Ok(batch.len())
    }

    /// Rebuilds the search index's base from the store, off the async runtime, so plays
    /// re-rank it; changes made meanwhile are kept. Returns the documents indexed.
    pub async fn refresh_search(&self) -> Result<usize, StoreError> {
        let since = self.search.sequence();
        let docs = self.store.search_docs(now_secs()).await?;
        let n = docs.len();
        let index = self.search.clone();
        tokio::task::spawn_blocking(move || index.reset_keeping(docs, since))
            .await
            .map_err(|e| StoreError::Internal(format!("search rebuild failed: {e}")))?;
        Ok(n)
    }

    /// Builds the search index from the store; returns the documents indexed. Run at start
    /// (until it has run, search finds only what changed since).
    pub async fn load_search(&self) -> Result<usize, StoreError> {
        let docs = self.store.search_docs(now_secs()).await?;
        let n = docs.len();
        self.search.reset(docs);
        Ok(n)
    }

    /// The search index.
    pub fn search_index(&self) -> &Arc<SearchIndex> {
        &self.search
    }

    /// Brings the index up to date with `track` (it was ingested, finished or taken down).
    async fn reindex(&self, track: &TrackId) {
        match self.store.search_changes_for(track, now_secs()).await {
            Ok(changes) => self.search.apply(changes),
            // The catalogue changed; search lags until the next change or restart.
            Err(e) => tracing::warn!(track = %track, error = %e, "search index not updated"),
        }
    }

    /// The store, for tools and tests.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn authorize_service(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        require_bearer(req.headers(), &self.config.service_token)
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["healthz"]) => Ok(health()),
            (Method::GET, ["openapi.json"]) => {
                Ok(json_response(StatusCode::OK, &crate::openapi::spec()))
            }
            (Method::POST, ["v1", "playback"]) => self.playback(req, conn).await,
            (Method::GET, ["v1", "search"]) => self.search(&req, &conn),
            (Method::POST, ["v1", "accounts"]) => self.sign_up(req, &conn).await,
            (Method::POST, ["oauth", "token"]) => self.token(req, &conn).await,
            (Method::GET, ["v1", "me", "export"]) => self.export_me(&req).await,
            (Method::DELETE, ["v1", "me"]) => self.delete_me(&req).await,
            (Method::POST, ["internal", "v1", "oauth-clients"]) => {
                self.authorize_service(&req)?;
                let body: NewOauthClient = read_json(req.into_body(), JSON_LIMIT).await?;
                let client = self
                    .store
                    .create_client(&body.name, body.kind, now_secs())
                    .await?;
                Ok(json_response(StatusCode::CREATED, &client))
            }
            (Method::GET, ["v1", "albums", id]) => {
                let id: AlbumId = id.parse().map_err(|e: cadenza_common::IdError| {
                    ApiError::bad_request("bad_id", e.to_string())
                })?;
                let album = self
                    .store
                    .album(&id, now_secs())
                    .await?
                    .ok_or_else(|| ApiError::not_found("no such album"))?;
                Ok(json_response(StatusCode::OK, &album))
            }
            (Method::GET, ["v1", "artists", id]) => {
                let id: ArtistId = id.parse().map_err(|e: cadenza_common::IdError| {
                    ApiError::bad_request("bad_id", e.to_string())
                })?;
                let (limit, cursor) = artist_page(req.uri().query().unwrap_or_default())?;
                let artist = self
                    .store
                    .artist(&id, now_secs(), limit, cursor.as_ref())
                    .await?
                    .ok_or_else(|| ApiError::not_found("no such artist"))?;
                Ok(json_response(StatusCode::OK, &artist))
            }
            (Method::GET, ["v1", "tracks", id]) => {
                let id: TrackId = id.parse().map_err(|e: cadenza_common::IdError| {
                    ApiError::bad_request("bad_id", e.to_string())
                })?;
                let view = self
                    .store
                    .track(&id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("no such track"))?;
                Ok(json_response(StatusCode::OK, &view))
            }
            (Method::GET, ["v1", "edge-keys"]) => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"keys": [{
                    "kid": self.signing.kid(),
                    "alg": "Ed25519",
                    "public_key": base64::engine::general_purpose::STANDARD.encode(self.signing.public_key()),
                }]}),
            )),
            (Method::GET, ["internal", "v1", "edges"]) => {
                self.authorize_service(&req)?;
                let now = std::time::Instant::now();
                let edges: Vec<serde_json::Value> = self
                    .fleet
                    .sites()
                    .iter()
                    .zip(self.fleet.health())
                    .map(|(site, h)| {
                        serde_json::json!({
                            "url": site.url,
                            "serves": site.serves.to_string(),
                            "up": !h.is_down(),
                            "rtt_ms": h.rtt.map(|d| d.as_secs_f64() * 1000.0),
                            "failures": h.failures,
                            "checked_secs_ago": h.checked.map(|t| now.duration_since(t).as_secs_f64()),
                        })
                    })
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "edges": edges }),
                ))
            }
            (Method::POST, ["internal", "v1", "labels"]) => {
                self.authorize_service(&req)?;
                let body: NewLabel = read_json(req.into_body(), JSON_LIMIT).await?;
                let label = self.store.ensure_label(&body.name, now_secs()).await?;
                let key = self.store.create_label_key(&label, now_secs()).await?;
                tracing::info!(label = %key.label_id, name = %key.name, "label key issued");
                Ok(json_response(StatusCode::CREATED, &key))
            }
            (Method::POST, ["internal", "v1", "label-keys", action]) => {
                self.authorize_service(&req)?;
                let body: KeyBody = read_json(req.into_body(), JSON_LIMIT).await?;
                match *action {
                    "verify" => match self.store.verify_label_key(&body.api_key).await? {
                        Some(label_id) => Ok(json_response(
                            StatusCode::OK,
                            &serde_json::json!({ "label_id": label_id }),
                        )),
                        None => Err(ApiError::unauthorized()),
                    },
                    "revoke" => {
                        let revoked = self
                            .store
                            .revoke_label_key(&body.api_key, now_secs())
                            .await?;
                        Ok(json_response(
                            StatusCode::OK,
                            &serde_json::json!({ "revoked": revoked }),
                        ))
                    }
                    _ => Err(ApiError::not_found("no such endpoint")),
                }
            }
            (Method::POST, ["internal", "v1", "tracks", id, "takedown"]) => {
                self.authorize_service(&req)?;
                let id: TrackId = id.parse().map_err(|e: cadenza_common::IdError| {
                    ApiError::bad_request("bad_id", e.to_string())
                })?;
                let body: Takedown = read_json(req.into_body(), JSON_LIMIT).await?;
                if !self
                    .store
                    .take_down(&id, &body.label_id, &body.reason, now_secs())
                    .await?
                {
                    return Err(ApiError::not_found("no such track"));
                }
                tracing::info!(track = %id, reason = %body.reason, "track taken down");
                self.reindex(&id).await;
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"taken_down": true}),
                ))
            }
            (Method::POST, ["internal", "v1", "tracks"]) => {
                self.authorize_service(&req)?;
                let reg: TrackRegistration = read_json(req.into_body(), JSON_LIMIT).await?;
                let done = self.store.create_track(&reg, now_secs()).await?;
                if !done.duplicate {
                    self.jobs_queued.notify_waiters();
                }
                tracing::info!(
                    track = %done.track_id,
                    title = %reg.ingest.title,
                    duplicate = done.duplicate,
                    "track registered"
                );
                Ok(json_response(
                    if done.duplicate {
                        StatusCode::OK
                    } else {
                        StatusCode::CREATED
                    },
                    &IngestResponse {
                        track_id: done.track_id,
                        status: done.status,
                        duplicate: done.duplicate,
                    },
                ))
            }
            (Method::POST, ["internal", "v1", "jobs", "lease"]) => {
                self.authorize_service(&req)?;
                let wait = wait_param(req.uri().query());
                self.lease(wait).await
            }
            (Method::POST, ["internal", "v1", "jobs", id, "heartbeat"]) => {
                self.authorize_service(&req)?;
                let id: JobId = id.parse().map_err(|e: cadenza_common::IdError| {
                    ApiError::bad_request("bad_id", e.to_string())
                })?;
                let beat: Heartbeat = read_json(req.into_body(), JSON_LIMIT).await?;
                match self
                    .store
                    .extend_lease(&id, beat.attempt, now_secs(), self.config.job_lease)
                    .await?
                {
                    Some(expires) => Ok(json_response(
                        StatusCode::OK,
                        &serde_json::json!({"lease_expires_at": expires}),
                    )),
                    None => Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "lease_lost",
                        "the lease expired or the job finished",
                    )),
                }
            }
            (Method::POST, ["internal", "v1", "jobs", id, "release"]) => {
                self.authorize_service(&req)?;
                let id: JobId = id.parse().map_err(|e: cadenza_common::IdError| {
                    ApiError::bad_request("bad_id", e.to_string())
                })?;
                let body: Release = read_json(req.into_body(), JSON_LIMIT).await?;
                let cfg = &self.config;
                let released = self
                    .store
                    .release_job(
                        &id,
                        body.attempt,
                        &body.reason,
                        now_secs(),
                        cfg.max_job_attempts,
                        cfg.job_retry_backoff,
                    )
                    .await?;
                tracing::info!(job = %id, attempt = body.attempt, reason = %body.reason, outcome = ?released, "job released");
                Ok(json_response(
                    StatusCode::OK,
                    &match released {
                        Released::Retry { retry_at } => {
                            serde_json::json!({"state": "queued", "retry_at": retry_at})
                        }
                        Released::Failed { reason } => {
                            serde_json::json!({"state": "failed", "reason": reason})
                        }
                    },
                ))
            }
            (Method::POST, ["internal", "v1", "jobs", id, "complete"]) => {
                self.authorize_service(&req)?;
                let id: JobId = id.parse().map_err(|e: cadenza_common::IdError| {
                    ApiError::bad_request("bad_id", e.to_string())
                })?;
                let outcome: JobOutcome = read_json(req.into_body(), JSON_LIMIT).await?;
                let track = self.store.complete_job(&id, &outcome).await?;
                self.reindex(&track).await;
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"job_id": id}),
                ))
            }
            _ => Err(ApiError::not_found("no such endpoint")),
        }
    }

    /// Long poll: answers with a job as soon as one is runnable, or 204 after `wait`.
    async fn lease(&self, wait: Duration) -> Result<Response<Body>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a job queued in between is not missed.
            let notified = self.jobs_queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cfg = &self.config;
            if let Some(job) = self
                .store
                .lease_job(now_secs(), cfg.job_lease, cfg.max_job_attempts)
                .await?
            {
                return Ok(json_response(StatusCode::OK, &job));
            }
            // Wake at the deadline, or every second to pick up expired leases.
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_secs(1));
            if step.is_zero() {
                let mut resp = Response::new(empty());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                return Ok(resp);
            }
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    /// The client's address: the peer, or what a trusted proxy says it forwarded for.
    fn client_ip(&self, req: &Request<Incoming>, conn: &ConnInfo) -> std::net::IpAddr {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        client_ip(conn.peer.ip(), forwarded, &self.config.trusted_proxies)
    }

    /// The listener's country, when a GeoIP database is configured and knows the address.
    fn country(&self, req: &Request<Incoming>, conn: &ConnInfo) -> Option<String> {
        let geo = self.config.geo.as_ref()?;
        geo.get().country(self.client_ip(req, conn))
    }

    /// `GET /v1/search?q=TEXT[&limit=N][&offset=N]`: what the listener may play, best first.
    fn search(&self, req: &Request<Incoming>, conn: &ConnInfo) -> Result<Response<Body>, ApiError> {
        let mut text = None;
        let mut limit = 20;
        let mut offset = 0;
        for pair in req.uri().query().unwrap_or_default().split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |v: &str| {
                v.parse::<usize>().map_err(|_| {
                    ApiError::bad_request("bad_query", format!("{k} must be a number"))
                })
            };
            match k {
                "q" => text = Some(percent_decode(v)?),
                "limit" => limit = number(v)?,
                "offset" => offset = number(v)?,
                _ => {}
            }
        }
        let text = text.ok_or_else(|| ApiError::bad_request("bad_query", "q is required"))?;
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("q is longer than {MAX_QUERY_CHARS} characters"),
            ));
        }
        if !(1..=MAX_SEARCH_LIMIT).contains(&limit) || offset > MAX_SEARCH_OFFSET {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("limit is 1–{MAX_SEARCH_LIMIT} and offset at most {MAX_SEARCH_OFFSET}"),
            ));
        }
        let query = Query {
            text,
            country: self.country(req, conn),
            offset,
            limit,
        };
        let results = self.search.search(&query, now_secs());
        Ok(json_response(StatusCode::OK, &*results))
    }

    async fn playback(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, ApiError> {
        // Only a signed-in listener is granted anything: a user's access token, checked
        // without the store. Service tokens (labels, backends) are refused.
        self.user_of(&req)?;
        let country = self.country(&req, &conn);
        let want: PlaybackRequest = read_json(req.into_body(), JSON_LIMIT).await?;
        let (track, renditions) = self
            .store
            .track_and_renditions(&want.track_id)
            .await?
            .ok_or_else(|| ApiError::not_found("no such track"))?;
        match track.status {
            TrackStatus::Ready => {}
            TrackStatus::Failed => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "track_failed",
                    track
                        .failure
                        .unwrap_or_else(|| "the track failed to transcode".into()),
                ));
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "track_not_ready",
                    "the track is still being transcoded",
                ));
            }
        }
        // Rights are read from the primary store at grant time, never from a cache.
        let now = now_secs();
        let decision = rights::decide(
            &TrackRights {
                release_at: track.release_at,
                taken_down_at: track.taken_down_at,
                licences: &track.licences,
            },
            country.as_deref(),
            now,
        );
        let allowed = decision.map_err(refusal_error)?;
        let rendition = grant::choose(&renditions, want.quality.unwrap_or(Quality::Normal))
            .ok_or_else(|| {
                ApiError::internal(format!("ready track {} has no renditions", track.track_id))
            })?;
        let grant = grant::build(
            &track,
            rendition,
            &allowed,
            &self.signing,
            &self.config.grants,
            self.fleet.edges_for(country.as_deref()),
            now,
        );
        match self.plays.lock() {
            Ok(mut p) => *p.entry(track.track_id.clone()).or_default() += 1,
            Err(poisoned) => {
                *poisoned
                    .into_inner()
                    .entry(track.track_id.clone())
                    .or_default() += 1
            }
        }
        Ok(json_response(StatusCode::OK, &grant))
    }
}

/// Bounds on a search request.
const MAX_QUERY_CHARS: usize = 200;
const MAX_SEARCH_LIMIT: usize = 100;
const MAX_SEARCH_OFFSET: usize = 1000;

/// Decodes a query-string value (`+` is a space, `%XX` a byte), refusing what is not UTF-8.
fn percent_decode(v: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("bad_query", "q is not percent-encoded UTF-8");
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Tracks listed on an artist's page.
/// Most tracks on one page of an artist, and the default.
const ARTIST_TRACKS: u32 = 500;
const ARTIST_TRACKS_DEFAULT: u32 = 100;

/// `limit` and `cursor` of `GET /v1/artists/{id}`.
fn artist_page(query: &str) -> Result<(u32, Option<crate::TrackCursor>), ApiError> {
    let mut limit = ARTIST_TRACKS_DEFAULT;
    let mut cursor = None;
    for pair in query.split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("limit", v) => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=ARTIST_TRACKS).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("bad_query", format!("limit is 1–{ARTIST_TRACKS}"))
                    })?;
            }
            ("cursor", v) => {
                cursor = Some(
                    v.parse()
                        .map_err(|e: String| ApiError::bad_request("bad_cursor", e))?,
                );
            }
            _ => {}
        }
    }
    Ok((limit, cursor))
}

/// A refused grant as the player sees it: 403 for the label's decisions (takedown, embargo),
/// 451 for the licence's (RFC 7725).
fn refusal_error(refusal: Refusal) -> ApiError {
    let legal = StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS;
    let place = |c: &Option<String>| {
        c.as_deref()
            .map_or_else(String::new, |c| format!(" in {c}"))
    };
    match refusal {
        Refusal::TakenDown => {
            ApiError::forbidden("taken_down", "the track was withdrawn by its label")
        }
        Refusal::Embargoed { until } => ApiError::forbidden(
            "embargoed",
            format!("the track is released at {until} (seconds since the epoch)"),
        ),
        Refusal::NotLicensed { country } => ApiError::new(
            legal,
            "not_licensed",
            format!("the track is not licensed{}", place(&country)),
        ),
        Refusal::NotYetLicensed { country, from } => ApiError::new(
            legal,
            "not_yet_licensed",
            format!(
                "the track is licensed{} from {from} (seconds since the epoch)",
                place(&country)
            ),
        ),
        Refusal::LicenceEnded { country, ended_at } => ApiError::new(
            legal,
            "licence_ended",
            format!(
                "the track's licence{} ended at {ended_at} (seconds since the epoch)",
                place(&country)
            ),
        ),
    }
}

/// A worker handing a failed attempt back.
#[derive(Debug, serde::Deserialize)]
struct Release {
    attempt: u32,
    reason: String,
}

/// A worker's lease extension.
#[derive(Debug, serde::Deserialize)]
struct Heartbeat {
    attempt: u32,
}

fn wait_param(query: Option<&str>) -> Duration {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("wait_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
        .min(MAX_LEASE_WAIT)
}

impl Handler for ControlPlane {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        // The public endpoints are for players, web ones included (a preflight carries no
        // token; the request after it does); `/internal/` is for Cadenza's own services.
        if req.uri().path().starts_with("/internal/") {
            return self
                .route(req, conn)
                .await
                .unwrap_or_else(ApiError::into_response);
        }
        let origin = req.headers().get(http::header::ORIGIN).cloned();
        let preflight = Cors::is_preflight(req.method(), req.headers());
        self.cors
            .around(origin, preflight, self.route(req, conn))
            .await
    }
}
