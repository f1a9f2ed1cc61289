//! The origin's HTTP API.
//!
//! | route | who | what |
//! |---|---|---|
//! | `OPTIONS /v1/uploads` | anyone | tus 1.0 discovery |
//! | `POST /v1/uploads` | label | tus creation (`Upload-Length`), or master bytes in the body → receipt |
//! | `HEAD, PATCH, DELETE /v1/uploads/{id}` | label | tus offset, append, termination |
//! | `GET /v1/uploads/{id}` | label | upload status as JSON |
//! | `POST /v1/ingest` | label | metadata for an upload → track id |
//! | `GET /v1/tracks/{id}` | label | its track's status (from the control plane) |
//! | `DELETE /v1/tracks/{id}` | label | take its track down (`{"reason": …}` optional) |
//! | `GET, HEAD /v1/objects/{file_id}` | edge | rendition bytes by range |
//! | `GET /internal/v1/masters/{upload_id}` | service | a master, for transcoders |
//! | `PUT /internal/v1/objects/{file_id}` | service | store a rendition (content-checked) |
//! | `GET /healthz` | anyone | liveness |

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use cadenza_common::http::CorsOrigins;
use cadenza_common::http::client::{self, ClientError, HttpClient};
use cadenza_common::http::{
    ApiError, Body, ConnInfo, Cors, Handler, bearer_token, health, json_response, plan_span,
    range_plan, ranged_response, read_json, require_bearer,
};
use cadenza_common::{
    FileId, IngestRequest, IngestResponse, TrackId, TrackRegistration, UploadId, UploadReceipt,
    hex_encode,
};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ring::digest::{Context, SHA256};
use tokio::io::AsyncWriteExt;

use crate::resumable::tus_headers;
use crate::store::{ObjectKey, ObjectStore, StoreError};
use crate::uploads::{UploadError, Uploads};

/// How the origin is set up.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Where uploads are written before they enter the store; on the store's filesystem for
    /// the local store so entering it is a rename.
    pub staging_dir: PathBuf,
    /// Control plane base URL.
    pub control_plane: String,
    /// Bearer token for service-to-service calls (both directions).
    pub service_token: String,
    /// Bearer token edges use to read renditions.
    pub edge_key: String,
    /// Largest accepted master, bytes.
    pub max_upload_bytes: u64,
    /// Where resumable uploads are kept while they arrive; on the store's filesystem for the
    /// local store.
    pub uploads_dir: PathBuf,
    /// How long an incomplete resumable upload lives after its last write.
    pub upload_ttl: Duration,
    /// Web pages whose scripts may use the labels' endpoints (CORS): a label's web uploader
    /// speaking tus from its own origin, as tus-js-client does. `/internal/` and the edges'
    /// `/v1/objects/` are never offered to pages.
    pub cors: CorsOrigins,
}

/// The origin service.
pub struct Origin {
    pub(crate) config: OriginConfig,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) uploads: Uploads,
    /// When expired uploads were last swept (seconds since the epoch).
    pub(crate) last_sweep: AtomicU64,
    /// Sizes of objects read recently (objects never change under their key).
    sizes: moka::future::Cache<ObjectKey, u64>,
    /// Label keys the control plane vouched for: SHA-256 of the key → label id. Entries live
    /// [`LABEL_KEY_TTL`], which bounds how long a revoked key keeps working here.
    label_keys: moka::future::Cache<String, String>,
    client: HttpClient,
    /// CORS for the labels' endpoints, from `config.cors`.
    cors: Cors,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("config", &self.config)
            .finish()
    }
}

const JSON_LIMIT: usize = 64 * 1024;
/// How long a verified label key is trusted without asking the control plane again.
pub const LABEL_KEY_TTL: Duration = Duration::from_secs(60);
/// Object sizes remembered (about 100 bytes each).
const SIZE_CACHE_ENTRIES: u64 = 100_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("no such object"),
            StoreError::Exists => ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                "an object already exists under that name",
            ),
            StoreError::Io(e) => ApiError::unavailable(e),
            StoreError::Backend(e) => ApiError::unavailable(e),
        }
    }
}

