//! The embedded stack: every service in one process on localhost, all state under one data
//! directory. `cadenza up` runs it; the end-to-end tests start it on ephemeral ports.
//!
//! Data directory layout:
//!
//! | path | what |
//! |---|---|
//! | `cluster.json` | URLs, label key, CA path and the local listener's login, for `cadenza ingest` / `play` (mode 0600) |
//! | `secrets.json` | service, label and edge credentials, master keys (mode 0600) |
//! | `tls/cert.pem`, `tls/key.pem` | the self-signed certificate every service presents |
//! | `keys/edge-token-kN.pk8` | the Ed25519 keys of edge tokens, `k1` first (mode 0600); all are published in `cluster.json` |
//! | `keys/edge-token-signing` | the id of the one that signs (absent: `k1`); see [`TokenKeyChanges`] |
//! | `catalogue.sqlite` | the control plane's database |
//! | `objects/` | the object store (masters, renditions), its staging area and the resumable uploads in progress (`.uploads/`) |
//! | `scratch/` | the transcode worker's working files |

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cadenza_common::http::client::{HttpClient, https_client};
use cadenza_common::http::tls::{self, CertPem};
use cadenza_common::http::{ServerLimits, Shutdown, ShutdownTrigger, serve_on};
use cadenza_common::{SigningKey, VerifyingKeys, hex_encode, random_bytes};
use cadenza_control_plane::{
    ClientKind, ControlPlane, ControlPlaneConfig, EdgeSite, GrantPolicy, KeyRing, MasterKey, Store,
    auth::AuthConfig,
};
use cadenza_edge::Edge;
use cadenza_origin::{LocalDirStore, ObjectStore, Origin, OriginConfig, S3Config, S3Store};
use cadenza_player::{Login, Player};
use cadenza_transcoder::worker::{self, WorkerConfig};

use crate::edge_node::{self, EdgeListeners, EdgeNodeConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How to start the stack.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Root of all state.
    pub data: PathBuf,
    /// Address to listen on.
    pub listen: IpAddr,
    /// First of three consecutive ports; 0 picks free ports.
    pub port_base: u16,
    /// Edge slice size.
    pub slice_bytes: u64,
    /// Edge memory cache size.
    pub edge_cache_bytes: u64,
    /// Slices the edge fetches ahead of each request.
    pub edge_read_ahead: u64,
    /// Edge disk cache size (under `{data}/edge-cache`); 0 disables the disk tier.
    pub edge_disk_bytes: u64,
    /// Largest master accepted.
    pub max_upload_bytes: u64,
    /// How long an incomplete resumable upload lives after its last write.
    pub upload_ttl: Duration,
    /// Transcode workers to run in process.
    pub workers: usize,
    /// How long a job lease lasts without a heartbeat.
    pub job_lease: Duration,
    /// Wait before retrying a job whose attempt failed (doubles per attempt).
    pub job_retry_backoff: Duration,
    /// GeoIP country database for the edge's territory check (reloaded when it changes).
    pub geoip: Option<PathBuf>,
    /// Proxies whose `X-Forwarded-For` the edge believes.
    pub trusted_proxies: Vec<cadenza_geo::Cidr>,
    /// Web pages whose scripts may call the control plane's public API, upload to the origin
    /// (labels' web uploaders) and read the edge's renditions (CORS); any by default.
    pub cors: cadenza_control_plane::CorsOrigins,
    /// Also serve the edge without TLS (HTTP/1.1 and h2c) on the fifth port, for
    /// deployments behind a TLS-terminating load balancer.
    pub edge_cleartext: bool,
    /// Send cached slices to the cleartext listener's HTTP/1.1 by `sendfile`.
    pub edge_sendfile: bool,
    /// Log every edge request (target `access`).
    pub access_log: bool,
    /// Further origins the edge may fetch from after this stack's own (tried in order).
    pub extra_origins: Vec<String>,
    /// Put `extra_origins` before this stack's own origin (to exercise failover).
    pub extra_origins_first: bool,
    /// Keep masters and renditions in this S3 bucket instead of `{data}/objects`.
    pub s3: Option<S3Config>,
    /// The control plane's database URL (PostgreSQL in production); `None` keeps the
    /// catalogue in `{data}/catalogue.sqlite`.
    pub database_url: Option<String>,
    /// Re-seal every content key under a new master key at start.
    pub rotate_master_key: bool,
    /// Edge-token key changes made at start, in this order (see [`TokenKeyChanges`]).
    pub token_keys: TokenKeyChanges,
    /// Edges elsewhere that grants may list after this stack's own, with the countries each
    /// serves.
    pub edge_sites: Vec<EdgeSite>,
    /// How often the control plane probes the edges' health.
    pub edge_probe_every: Duration,
}

