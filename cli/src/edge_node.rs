//! One edge node: the slice cache, its listeners (TLS on TCP for HTTP/1.1 and HTTP/2, UDP
//! for HTTP/3, an optional cleartext port, the admin port) and its upstreams. `cadenza up`
//! runs one beside the other services; `cadenza edge` runs one alone, pointed at origins
//! elsewhere, as operators deploy them per region.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cadenza_common::VerifyingKeys;
use cadenza_common::follow::{file_stamp, spawn_follower};
use cadenza_common::http::client::https_client;
use cadenza_common::http::tls::{self, CertPem};
use cadenza_common::http::{ClientCap, ProxyProtocol, ServerLimits, Shutdown, serve_on};
use cadenza_edge::{
    CorsOrigins, Disks, Edge, EdgeAdmin, EdgeConfig, EdgeMetrics, H3Limits, Shield, SliceCache,
    SliceMath, UnknownCountry, UpstreamConfig, serve_h3,
};
use cadenza_geo::{Cidr, ReloadingGeo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Everything an edge node needs.
#[derive(Debug, Clone)]
pub struct EdgeNodeConfig {
    /// The certificate the node presents (TCP and QUIC).
    pub cert: CertPem,
    /// The certificate and key files `cert` was read from: watched, so a renewed pair is
    /// presented to new connections without a restart (checked every few seconds and on
    /// SIGHUP). `None` presents `cert` for the node's life.
    pub cert_files: Option<(PathBuf, PathBuf)>,
    /// Certificates to trust when fetching from origins and from the region's other edges.
    pub upstream_ca: Vec<u8>,
    /// Origin base URLs in preference order.
    pub origins: Vec<String>,
    /// The key origins (and owning edges) expect from edges.
    pub edge_key: String,
    /// Bearer token for the admin listener.
    pub admin_token: String,
    /// The control plane's token-signing public keys (two during a rotation).
    pub token_keys: VerifyingKeys,
    /// Country database for the territory check, reloaded by the caller.
    pub geo: Option<Arc<ReloadingGeo>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The TLS listener's connections from `trusted_proxies` open with a PROXY protocol
    /// header naming the client; other peers are served as themselves.
    pub proxy_protocol_tls: bool,
    /// The same for the cleartext listener.
    pub proxy_protocol_cleartext: bool,
    /// Web pages whose scripts may read rendition responses (CORS).
    pub cors: CorsOrigins,
    /// The UDP port `Alt-Svc` names for HTTP/3: `None`, the listener's own; `Some(0)`, none
    /// (HTTP/3 is not advertised).
    pub alt_svc_port: Option<u16>,
    /// Policy for listeners the database does not place.
    pub unknown_country: UnknownCountry,
    /// Slice size.
    pub slice_bytes: u64,
    /// Memory tier size.
    pub memory_bytes: u64,
    /// Disk tiers, a directory and a size in bytes each (one per device); none keeps memory
    /// only.
    pub disk: Vec<(PathBuf, u64)>,
    /// Slices fetched ahead of a sequential reader.
    pub read_ahead: u64,
    /// Log every request (target `access`).
    pub access_log: bool,
    /// The shield tier: this edge's URL as its peers spell it, and the region's edges
    /// (itself included or not). `None` fetches every miss from the origins.
    pub region: Option<(String, Vec<String>)>,
    /// Time allowed for one slice fetch from one upstream.
    pub upstream_timeout: Duration,
    /// Consecutive failures that open an upstream's (origin's or region peer's) circuit
    /// breaker: it is then asked last.
    pub breaker_threshold: u32,
    /// How long an open breaker keeps its upstream asked last.
    pub breaker_cooldown: Duration,
    /// How far past its expiry a token is still accepted (clocks that disagree).
    pub token_leeway: Duration,
    /// Connection limits and timeouts.
    pub limits: ServerLimits,
    /// Connections one client (an IPv4 address or IPv6 /64, `trusted_proxies` not counted)
    /// may hold at once across the player listeners, TCP and QUIC. `None`: no such limit.
    pub max_connections_per_client: Option<u32>,
    /// HTTP/3 limits and QUIC tuning.
    pub h3: H3Limits,
    /// Session-ticket keys shared with the region's other edges, so a player resumes its TLS
    /// session at any of them (TCP; HTTP/3 resumes from this edge's session cache). `None`
    /// makes keys at start, good for this process only.
    pub ticket_keys: Option<Arc<tls::TicketKeys>>,
    /// Keep memory-tier slices in memory files, so the cleartext listener's HTTP/1.1 sends
    /// them by `sendfile` (nginx's `sendfile on`). Only with a cleartext listener: TLS
    /// encrypts in user space.
    pub sendfile: bool,
}

impl EdgeNodeConfig {
    /// Defaults for everything but the credentials and the upstreams.
    pub fn new(
        cert: CertPem,
        upstream_ca: Vec<u8>,
        origins: Vec<String>,
        edge_key: String,
        admin_token: String,
        token_keys: VerifyingKeys,
    ) -> Self {
        Self {
            cert,
            cert_files: None,
            upstream_ca,
            origins,
            edge_key,
            admin_token,
            token_keys,
            geo: None,
            trusted_proxies: Vec::new(),
            proxy_protocol_tls: false,
            proxy_protocol_cleartext: false,
            cors: CorsOrigins::Any,
            alt_svc_port: None,
            unknown_country: UnknownCountry::Allow,
            slice_bytes: 256 * 1024,
            memory_bytes: 256 * 1024 * 1024,
            disk: Vec::new(),
            read_ahead: 2,
            access_log: false,
            region: None,
            upstream_timeout: Duration::from_secs(10),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(10),
            token_leeway: cadenza_common::verify_leeway_default(),
            limits: ServerLimits::default(),
            max_connections_per_client: None,
            h3: H3Limits::default(),
            ticket_keys: None,
            sendfile: true,
        }
    }
}

impl EdgeNodeConfig {
    /// Defaults for an edge of the `cadenza up` stack `join` describes: its origin, keys and
    /// certificate, presented and trusted.
    pub fn joining(join: &crate::stack::JoinInfo) -> Self {
        Self::new(
            join.cert.clone(),
            join.cert.cert.as_bytes().to_vec(),
            vec![join.origin.clone()],
            join.edge_key.clone(),
            join.admin_token.clone(),
            join.token_keys.clone(),
        )
    }
}

/// The sockets an edge node serves on, bound by the caller (so it knows the ports first).
#[derive(Debug)]
pub struct EdgeListeners {
    /// Players, over TLS; HTTP/3 binds the same port on UDP.
    pub main: TcpListener,
    /// Purge, pre-warm, stats and metrics, over TLS.
    pub admin: TcpListener,
    /// Players without TLS, behind a load balancer that terminates it.
    pub cleartext: Option<TcpListener>,
    /// HTTP/3's socket on `main`'s port, when the service manager passed one; else it is
    /// bound at start.
    pub udp: Option<std::net::UdpSocket>,
}

/// A running edge node.
#[derive(Debug)]
pub struct EdgeNode {
    /// The service, for tests and stats.
    pub edge: Arc<Edge>,
    /// The admin API, told when the node begins to drain.
    pub admin: Arc<EdgeAdmin>,
    /// Serving tasks; each ends after shutdown once its connections drain.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts an edge node on `listeners` until `shutdown`.
pub async fn start(
    config: EdgeNodeConfig,
    listeners: EdgeListeners,
    shutdown: Shutdown,
) -> anyhow::Result<EdgeNode> {
    let serving = match &config.cert_files {
        Some((cert, key)) => tls::ServingCert::watch(cert, key)?,
        None => tls::ServingCert::new(&config.cert)?,
    };
    let mut server_tls = tls::server_config(&serving)?;
    if let Some(keys) = &config.ticket_keys {
        server_tls = tls::with_ticket_keys(&server_tls, keys.clone());
    }
    let client = https_client(tls::client_config(&config.upstream_ca)?);
    let disk = if config.disk.is_empty() {
        None
    } else {
        Some(Arc::new(
            Disks::open(&config.disk, config.slice_bytes).await?,
        ))
    };
    if config.sendfile && listeners.cleartext.is_some() {
        let files = sendfile_budget(&config);
        cadenza_common::mapped::set_budget(files);
        tracing::info!(
            memory_files = files,
            "cleartext HTTP/1.1 sends cached slices by sendfile"
        );
    }
    let (breaker_threshold, breaker_cooldown) = (config.breaker_threshold, config.breaker_cooldown);
    let mut cache = SliceCache::new(
        SliceMath::new(config.slice_bytes),
        config.memory_bytes,
        UpstreamConfig {
            origins: config.origins.clone(),
            edge_key: config.edge_key.clone(),
            timeout: config.upstream_timeout,
            breaker_threshold,
            breaker_cooldown,
        },
        client,
        Arc::new(EdgeMetrics::new()),
        disk,
    );
    if let Some((me, peers)) = &config.region {
        cache = cache.with_shield(Shield::new(me, peers, breaker_threshold, breaker_cooldown));
    }
    let cache = Arc::new(cache);
    let mut tasks = Vec::new();
    let admin = Arc::new(EdgeAdmin::new(
        cache.clone(),
        config.admin_token.clone(),
        true,
    ));
    // The edge reads no request body but the admin API's few bytes: unless the configuration
    // says otherwise, what an HTTP/2 client may send ahead of its reading is kept to one
    // window (hyper's 1 MiB would wait in memory behind each response in progress).
    let mut limits = config.limits.clone();
    limits.h2_receive_window.get_or_insert(EDGE_H2_WINDOW);
    let metrics = cache.metrics().clone();
    let mut listening = |name: &str, l: cadenza_common::http::Listening| {
        metrics.count_connections(name, l.connections);
        tasks.push(l.task);
    };
    listening(
        "admin",
        serve_on(
            listeners.admin,
            Some(server_tls.clone()),
            limits.clone(),
            admin.clone(),
            shutdown.clone(),
        )?,
    );
    let main_addr = listeners.main.local_addr()?;
    // Alt-Svc (RFC 7838) tells clients the same origin speaks HTTP/3 on this UDP port, or on
    // the one a balancer in front of the edge forwards to it.
    let alt_svc = match config.alt_svc_port {
        Some(0) => None,
        port => http::HeaderValue::from_str(&format!(
            "h3=\":{}\"; ma=86400",
            port.unwrap_or(main_addr.port())
        ))
        .ok(),
    };
    let edge = Arc::new(Edge::new(
        EdgeConfig {
            keys: config.token_keys.clone(),
            token_leeway: config.token_leeway,
            geo: config.geo.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            unknown_country: config.unknown_country,
            read_ahead_slices: config.read_ahead,
            alt_svc,
            access_log: config.access_log,
            peer_key: config.region.is_some().then(|| config.edge_key.clone()),
            cors: config.cors.clone(),
        },
        cache,
    ));
    // The balancers: they may name their clients in a PROXY header, and are not counted
    // against a client's share of connections themselves (they speak for many).
    let trusted = {
        let proxies = Arc::new(config.trusted_proxies.clone());
        move |ip: std::net::IpAddr| proxies.iter().any(|proxy| proxy.contains(ip))
    };
    // One count for the player listeners, so a client's TLS, cleartext and HTTP/3
    // connections add up.
    let client_cap = config
        .max_connections_per_client
        .map(|max| ClientCap::new(max, trusted.clone()));
    let behind_proxy = |on: bool| {
        let mut limits = limits.clone();
        limits.client_cap = client_cap.clone();
        if on {
            limits.proxy_protocol = Some(ProxyProtocol::trusting(trusted.clone()));
        }
        limits
    };
    listening(
        "tls",
        serve_on(
            listeners.main,
            Some(server_tls),
            behind_proxy(config.proxy_protocol_tls),
            edge.clone(),
            shutdown.clone(),
        )?,
    );
    if let Some(l) = listeners.cleartext {
        let limits = behind_proxy(config.proxy_protocol_cleartext);
        listening(
            "cleartext",
            serve_on(l, None, limits, edge.clone(), shutdown.clone())?,
        );
    }
    let h3_tls = tls::quic_server_config(&serving)?;
    let mut h3_limits = config.h3.clone();
    h3_limits.client_cap = client_cap;
    let h3 = serve_h3(
        (main_addr, listeners.udp),
        h3_tls,
        h3_limits,
        edge.clone(),
        shutdown.clone(),
    )?;
    metrics.count_connections("quic", h3.connections);
    tasks.push(h3.task);
    if config.cert_files.is_some() {
        tasks.push(spawn_cert_reloader(serving, CERT_CHECK_EVERY, shutdown)?);
    }
    Ok(EdgeNode { edge, admin, tasks })
}

/// What an HTTP/2 client may send the edge ahead of its reading, per stream and per
/// connection.
const EDGE_H2_WINDOW: u32 = 64 * 1024;

/// How many memory files (one per rendition with slices in the memory tier, each an open
/// descriptor) may exist: what the descriptor limit leaves after a full listener's
/// connections and a reserve of 1,024 for upstream connections, disk-tier files and the
/// admin port, and no more than the memory tier holds slices (a file holds one at least).
/// (Players reach an edge on one listener, TLS or, behind a balancer, cleartext; both full
/// at once would need twice the connections' descriptors anyway.)
fn sendfile_budget(config: &EdgeNodeConfig) -> usize {
    let limit = match cadenza_common::mapped::raise_descriptor_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "descriptor limit unknown; slices stay on the heap");
            return 0;
        }
    };
    let reserve = (config.limits.max_connections as u64).saturating_add(1024);
    let slices = cadenza_edge::slice_capacity(config.memory_bytes, config.slice_bytes);
    let files = limit.saturating_sub(reserve).min(slices);
    if files < slices {
        tracing::warn!(
            limit,
            files,
            slices,
            "the descriptor limit leaves room for only some renditions in memory files; \
             the rest are copied to cleartext sockets (raise `ulimit -Hn`)"
        );
    }
    usize::try_from(files).unwrap_or(usize::MAX)
}