fn upstream(e: ClientError) -> ApiError {
    match &e {
        ClientError::Status { status, body, .. } if status.is_client_error() => {
            let message = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| body.clone());
            ApiError::new(*status, "rejected", message)
        }
        _ => ApiError::unavailable(e),
    }
}

fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| ApiError::bad_request("bad_id", e.to_string()))
}

impl Origin {
    /// An origin over `store`, calling the control plane with `client`.
    pub async fn new(
        config: OriginConfig,
        store: Arc<dyn ObjectStore>,
        client: HttpClient,
    ) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(&config.staging_dir).await?;
        let uploads = Uploads::open(&config.uploads_dir, config.upload_ttl).await?;
        let cors = Cors::new(
            config.cors.clone(),
            CORS_METHODS,
            CORS_REQUEST_HEADERS,
            CORS_EXPOSED_HEADERS,
        );
        Ok(Self {
            cors,
            config,
            store,
            uploads,
            last_sweep: AtomicU64::new(0),
            sizes: moka::future::Cache::new(SIZE_CACHE_ENTRIES),
            label_keys: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(LABEL_KEY_TTL)
                .build(),
            client,
        })
    }

    fn authorize(&self, req: &Request<Incoming>, secret: &str) -> Result<(), ApiError> {
        require_bearer(req.headers(), secret)
    }

    /// The label whose API key the request carries, as the control plane says.
    async fn authorize_label(&self, req: &Request<Incoming>) -> Result<String, ApiError> {
        let key = bearer_token(req.headers()).ok_or_else(ApiError::unauthorized)?;
        let digest = hex_encode(ring::digest::digest(&SHA256, key.as_bytes()).as_ref());
        if let Some(label) = self.label_keys.get(&digest).await {
            return Ok(label);
        }
        let url = format!(
            "{}/internal/v1/label-keys/verify",
            self.config.control_plane
        );
        let verified: Result<serde_json::Value, _> = client::call_json(
            &self.client,
            Method::POST,
            &url,
            Some(&self.config.service_token),
            Some(&serde_json::json!({ "api_key": key })),
            CALL_TIMEOUT,
        )
        .await;
        let label = match verified {
            Ok(v) => v
                .get("label_id")
                .and_then(|l| l.as_str())
                .map(str::to_owned)
                .ok_or_else(|| ApiError::internal("key verification answered without a label"))?,
            Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
                return Err(ApiError::unauthorized());
            }
            Err(e) => return Err(ApiError::unavailable(e)),
        };
        self.label_keys.insert(digest, label.clone()).await;
        Ok(label)
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["healthz"]) => Ok(health()),
            (Method::OPTIONS, ["v1", "uploads"]) => Ok(self.tus_options()),
            (Method::POST, ["v1", "uploads"]) => {
                let label = self.authorize_label(&req).await?;
                // tus creation when the client speaks tus; otherwise the whole master in
                // one request body.
                if req.headers().contains_key("tus-resumable") {
                    self.tus_create(req, &label).await
                } else {
                    self.upload(req, &label).await
                }
            }
            (m, ["v1", "uploads", id]) => {
                let id: UploadId = parse_id(id)?;
                let label = self.authorize_label(&req).await?;
                // Every tus request but OPTIONS names the protocol version; our JSON status
                // (GET) is not tus.
                if m != Method::GET {
                    crate::tus::check_version(req.headers()).map_err(UploadError::from)?;
                }
                match m {
                    Method::HEAD => self.tus_head(&id, &label).await,
                    Method::PATCH => self.tus_patch(req, &id, &label).await,
                    Method::DELETE => self.tus_delete(&id, &label).await,
                    Method::GET => self.upload_status(&id, &label).await,
                    _ => Err(ApiError::method_not_allowed()),
                }
            }
            (Method::POST, ["v1", "ingest"]) => {
                let label = self.authorize_label(&req).await?;
                self.ingest(req, &label).await
            }
            (Method::GET, ["v1", "tracks", id]) => {
                let label = self.authorize_label(&req).await?;
                let id: TrackId = parse_id(id)?;
                let url = format!("{}/v1/tracks/{id}", self.config.control_plane);
                let view: serde_json::Value = client::call_json::<(), _>(
                    &self.client,
                    Method::GET,
                    &url,
                    None,
                    None,
                    CALL_TIMEOUT,
                )
                .await
                .map_err(upstream)?;
                // Another label's track is indistinguishable from a missing one.
                if view.get("label_id").and_then(|l| l.as_str()) != Some(label.as_str()) {
                    return Err(ApiError::not_found("no such track"));
                }
                Ok(json_response(StatusCode::OK, &view))
            }
            (Method::DELETE, ["v1", "tracks", id]) => {
                let label = self.authorize_label(&req).await?;
                let id: TrackId = parse_id(id)?;
                let body = read_takedown(req).await?;
                let url = format!(
                    "{}/internal/v1/tracks/{id}/takedown",
                    self.config.control_plane
                );
                let _: serde_json::Value = client::call_json(
                    &self.client,
                    Method::POST,
                    &url,
                    Some(&self.config.service_token),
                    Some(&serde_json::json!({ "label_id": label, "reason": body.reason })),
                    CALL_TIMEOUT,
                )
                .await
                .map_err(upstream)?;
                let mut resp = Response::new(cadenza_common::http::empty());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                Ok(resp)
            }
            (m @ (Method::GET | Method::HEAD), ["v1", "objects", id]) => {
                self.authorize(&req, &self.config.edge_key)?;
                let id: FileId = parse_id(id)?;
                self.read_object(&m, &req, ObjectKey::rendition(&id), id.as_str())
                    .await
            }
            (m @ Method::GET, ["internal", "v1", "masters", id]) => {
                self.authorize(&req, &self.config.service_token)?;
                let id: UploadId = parse_id(id)?;
                self.read_object(&m, &req, ObjectKey::master(&id), id.as_str())
                    .await
            }
            (Method::PUT, ["internal", "v1", "objects", id]) => {
                self.authorize(&req, &self.config.service_token)?;
                let id: FileId = parse_id(id)?;
                self.put_rendition(id, req).await
            }
            (
                _,
                ["v1", "uploads" | "ingest"]
                | ["v1", "tracks" | "objects", _]
                | ["internal", "v1", ..],
            ) => Err(ApiError::method_not_allowed()),
            _ => Err(ApiError::not_found("no such endpoint")),
        }
    }

    async fn read_object(
        &self,
        method: &Method,
        req: &Request<Incoming>,
        key: ObjectKey,
        etag: &str,
    ) -> Result<Response<Body>, ApiError> {
        let size = self.object_size(&key).await?;
        // Open the part to send first, so a store failure is an error status rather than a
        // broken body.
        let plan = range_plan(req.headers(), size, etag);
        let mut opened = match plan_span(plan, size) {
            Some((offset, len)) if method == Method::GET && len > 0 => {
                Some(self.store.read(&key, offset, len).await?.body)
            }
            _ => None,
        };
        Ok(ranged_response(method, plan, size, etag, |_, _| {
            opened.take().unwrap_or_else(cadenza_common::http::empty)
        }))
    }

    /// An object's size. Objects are immutable, so a size once learnt is kept (bounded), which
    /// spares remote stores a `HEAD` before every ranged read.
    async fn object_size(&self, key: &ObjectKey) -> Result<u64, StoreError> {
        if let Some(size) = self.sizes.get(key).await {
            return Ok(size);
        }
        let size = self.store.size(key).await?;
        self.sizes.insert(key.clone(), size).await;
        Ok(size)
    }

    /// Streams a request body into a staging file, hashing it, refusing it past `limit`.
    async fn stage(
        &self,
        req: Request<Incoming>,
        limit: u64,
    ) -> Result<(PathBuf, u64, [u8; 32]), ApiError> {
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > limit
        {
            return Err(too_large(limit));
        }
        let path = self
            .config
            .staging_dir
            .join(format!("{}.part", UploadId::random()));
        let result = async {
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(ApiError::unavailable)?;
            let mut hash = Context::new(&SHA256);
            let mut size = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| ApiError::bad_request("body_broken", e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    size += data.len() as u64;
                    if size > limit {
                        return Err(too_large(limit));
                    }
                    hash.update(&data);
                    file.write_all(&data).await.map_err(ApiError::unavailable)?;
                }
            }
            file.sync_all().await.map_err(ApiError::unavailable)?;
            let mut digest = [0u8; 32];
            digest.copy_from_slice(hash.finish().as_ref());
            Ok((size, digest))
        }
        .await;
        match result {
            Ok((size, digest)) => Ok((path, size, digest)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
        }
    }

    async fn upload(
        &self,
        req: Request<Incoming>,
        label: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (staged, size, digest) = self.stage(req, self.config.max_upload_bytes).await?;
        if size == 0 {
            let _ = tokio::fs::remove_file(&staged).await;
            return Err(ApiError::bad_request("empty_upload", "the upload is empty"));
        }
        let upload_id = UploadId::random();
        if let Err(e) = self
            .store
            .put_file(&ObjectKey::master(&upload_id), &staged)
            .await
        {
            let _ = tokio::fs::remove_file(&staged).await;
            return Err(e.into());
        }
        let sha256 = hex_encode(&digest);
        self.uploads
            .record_stored(
                &upload_id,
                label,
                size,
                sha256,
                std::time::SystemTime::now(),
            )
            .await?;
        tracing::info!(upload = %upload_id, size, "master stored");
        Ok(json_response(
            StatusCode::CREATED,
            &UploadReceipt {
                upload_id,
                size,
                sha256: hex_encode(&digest),
            },
        ))
    }

    async fn ingest(
        &self,
        req: Request<Incoming>,
        label: &str,
    ) -> Result<Response<Body>, ApiError> {
        let mut ingest: IngestRequest = read_json(req.into_body(), JSON_LIMIT).await?;
        validate(&ingest)?;
        ingest.isrc = ingest.isrc.as_deref().map(normalize_isrc);
        // A resumable upload is stored now if the store was down when it finished.
        let upload = self
            .stored_upload(&ingest.upload_id, label)
            .await?
            .ok_or_else(|| ApiError::not_found("no such upload"))?;
        let master_sha256 = upload
            .sha256()
            .ok_or_else(|| ApiError::internal("a stored upload without a hash"))?
            .to_owned();
        let url = format!("{}/internal/v1/tracks", self.config.control_plane);
        let registration = TrackRegistration {
            ingest,
            label_id: label.to_owned(),
            master_sha256,
        };
        let created: IngestResponse = client::call_json(
            &self.client,
            Method::POST,
            &url,
            Some(&self.config.service_token),
            Some(&registration),
            CALL_TIMEOUT,
        )
        .await
        .map_err(upstream)?;
        let status = if created.duplicate {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        Ok(json_response(status, &created))
    }

    async fn put_rendition(
        &self,
        id: FileId,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let key = ObjectKey::rendition(&id);
        let (staged, _, digest) = self.stage(req, self.config.max_upload_bytes).await?;
        // Content addressing: the id is the hash of the bytes, so a corrupted transfer or a
        // wrong id can never be stored under a name edges will trust.
        if FileId::from_bytes(&digest) != id {
            let _ = tokio::fs::remove_file(&staged).await;
            return Err(ApiError::bad_request(
                "content_mismatch",
                "the body's SHA-256 does not match the file id",
            ));
        }
        match self.store.put_file(&key, &staged).await {
            // Immutable and content-addressed: an identical object is already there.
            Ok(()) | Err(StoreError::Exists) => {}
            Err(e) => {
                let _ = tokio::fs::remove_file(&staged).await;
                return Err(e.into());
            }
        }
        let _ = tokio::fs::remove_file(&staged).await;
        Ok(json_response(
            StatusCode::CREATED,
            &serde_json::json!({"file_id": id}),
        ))
    }
}