impl StackConfig {
    /// Defaults with state under `data`.
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_base: 7700,
            slice_bytes: 256 * 1024,
            edge_cache_bytes: 256 * 1024 * 1024,
            edge_read_ahead: 2,
            edge_disk_bytes: 4 * 1024 * 1024 * 1024,
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            upload_ttl: Duration::from_secs(24 * 3600),
            workers: 1,
            job_lease: Duration::from_secs(60),
            job_retry_backoff: Duration::from_secs(5),
            geoip: None,
            trusted_proxies: Vec::new(),
            cors: Default::default(),
            edge_cleartext: false,
            edge_sendfile: true,
            access_log: false,
            extra_origins: Vec::new(),
            extra_origins_first: false,
            s3: None,
            database_url: None,
            rotate_master_key: false,
            token_keys: TokenKeyChanges::default(),
            edge_sites: Vec::new(),
            edge_probe_every: Duration::from_secs(5),
        }
    }
}

/// What clients need to reach a running stack; written to `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub control_plane: String,
    pub origin: String,
    pub edge: String,
    /// PEM file of the certificate to trust.
    pub ca: PathBuf,
    /// Bearer token for the label API.
    pub label_key: String,
    /// The edge's admin listener (purge, pre-warm, stats, metrics).
    pub edge_admin: String,
    /// Bearer token for the edge's admin commands.
    pub admin_token: String,
    /// The edge's cleartext listener, when enabled.
    pub edge_cleartext: Option<String>,
    /// Public keys that verify the control plane's edge tokens, hex by key id (what a
    /// standalone `cadenza edge` is given with `--token-key`).
    #[serde(default)]
    pub token_keys: std::collections::BTreeMap<String, String>,
    /// The embedded stack's listener account and first-party app, which `cadenza play` and
    /// the demo sign in with.
    #[serde(default)]
    pub listener: Option<Login>,
    /// The data directory this was loaded from (clients keep their resume state there).
    #[serde(skip)]
    pub data_dir: Option<PathBuf>,
}

impl ClusterInfo {
    /// The public token keys it lists, for an edge to accept.
    pub fn verifying_keys(&self) -> anyhow::Result<VerifyingKeys> {
        parse_token_keys(self.token_keys.iter().map(|(k, v)| format!("{k}={v}")))
    }