/// Where an edge's token keys come from, and are looked at again.
#[derive(Debug, Clone)]
pub enum TokenKeySource {
    /// A file of `KID=HEX` lines, an Ed25519 public key in hex each (`--token-keys-file`);
    /// blank lines and `#` comments skipped.
    File(PathBuf),
    /// The `token_keys` of the `cluster.json` in a stack's data directory (`--join`): a
    /// stack started with `--token-key-add` publishes its next key there, and the edge takes
    /// it without a restart.
    Cluster(PathBuf),
}

impl TokenKeySource {
    /// The file to watch.
    fn file(&self) -> PathBuf {
        match self {
            Self::File(path) => path.clone(),
            Self::Cluster(dir) => dir.join("cluster.json"),
        }
    }

    /// The keys it holds now; at least one, or every play would be refused.
    pub fn read(&self) -> anyhow::Result<VerifyingKeys> {
        let file = self.file();
        let keys = match self {
            Self::File(_) => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading token keys from {}", file.display()))?;
                let specs = text
                    .lines()
                    .map(|line| {
                        line.split_once('#')
                            .map_or(line, |(before, _)| before)
                            .trim()
                    })
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned);
                crate::stack::parse_token_keys(specs)
            }
            Self::Cluster(dir) => crate::stack::ClusterInfo::load(dir)?.verifying_keys(),
        }
        .with_context(|| format!("token keys in {}", file.display()))?;
        anyhow::ensure!(!keys.is_empty(), "{} holds no token key", file.display());
        Ok(keys)
    }
}