/// The body of a takedown: an optional reason.
#[derive(Debug, Default, serde::Deserialize)]
struct TakedownBody {
    #[serde(default)]
    reason: String,
}

/// A takedown's JSON body, which may be absent.
async fn read_takedown(req: Request<Incoming>) -> Result<TakedownBody, ApiError> {
    let bytes = cadenza_common::http::read_body(req.into_body(), JSON_LIMIT).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(TakedownBody::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not valid JSON: {e}")))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("uploads are limited to {limit} bytes"),
    )
}

/// Checks the metadata a label sent.
fn validate(req: &IngestRequest) -> Result<(), ApiError> {
    for (field, value) in [("title", &req.title), ("artist", &req.artist)] {
        let len = value.trim().chars().count();
        if len == 0 || len > 512 {
            return Err(ApiError::bad_request(
                "bad_metadata",
                format!("{field} must be 1–512 characters"),
            ));
        }
    }
    let text = |field: &str, value: &str| {
        let len = value.trim().chars().count();
        if len == 0 || len > 512 || value.chars().any(char::is_control) {
            Err(ApiError::bad_request(
                "bad_metadata",
                format!("{field} must be 1–512 printable characters"),
            ))
        } else {
            Ok(())
        }
    };
    if let Some(album) = &req.album {
        text("album", album)?;
    }
    if req.featuring.len() > 32 {
        return Err(ApiError::bad_request(
            "bad_metadata",
            "at most 32 featured artists",
        ));
    }
    for name in &req.featuring {
        text("featuring", name)?;
    }
    if req.track_number.is_some_and(|n| !(1..=9999).contains(&n)) {
        return Err(ApiError::bad_request(
            "bad_metadata",
            "track_number must be 1–9999",
        ));
    }
    if let Some(isrc) = &req.isrc
        && !valid_isrc(isrc)
    {
        return Err(ApiError::bad_request(
            "bad_isrc",
            format!("{isrc:?} is not an ISRC (CC-XXX-YY-NNNNN, e.g. GBAYE6300001)"),
        ));
    }
    Ok(())
}