    /// Reads `cluster.json` from a data directory.
    pub fn load(data: &Path) -> anyhow::Result<Self> {
        let path = data.join("cluster.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} — is `cadenza up --data {}` running?",
                path.display(),
                data.display()
            )
        })?;
        let mut info: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid", path.display()))?;
        info.data_dir = Some(data.to_path_buf());
        Ok(info)
    }

    /// An HTTPS client trusting the stack's certificate.
    pub fn client(&self) -> anyhow::Result<HttpClient> {
        let pem =
            std::fs::read(&self.ca).with_context(|| format!("reading {}", self.ca.display()))?;
        Ok(https_client(tls::client_config(&pem)?))
    }

    /// A player signed in as the stack's listener.
    pub async fn player(&self) -> anyhow::Result<Player> {
        let login = self
            .listener
            .as_ref()
            .context("cluster.json names no listener account; restart `cadenza up` to make one")?;
        Ok(Player::sign_in(self.client()?, self.control_plane.clone(), login).await?)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Secrets {
    service_token: String,
    label_key: String,
    edge_key: String,
    /// Bearer token for the edge's admin listener (added after the first release; made on
    /// load when an older data directory lacks it).
    #[serde(default = "secret")]
    admin_token: String,
    /// Master keys sealing content keys in the catalogue, `ID:HEX`; the first seals, the
    /// others only open (made on load when an older data directory lacks one).
    #[serde(default)]
    master_keys: Vec<String>,
    /// Signs listeners' access tokens (made on load when missing).
    #[serde(default = "secret")]
    access_token_key: String,
    /// The local listener account and its app (made on load when missing or refused).
    #[serde(default)]
    listener: Option<Login>,
}

/// A running stack.
pub struct Stack {
    pub info: ClusterInfo,
    pub edge: Arc<Edge>,
    pub control_plane: Arc<ControlPlane>,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").field("info", &self.info).finish()
    }
}

/// How often counted plays are written to the catalogue.
const PLAYS_FLUSH: Duration = Duration::from_secs(10);
/// How often the search index is rebuilt from the catalogue, so plays re-rank it.
const SEARCH_REFRESH: Duration = Duration::from_secs(600);

/// Writes plays to the catalogue every few seconds (and once more at shutdown), and rebuilds
/// the search index from it every few minutes.
/// Probes the edges grants list every `every` (the first probe at once) until shutdown.
fn spawn_edge_prober(
    cp: Arc<ControlPlane>,
    client: HttpClient,
    every: Duration,
    mut shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => cp.probe_edges(&client, every.min(Duration::from_secs(2))).await,
            }
        }
    })
}

fn spawn_catalogue_upkeep(cp: Arc<ControlPlane>, mut shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut flush = tokio::time::interval(PLAYS_FLUSH);
        let mut refresh = tokio::time::interval(SEARCH_REFRESH);
        refresh.tick().await; // the index was just built
        loop {
            tokio::select! {
                _ = shutdown.wait() => {
                    if let Err(e) = cp.flush_plays().await {
                        tracing::warn!(error = %e, "plays lost at shutdown");
                    }
                    return;
                }
                _ = flush.tick() => {
                    if let Err(e) = cp.flush_plays().await {
                        tracing::warn!(error = %e, "plays not written; kept for the next try");
                    }
                }
                _ = refresh.tick() => match cp.refresh_search().await {
                    Ok(n) => tracing::info!(documents = n, "search index rebuilt"),
                    Err(e) => tracing::warn!(error = %e, "search index not rebuilt"),
                },
            }
        }
    })
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A worker's configuration for the stack described by `info`.
fn worker_config(
    info: &ClusterInfo,
    service_token: &str,
    data: &Path,
    lease: Duration,
) -> WorkerConfig {
    WorkerConfig {
        control_plane: info.control_plane.clone(),
        origin: info.origin.clone(),
        service_token: service_token.to_owned(),
        // Each worker process has its own scratch space.
        scratch_dir: data.join("scratch").join(std::process::id().to_string()),
        lease_wait: Duration::from_secs(20),
        heartbeat: lease / 4,
    }
}

/// Runs one transcode worker against the stack whose data directory is `data`, until
/// `shutdown` fires; `lease` must match the stack's job lease.
pub async fn run_worker(data: &Path, lease: Duration, shutdown: Shutdown) -> anyhow::Result<()> {
    let info = ClusterInfo::load(data)?;
    let secrets: Secrets = serde_json::from_str(
        &std::fs::read_to_string(data.join("secrets.json")).context("reading secrets.json")?,
    )?;
    let config = worker_config(&info, &secrets.service_token, data, lease);
    worker::run(config, info.client()?, shutdown).await;
    Ok(())
}