/// Follows `source` until `shutdown`: every `every`, and at once on SIGHUP, a changed file
/// is read and its keys put in service for the next request (tokens signed with a key no
/// longer listed are refused from then on); one that does not parse or holds no key is
/// logged and the keys in service stay.
pub fn spawn_token_key_reloader(
    edge: Arc<Edge>,
    source: TokenKeySource,
    every: Duration,
    shutdown: Shutdown,
) -> anyhow::Result<JoinHandle<()>> {
    let file = source.file();
    let seen = std::sync::Mutex::new(file_stamp(&file));
    Ok(spawn_follower(
        "the token keys' file",
        every,
        shutdown,
        move || {
            let now = file_stamp(&file);
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if now == *seen {
                return;
            }
            *seen = now;
            match source.read() {
                Ok(keys) => {
                    let ids = keys.ids();
                    if edge.replace_token_keys(keys) {
                        tracing::info!(keys = ?ids, "token keys reloaded");
                    }
                }
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "token-key reload refused; the keys in service stay"
                ),
            }
        },
    )?)
}

/// How often the certificate files are looked at (a `stat` of each).
const CERT_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Follows the served certificate's files until `shutdown`: every `every`, and at once on
/// SIGHUP (what `systemctl reload` and certbot's deploy hooks send), a changed pair is loaded
/// and presented from the next handshake; one that does not load is logged and the
/// certificate in service stays.
fn spawn_cert_reloader(
    serving: Arc<tls::ServingCert>,
    every: Duration,
    shutdown: Shutdown,
) -> anyhow::Result<JoinHandle<()>> {
    Ok(spawn_follower(
        "the certificate files",
        every,
        shutdown,
        move || match serving.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificate reloaded; new connections get it"),
            Ok(false) => {}
            Err(e) => tracing::error!(
                error = %e,
                "TLS certificate reload refused; the certificate in service stays"
            ),
        },
    )?)
}