/// The ISRC's canonical form: upper case, no hyphens (`US-S1Z-99-00001` → `USS1Z9900001`).
fn normalize_isrc(isrc: &str) -> String {
    isrc.chars()
        .filter(|&c| c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// ISO 3901: two letters (country), three alphanumerics (registrant), two digits (year),
/// five digits (designation); hyphens allowed between the parts.
fn valid_isrc(isrc: &str) -> bool {
    let s: Vec<u8> = isrc.bytes().filter(|&b| b != b'-').collect();
    s.len() == 12
        && s[..2].iter().all(u8::is_ascii_alphabetic)
        && s[2..5].iter().all(u8::is_ascii_alphanumeric)
        && s[5..].iter().all(u8::is_ascii_digit)
}

/// Whether the request is tus's, so its answer (errors included) carries the tus headers.
fn is_tus(req: &Request<Incoming>) -> bool {
    let path = req.uri().path();
    path.starts_with("/v1/uploads/")
        || (path == "/v1/uploads"
            && (req.method() == Method::OPTIONS || req.headers().contains_key("tus-resumable")))
}

/// What a label's web uploader may send and read, besides the CORS-safelisted headers: tus's
/// headers both ways (tusd's lists, less the extensions this origin does not speak).
const CORS_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE";
const CORS_REQUEST_HEADERS: &str = "Authorization, Content-Type, Tus-Resumable, Upload-Length, \
     Upload-Metadata, Upload-Offset, Upload-Checksum";
const CORS_EXPOSED_HEADERS: &str = "Location, Upload-Offset, Upload-Length, Upload-Metadata, \
     Upload-Expires, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, \
     Tus-Checksum-Algorithm, Retry-After";

/// Whether the request is for an endpoint web pages may call: not the services' nor the
/// edges'.
fn offered_to_pages(req: &Request<Incoming>) -> bool {
    let path = req.uri().path();
    !path.starts_with("/internal/") && !path.starts_with("/v1/objects/")
}

impl Handler for Origin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        let tus = is_tus(&req);
        let resp = if offered_to_pages(&req) {
            // tus's own OPTIONS (discovery) is no preflight: it names no method.
            let origin = req.headers().get(header::ORIGIN).cloned();
            let preflight = Cors::is_preflight(req.method(), req.headers());
            self.cors.around(origin, preflight, self.route(req)).await
        } else {
            self.route(req)
                .await
                .unwrap_or_else(ApiError::into_response)
        };
        if tus { tus_headers(resp) } else { resp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isrc_validation() {
        for good in ["GBAYE6300001", "US-S1Z-99-00001", "gbaye6300001"] {
            assert!(valid_isrc(good), "{good}");
        }
        assert_eq!(normalize_isrc("us-s1z-99-00001"), "USS1Z9900001");
        for bad in [
            "",
            "GBAYE630000",
            "GBAYE63000011",
            "1BAYE6300001",
            "GBAYE63X0001",
        ] {
            assert!(!valid_isrc(bad), "{bad}");
        }
    }
}