/// The edge-token signing key of the stack whose data directory is `data` (operator tools).
pub fn signing_key(data: &Path) -> anyhow::Result<SigningKey> {
    let keys = data.join("keys");
    let kid = signing_kid(&keys)?;
    read_token_key(&keys, &kid)
}

/// Changes to the stack's edge-token keys, made at start in this order: a rotation is three
/// starts, with the edges told of the new key between the first and the second (its public
/// half is in `cluster.json`'s `token_keys` from the first), and the old key's tokens left to
/// expire before the third.
#[derive(Debug, Clone, Default)]
pub struct TokenKeyChanges {
    /// Make the next key (`k2` after `k1`) and publish it; the signing key stays.
    pub add: bool,
    /// Sign tokens with this key from now on.
    pub sign_with: Option<String>,
    /// Delete this key; it must not be the signing key.
    pub drop: Option<String>,
}

const TOKEN_KEY_PREFIX: &str = "edge-token-";
/// The file naming the key that signs (absent: `k1`, the first key).
const SIGNING_KID_FILE: &str = "edge-token-signing";

fn token_key_path(keys: &Path, kid: &str) -> PathBuf {
    keys.join(format!("{TOKEN_KEY_PREFIX}{kid}.pk8"))
}

fn read_token_key(keys: &Path, kid: &str) -> anyhow::Result<SigningKey> {
    let path = token_key_path(keys, kid);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(SigningKey::from_pkcs8(kid, &bytes)?)
}

fn signing_kid(keys: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(keys.join(SIGNING_KID_FILE)) {
        Ok(kid) => Ok(kid.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("k1".to_owned()),
        Err(e) => Err(e).context("reading the signing key's id"),
    }
}

/// The token keys in `keys`, `k1`, `k2`, … in order: their numbers and ids.
fn token_kids(keys: &Path) -> anyhow::Result<Vec<(u64, String)>> {
    let mut kids: Vec<(u64, String)> = Vec::new();
    for entry in std::fs::read_dir(keys).with_context(|| format!("reading {}", keys.display()))? {
        let name = entry?.file_name();
        let Some(kid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TOKEN_KEY_PREFIX))
            .and_then(|n| n.strip_suffix(".pk8"))
        else {
            continue;
        };
        if let Some(n) = kid.strip_prefix('k').and_then(|n| n.parse().ok()) {
            kids.push((n, kid.to_owned()));
        }
    }
    kids.sort();
    Ok(kids)
}

/// Checks that every edge grants may list (`sites`) accepts token key `kid` (its `/healthz`
/// lists the keys in service) before the stack signs with it: an edge without it would
/// refuse every play it is sent. An edge that does not answer is warned about, not waited
/// for (it reads its keys when it starts again).
async fn edges_accept(client: &HttpClient, sites: &[EdgeSite], kid: &str) -> anyhow::Result<()> {
    use cadenza_common::http::client;
    let probes = sites.iter().map(|site| async move {
        let url = format!("{}/healthz", site.url);
        let held: Result<serde_json::Value, client::ClientError> = client::call_json(
            client,
            http::Method::GET,
            &url,
            None,
            None::<&()>,
            Duration::from_secs(3),
        )
        .await;
        (site, held)
    });
    let mut lacking = Vec::new();
    for (site, held) in futures_util::future::join_all(probes).await {
        match held {
            Ok(health) => {
                let ids: Vec<&str> = health["token_keys"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
                    .unwrap_or_default();
                if !ids.contains(&kid) {
                    lacking.push(format!("{} (holds {ids:?})", site.url));
                }
            }
            Err(e) => tracing::warn!(
                edge = %site.url,
                error = %e,
                "edge not reached; it is not known to accept token key {kid}"
            ),
        }
    }
    anyhow::ensure!(
        lacking.is_empty(),
        "not signing with token key {kid:?}: edges that do not accept it yet: {}; give them \
         the key (`--token-keys-file`, then reload) first",
        lacking.join(", ")
    );
    Ok(())
}

/// The stack's token keys after `changes`: the one that signs, and every one an edge should
/// accept (the signing key, keys added ahead of a rotation, and keys not yet dropped).
fn load_token_keys(
    data: &Path,
    changes: &TokenKeyChanges,
) -> anyhow::Result<(SigningKey, Vec<SigningKey>)> {
    let keys = data.join("keys");
    std::fs::create_dir_all(&keys)?;
    let numbered = token_kids(&keys)?;
    let made = (numbered.is_empty() || changes.add)
        .then(|| format!("k{}", numbered.last().map_or(1, |(n, _)| n + 1)));
    let mut kids: Vec<String> = numbered.into_iter().map(|(_, kid)| kid).collect();
    kids.extend(made.clone());
    // Every change is checked before any is made, so a refused start changes nothing.
    let signing = match &changes.sign_with {
        Some(kid) => {
            anyhow::ensure!(
                kids.contains(kid),
                "no token key {kid:?} to sign with (keys: {kids:?})"
            );
            kid.clone()
        }
        None => signing_kid(&keys)?,
    };
    if let Some(kid) = &changes.drop {
        anyhow::ensure!(
            *kid != signing,
            "token key {kid:?} signs tokens: sign with another first (--token-key-sign)"
        );
        anyhow::ensure!(
            kids.contains(kid),
            "no token key {kid:?} to drop (keys: {kids:?})"
        );
    }
    if let Some(kid) = &made {
        let (_, doc) = SigningKey::generate(kid)?;
        write_private(&token_key_path(&keys, kid), &doc)?;
        tracing::info!(kid, "edge-token key made");
    }
    if changes.sign_with.is_some() {
        write_private(&keys.join(SIGNING_KID_FILE), signing.as_bytes())?;
    }
    if let Some(kid) = &changes.drop {
        std::fs::remove_file(token_key_path(&keys, kid))?;
        kids.retain(|k| k != kid);
    }
    let all = kids
        .iter()
        .map(|kid| read_token_key(&keys, kid))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let signer = read_token_key(&keys, &signing)?;
    Ok((signer, all))
}

/// The service token of the stack whose data directory is `data` (operator tools).
pub fn service_token(data: &Path) -> anyhow::Result<String> {
    let secrets: Secrets = serde_json::from_str(
        &std::fs::read_to_string(data.join("secrets.json")).context("reading secrets.json")?,
    )?;
    Ok(secrets.service_token)
}

/// What an edge joining the stack in `data` takes from it (`cadenza edge --join`): the
/// origin, the certificate (presented and trusted), the edge key, the token keys and the
/// admin token.
#[derive(Debug, Clone)]
pub struct JoinInfo {
    pub origin: String,
    pub cert: CertPem,
    pub edge_key: String,
    pub token_keys: VerifyingKeys,
    pub admin_token: String,
}

/// Reads [`JoinInfo`] from a `cadenza up` data directory.
pub fn join_info(data: &Path) -> anyhow::Result<JoinInfo> {
    let info = ClusterInfo::load(data)?;
    let token_keys = info.verifying_keys()?;
    let secrets: Secrets = serde_json::from_str(
        &std::fs::read_to_string(data.join("secrets.json")).context("reading secrets.json")?,
    )?;
    let (cert, _) = load_or_create_cert(data)?;
    Ok(JoinInfo {
        origin: info.origin,
        cert,
        edge_key: secrets.edge_key,
        token_keys,
        admin_token: secrets.admin_token,
    })
}

/// Token keys written `KID=HEX` (32-byte Ed25519 public keys).
pub fn parse_token_keys(specs: impl IntoIterator<Item = String>) -> anyhow::Result<VerifyingKeys> {
    let mut keys = VerifyingKeys::default();
    for spec in specs {
        let (kid, hex) = spec
            .split_once('=')
            .with_context(|| format!("token key {spec:?}: expected KID=HEX"))?;
        let key = cadenza_common::hex_decode(hex.trim())
            .filter(|k| k.len() == 32)
            .with_context(|| format!("token key {kid:?}: expected 64 hex digits"))?;
        keys.insert(kid.trim(), key);
    }
    Ok(keys)
}

/// Whether `login` names a first-party app and an account whose password still matches.
async fn listener_signs_in(store: &Store, login: Option<&Login>) -> anyhow::Result<bool> {
    let Some(login) = login else {
        return Ok(false);
    };
    Ok(
        store.verify_client(&login.client_id, None).await? == Some(ClientKind::FirstParty)
            && store
                .sign_in(&login.email, &login.password)
                .await?
                .is_some(),
    )
}

/// A first-party app and a listener account for the embedded stack.
async fn make_listener(store: &Store) -> anyhow::Result<Login> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let app = store
        .create_client("Cadenza player", ClientKind::FirstParty, now)
        .await?;
    // A fresh address each time, so an account left from older secrets never collides.
    let email = format!("listener-{}@cadenza.localhost", &secret()[..12]);
    let password = secret();
    store.create_user(&email, &password, now).await?;
    Ok(Login {
        client_id: app.client_id,
        email,
        password,
    })
}

pub(crate) fn secret() -> String {
    hex_encode(&random_bytes::<24>())
}

fn load_or_create_secrets(data: &Path) -> anyhow::Result<Secrets> {
    let path = data.join("secrets.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid", path.display()));
    }
    let secrets = Secrets {
        service_token: secret(),
        label_key: secret(),
        edge_key: secret(),
        admin_token: secret(),
        master_keys: vec![MasterKey::generate().to_text()],
        access_token_key: secret(),
        listener: None,
    };
    write_private(&path, &serde_json::to_vec_pretty(&secrets)?)?;
    Ok(secrets)
}

pub(crate) fn load_or_create_cert(data: &Path) -> anyhow::Result<(CertPem, PathBuf)> {
    let dir = data.join("tls");
    std::fs::create_dir_all(&dir)?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        let pem = CertPem {
            cert: std::fs::read_to_string(&cert_path)?,
            key: std::fs::read_to_string(&key_path)?,
        };
        return Ok((pem, cert_path));
    }
    let pem = tls::self_signed(&["localhost", "127.0.0.1", "::1"])?;
    write_private(&key_path, pem.key.as_bytes())?;
    std::fs::write(&cert_path, &pem.cert)?;
    Ok((pem, cert_path))
}

async fn listener(ip: IpAddr, base: u16, offset: u16) -> anyhow::Result<TcpListener> {
    let port = if base == 0 { 0 } else { base + offset };
    TcpListener::bind(SocketAddr::new(ip, port))
        .await
        .with_context(|| format!("cannot listen on {ip}:{port}"))
}

fn url(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

impl Stack {
    /// Starts every service.
    pub async fn start(config: StackConfig) -> anyhow::Result<Self> {
        let data = &config.data;
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let mut secrets = load_or_create_secrets(data)?;
        let (cert, ca_path) = load_or_create_cert(data)?;
        let server_tls = tls::server_config(&cert)?;
        let client = https_client(tls::client_config(cert.cert.as_bytes())?);
        if let Some(kid) = &config.token_keys.sign_with {
            edges_accept(&client, &config.edge_sites, kid).await?;
        }
        let (signing, accepted) = load_token_keys(data, &config.token_keys)?;
        let mut keys = VerifyingKeys::default();
        for key in &accepted {
            keys.insert(key.kid(), key.public_key());
        }

        let (control_l, origin_l, edge_l, admin_l) = (
            listener(config.listen, config.port_base, 0).await?,
            listener(config.listen, config.port_base, 1).await?,
            listener(config.listen, config.port_base, 2).await?,
            listener(config.listen, config.port_base, 3).await?,
        );
        let cleartext_l = if config.edge_cleartext {
            Some(listener(config.listen, config.port_base, 4).await?)
        } else {
            None
        };
        let mut info = ClusterInfo {
            control_plane: url(control_l.local_addr()?),
            origin: url(origin_l.local_addr()?),
            edge: url(edge_l.local_addr()?),
            ca: std::path::absolute(&ca_path)?,
            label_key: secrets.label_key.clone(),
            edge_admin: url(admin_l.local_addr()?),
            admin_token: secrets.admin_token.clone(),
            edge_cleartext: match &cleartext_l {
                Some(l) => Some(format!("http://{}", l.local_addr()?)),
                None => None,
            },
            token_keys: accepted
                .iter()
                .map(|k| (k.kid().to_owned(), hex_encode(&k.public_key())))
                .collect(),
            listener: None,
            data_dir: Some(data.clone()),
        };
        let (trigger, shutdown) = Shutdown::new();
        let limits = ServerLimits::default();
        let mut tasks = Vec::new();

        if secrets.master_keys.is_empty() || config.rotate_master_key {
            secrets
                .master_keys
                .insert(0, MasterKey::generate().to_text());
            write_private(
                &data.join("secrets.json"),
                &serde_json::to_vec_pretty(&secrets)?,
            )?;
        }
        let masters = secrets
            .master_keys
            .iter()
            .map(|k| MasterKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .context("secrets.json: master_keys")?;
        let current = masters[0].clone();
        let store = match &config.database_url {
            Some(url) => Store::open(url).await?,
            None => Store::open_sqlite(&data.join("catalogue.sqlite")).await?,
        }
        .with_master_keys(KeyRing::new(current.clone(), masters));
        // Content keys stored in the clear or under an older master key are sealed under
        // the current one; once all are, the older keys are no longer needed.
        let resealed = store.reseal_keys().await?;
        if resealed > 0 {
            tracing::info!(
                keys = resealed,
                master_key = current.id(),
                "content keys sealed"
            );
        }
        if secrets.master_keys.len() > 1 {
            secrets.master_keys.truncate(1);
            write_private(
                &data.join("secrets.json"),
                &serde_json::to_vec_pretty(&secrets)?,
            )?;
        }
        // The embedded stack's own label ("default") and its key, which `cadenza ingest`
        // uses. A data directory from before labels had keys gets a real one here.
        if store.verify_label_key(&secrets.label_key).await?.is_none() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let label = store.ensure_label("default", now).await?;
            secrets.label_key = store.create_label_key(&label, now).await?.api_key;
            write_private(
                &data.join("secrets.json"),
                &serde_json::to_vec_pretty(&secrets)?,
            )?;
        }
        info.label_key = secrets.label_key.clone();
        if !listener_signs_in(&store, secrets.listener.as_ref()).await? {
            secrets.listener = Some(make_listener(&store).await?);
            write_private(
                &data.join("secrets.json"),
                &serde_json::to_vec_pretty(&secrets)?,
            )?;
        }
        info.listener = secrets.listener.clone();
        let geo = match &config.geoip {
            Some(path) => {
                let geo = Arc::new(cadenza_geo::ReloadingGeo::open(path)?);
                tasks.push(cadenza_edge::spawn_geo_reloader(
                    geo.clone(),
                    Duration::from_secs(10),
                    shutdown.clone(),
                )?);
                Some(geo)
            }
            None => None,
        };
        let control_plane = Arc::new(ControlPlane::new(
            ControlPlaneConfig {
                service_token: secrets.service_token.clone(),
                job_lease: config.job_lease,
                max_job_attempts: 3,
                job_retry_backoff: config.job_retry_backoff,
                grants: GrantPolicy {
                    edges: std::iter::once(EdgeSite::worldwide(info.edge.clone()))
                        .chain(config.edge_sites.iter().cloned())
                        .collect(),
                    ..Default::default()
                },
                geo: geo.clone(),
                trusted_proxies: config.trusted_proxies.clone(),
                auth: AuthConfig {
                    access_token_key: secrets.access_token_key.as_bytes().to_vec(),
                    ..AuthConfig::default()
                },
                cors: config.cors.clone(),
            },
            store,
            signing,
        ));
        let indexed = control_plane.load_search().await?;
        tracing::info!(documents = indexed, "search index built");
        tasks.push(spawn_catalogue_upkeep(
            control_plane.clone(),
            shutdown.clone(),
        ));
        tasks.push(spawn_edge_prober(
            control_plane.clone(),
            client.clone(),
            config.edge_probe_every,
            shutdown.clone(),
        ));
        tasks.push(
            serve_on(
                control_l,
                Some(server_tls.clone()),
                limits.clone(),
                control_plane.clone(),
                shutdown.clone(),
            )?
            .task,
        );

        let objects = data.join("objects");
        let store: Arc<dyn ObjectStore> = match &config.s3 {
            Some(s3) => {
                let store = S3Store::new(s3);
                store
                    .ensure_bucket()
                    .await
                    .with_context(|| format!("S3 bucket {:?} at {}", s3.bucket, s3.endpoint))?;
                Arc::new(store)
            }
            None => Arc::new(LocalDirStore::open(&objects).await?),
        };
        let origin = Origin::new(
            OriginConfig {
                staging_dir: objects.join(".staging"),
                control_plane: info.control_plane.clone(),
                service_token: secrets.service_token.clone(),
                edge_key: secrets.edge_key.clone(),
                max_upload_bytes: config.max_upload_bytes,
                uploads_dir: objects.join(".uploads"),
                upload_ttl: config.upload_ttl,
                cors: config.cors.clone(),
            },
            store,
            client.clone(),
        )
        .await?;
        tasks.push(
            serve_on(
                origin_l,
                Some(server_tls.clone()),
                limits.clone(),
                Arc::new(origin),
                shutdown.clone(),
            )?
            .task,
        );

        let origins = if config.extra_origins_first {
            config
                .extra_origins
                .iter()
                .cloned()
                .chain([info.origin.clone()])
                .collect()
        } else {
            std::iter::once(info.origin.clone())
                .chain(config.extra_origins.iter().cloned())
                .collect()
        };
        let mut edge_config = EdgeNodeConfig::new(
            cert.clone(),
            cert.cert.as_bytes().to_vec(),
            origins,
            secrets.edge_key.clone(),
            secrets.admin_token.clone(),
            keys,
        );
        edge_config.geo = geo.clone();
        edge_config.trusted_proxies = config.trusted_proxies.clone();
        edge_config.cors = config.cors.clone();
        edge_config.slice_bytes = config.slice_bytes;
        edge_config.memory_bytes = config.edge_cache_bytes;
        edge_config.read_ahead = config.edge_read_ahead;
        edge_config.access_log = config.access_log;
        edge_config.sendfile = config.edge_sendfile;
        edge_config.limits = limits.clone();
        if config.edge_disk_bytes > 0 {
            edge_config.disk = vec![(data.join("edge-cache"), config.edge_disk_bytes)];
        }
        let node = edge_node::start(
            edge_config,
            EdgeListeners {
                main: edge_l,
                admin: admin_l,
                cleartext: cleartext_l,
                udp: None,
            },
            shutdown.clone(),
        )
        .await?;
        let edge = node.edge;
        tasks.extend(node.tasks);

        for _ in 0..config.workers {
            let worker_config =
                worker_config(&info, &secrets.service_token, data, config.job_lease);
            tasks.push(tokio::spawn(worker::run(
                worker_config,
                client.clone(),
                shutdown.clone(),
            )));
        }

        write_private(
            &data.join("cluster.json"),
            &serde_json::to_vec_pretty(&info)?,
        )?;
        Ok(Self {
            info,
            edge,
            control_plane,
            trigger,
            tasks,
        })
    }

    /// An HTTPS client trusting the stack's certificate.
    pub fn client(&self) -> anyhow::Result<HttpClient> {
        self.info.client()
    }

    /// Stops every service and waits for them to drain.
    pub async fn shutdown(self) {
        self.trigger.trigger();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
