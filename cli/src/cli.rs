//! Command-line definitions.

use std::path::PathBuf;
use std::time::Duration;

use cadenza_common::{Quality, Territories, TrackId};
use clap::{Parser, Subcommand};

/// The player listeners that take a PROXY protocol header first (`--proxy-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyListeners {
    /// The TLS listener (`--listen`, TCP).
    Tls,
    /// The cleartext listener (`--cleartext-listen`).
    Cleartext,
    /// Both.
    Both,
}

/// Cadenza: recorded audio delivery — origin, transcoder, edges and control plane.
#[derive(Debug, Parser)]
#[command(name = "cadenza", version, about)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log as JSON lines (one object per event) instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where a client command finds the running services.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoint {
    /// Data directory of a running `cadenza up`; URLs, keys and the CA come from it.
    #[arg(long, default_value = "cadenza-data", env = "CADENZA_DATA")]
    pub data: PathBuf,
}

/// An S3-compatible bucket as the object store instead of `{data}/objects`.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// S3 endpoint URL (e.g. http://127.0.0.1:8333 for SeaweedFS); enables the S3 store.
    #[arg(long, value_name = "URL", requires = "s3_bucket")]
    pub s3_endpoint: Option<String>,
    /// Bucket for masters and renditions (created if missing).
    #[arg(long, value_name = "NAME")]
    pub s3_bucket: Option<String>,
    /// Region to sign for.
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,
    /// Key prefix inside the bucket.
    #[arg(long, default_value = "")]
    pub s3_prefix: String,
    /// Virtual-hosted addressing (bucket.endpoint) instead of path-style.
    #[arg(long)]
    pub s3_virtual_hosted: bool,
    /// Access key id.
    #[arg(long, env = "CADENZA_S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: Option<String>,
    /// Secret access key.
    #[arg(long, env = "CADENZA_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
}

impl S3Args {
    /// The store configuration, when an endpoint was given.
    pub fn config(&self) -> anyhow::Result<Option<cadenza_origin::S3Config>> {
        let Some(endpoint) = &self.s3_endpoint else {
            return Ok(None);
        };
        let (Some(access_key), Some(secret_key)) = (&self.s3_access_key, &self.s3_secret_key)
        else {
            anyhow::bail!("--s3-endpoint needs CADENZA_S3_ACCESS_KEY and CADENZA_S3_SECRET_KEY");
        };
        Ok(Some(cadenza_origin::S3Config {
            endpoint: endpoint.clone(),
            bucket: self.s3_bucket.clone().unwrap_or_default(),
            region: self.s3_region.clone(),
            access_key: access_key.clone(),
            secret_key: secret_key.clone(),
            path_style: !self.s3_virtual_hosted,
            part_bytes: 16 * 1024 * 1024,
            prefix: self.s3_prefix.clone(),
        }))
    }
}

/// `cadenza edge`: where a standalone edge serves, what it trusts, and its cache.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// Directory for the edge's state: its disk cache, a self-signed certificate when none
    /// is given, and `edge.json` (its URLs and admin token, written at start).
    #[arg(long, default_value = "cadenza-edge-data", env = "CADENZA_EDGE_DATA")]
    pub data: PathBuf,
    /// Join the `cadenza up` stack in this data directory: its origin, certificate, edge
    /// key, token keys and admin token, unless given below. Its token keys are followed
    /// (cluster.json looked at every 10 s and on SIGHUP), so a key the stack adds is taken
    /// without a restart.
    #[arg(long, value_name = "DIR")]
    pub join: Option<PathBuf>,
    /// Origin base URL; repeat for failover, in preference order.
    #[arg(long = "origin", value_name = "URL")]
    pub origins: Vec<String>,
    /// The key the origins expect from edges.
    #[arg(long, env = "CADENZA_EDGE_KEY", hide_env_values = true)]
    pub edge_key: Option<String>,
    /// A public key verifying edge tokens, `KID=HEX` (cluster.json's token_keys); repeat
    /// during a key rotation.
    #[arg(long = "token-key", value_name = "KID=HEX")]
    pub token_keys: Vec<String>,
    /// A file of token keys, one `KID=HEX` a line (`#` starts a comment), in place of
    /// --token-key: looked at every 10 s and at once on SIGHUP, so a rotation's new key is
    /// added, and later the old one withdrawn, without a restart. A file that does not parse
    /// or holds no key is refused and logged, and the keys in service stay.
    #[arg(long, value_name = "FILE", conflicts_with = "token_keys")]
    pub token_keys_file: Option<PathBuf>,
    /// PEM bundle to trust for origins and peer edges (default: this edge's certificate and,
    /// with --join, the stack's).
    #[arg(long, value_name = "PEM")]
    pub upstream_ca: Option<PathBuf>,
    /// Certificate chain to present (PEM); without it a self-signed one is made in --data.
    /// It and --key are watched (every 10 s, and at once on SIGHUP): a renewed pair is
    /// presented to new connections without a restart; one that does not load is refused.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key for --cert (PKCS#8 PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Address for players: TLS on TCP (HTTP/1.1, HTTP/2) and HTTP/3 on the same UDP port.
    #[arg(long, default_value = "127.0.0.1:7743")]
    pub listen: std::net::SocketAddr,
    /// Address of the admin listener (purge, pre-warm, stats, /metrics), over TLS.
    #[arg(long, default_value = "127.0.0.1:7744")]
    pub admin_listen: std::net::SocketAddr,
    /// Also serve players without TLS here (behind a TLS-terminating load balancer).
    #[arg(long, value_name = "ADDR")]
    pub cleartext_listen: Option<std::net::SocketAddr>,
    /// Bearer token for the admin listener (default: the joined stack's, else a new one in
    /// edge.json).
    #[arg(long, env = "CADENZA_EDGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Memory tier, MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u64,
    /// Disk tier under --data, GiB (0: memory only).
    #[arg(long, default_value_t = 4)]
    pub disk_gib: u64,
    /// A disk tier on its own device, `DIR:GIB` (repeat, one per device, in place of
    /// --disk-gib's directory under --data): each file lives on one disk, picked by weighted
    /// rendezvous hashing, and a disk whose writes keep failing is left out (its files go to
    /// the others) and tried again after 60 s.
    #[arg(long, value_name = "DIR:GIB", value_parser = disk_spec, conflicts_with = "disk_gib")]
    pub disk: Vec<(PathBuf, u64)>,
    /// Slice size, KiB.
    #[arg(long, default_value_t = 256)]
    pub slice_kib: u64,
    /// Slices fetched ahead of a sequential reader.
    #[arg(long, default_value_t = 2)]
    pub read_ahead: u64,
    /// MaxMind country database for the territory check (looked at every 10 s and on SIGHUP;
    /// a changed file that verifies replaces the one in service).
    #[arg(long, value_name = "MMDB")]
    pub geoip: Option<PathBuf>,
    /// A proxy (IP or CIDR) whose X-Forwarded-For is believed (and, with --proxy-protocol,
    /// whose PROXY header); repeatable.
    #[arg(long, value_name = "CIDR")]
    pub trusted_proxy: Vec<cadenza_geo::Cidr>,
    /// Player TCP listeners behind a load balancer that passes TCP through (HAProxy
    /// `send-proxy`/`send-proxy-v2`, AWS NLB, nginx `proxy_protocol on`): each connection
    /// opens with a PROXY protocol header (v1 or v2) naming the client, whose address is then
    /// the one placed by GeoIP and logged. `tls`, `cleartext` or `both`. A --trusted-proxy
    /// peer's connections must open with one (else they are closed); other peers (clients
    /// reaching the edge directly, the region's other edges) are served as themselves, and
    /// closed if they send one. HTTP/3 is not affected
    #[arg(
        long,
        value_enum,
        value_name = "LISTENERS",
        requires = "trusted_proxy",
        requires_ifs = [("cleartext", "cleartext_listen"), ("both", "cleartext_listen")]
    )]
    pub proxy_protocol: Option<ProxyListeners>,
    /// A web origin whose pages' scripts may read the edge's responses (CORS), as
    /// `https://player.example.com`; repeat. Without it any page may
    /// (`Access-Control-Allow-Origin: *`): the token, not the page, opens a file
    #[arg(long, value_name = "ORIGIN", value_parser = web_origin)]
    pub cors_origin: Vec<String>,
    /// The UDP port clients are told to reach HTTP/3 on (`Alt-Svc: h3=":PORT"`), when a
    /// balancer forwards another port to --listen's (as 443 to 7743); 0 advertises no HTTP/3.
    /// Default: --listen's port
    #[arg(long, value_name = "PORT")]
    pub alt_svc_port: Option<u16>,
    /// Refuse (451) listeners the GeoIP database cannot place, instead of serving them.
    #[arg(long)]
    pub deny_unknown_country: bool,
    /// Log every request to stderr (target `access`; JSON with --log-json).
    #[arg(long)]
    pub access_log: bool,
    /// Log every request to this file instead of stderr (appended through a 64 KiB buffer
    /// written out every second; SIGHUP reopens the path, for logrotate). Implies
    /// --access-log
    #[arg(long, value_name = "PATH")]
    pub access_log_file: Option<PathBuf>,
    /// Another edge of this region (its player URL); repeat. With peers, each file has one
    /// owner in the region (rendezvous hashing), which alone asks the origin for it.
    #[arg(long = "region-peer", value_name = "URL")]
    pub region_peers: Vec<String>,
    /// This edge's URL as its region peers spell it (default https://LISTEN).
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    /// Connections each player listener holds at once (TLS, cleartext, and HTTP/3 on UDP);
    /// beyond it a new client takes the place of the connection idle longest (no request
    /// open), or is refused when none is idle.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,
    /// HTTP/3 connections held at once, if not --max-connections. An idle HTTP/3
    /// connection holds about 27 KiB against a TCP one's 2.5-6.5 KiB, so a lower bound here
    /// keeps QUIC's memory in hand; idle ones give way to new clients.
    #[arg(long, value_name = "N")]
    pub h3_max_connections: Option<usize>,
    /// Connections one client may hold at once, across the player listeners (nginx's
    /// `limit_conn` on the client's address): an IPv4 address or an IPv6 /64, as placed
    /// through --proxy-protocol; --trusted-proxy peers themselves are not counted. One past
    /// it is closed at accept (HTTP/3: refused). Leave room for clients that share an
    /// address (carrier-grade NAT, offices) and for the region's other edges. Default: no
    /// limit but --max-connections
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_client: Option<u32>,
    /// Largest UDP payload HTTP/3's path MTU discovery probes for (1200–65527).
    #[arg(long, default_value_t = 1452)]
    pub h3_max_udp_payload: u16,
    /// Ask HTTP/3 clients to acknowledge every N packets (where they support the ACK
    /// frequency extension); 2 is QUIC's default of every other packet.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub h3_ack_every: u32,
    /// HTTP/3 driver tasks, each with its own socket on the port and datagrams steered to
    /// it by connection ID; 0 is one per core the process may run on (at most 64).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub h3_drivers: usize,
    /// Copy cached slices to cleartext HTTP/1.1 sockets instead of handing them over by
    /// sendfile from memory files (nginx's `sendfile off`).
    #[arg(long)]
    pub no_sendfile: bool,
    /// A TLS session-ticket key shared by the region's edges (a file of at least 32 random
    /// bytes, e.g. `openssl rand 80`, as nginx's ssl_session_ticket_key); repeat to rotate:
    /// the first seals new tickets, all open them. Without it each process makes its own.
    #[arg(long = "tls-ticket-key", value_name = "FILE")]
    pub tls_ticket_keys: Vec<PathBuf>,
    #[command(flatten)]
    pub limits: EdgeLimitArgs,
}

/// `cadenza edge`'s timeouts and limits (deploy/README.md lists nginx's names for them).
/// Durations are written `500ms`, `30s`, `5m`, `1h`, or as seconds alone.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Timeouts and limits")]
pub struct EdgeLimitArgs {
    /// How far past its expiry a token is still accepted, for clocks that disagree (at most
    /// 1h).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = leeway)]
    pub token_leeway: Duration,
    /// Time allowed for one slice fetch from one origin or region peer, before the next is
    /// tried.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub upstream_timeout: Duration,
    /// Failures in a row after which an origin or region peer is asked last (its circuit
    /// breaker opens) for --upstream-cooldown.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_failures: u32,
    /// How long an upstream whose breaker opened is asked last.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub upstream_cooldown: Duration,
    /// Time allowed for a TLS handshake over TCP.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,
    /// Time allowed for an HTTP/1.1 request's head to arrive once it has begun.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: Duration,
    /// A TCP connection that moves no byte this long is closed, and one with no request open
    /// this long however its client PINGs (HTTP/2 is sent GOAWAY): nginx's keepalive_timeout.
    /// Set it above a load balancer's own idle timeout, so the balancer, not the edge, closes
    /// first.
    #[arg(long, value_name = "DURATION", default_value = "75s", value_parser = positive_duration)]
    pub idle_timeout: Duration,
    /// How long one write may wait for a client that is not reading.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pub send_timeout: Duration,
    /// The slowest a client may take a response, bytes per second, judged over
    /// --min-send-window: a slower one is cut off (0: no minimum). The default is a third of
    /// the lowest rendition's bitrate.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub min_send_rate: u64,
    /// The span --min-send-rate is judged over: room for a slow start and a mobile link's
    /// stalls.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = positive_duration)]
    pub min_send_window: Duration,
    /// Largest request head (request line and headers), bytes, at least 8 KiB; a larger one
    /// is answered 431 (HTTP/1.1, HTTP/3) or refused by HTTP/2's header-list limit.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(8192..=1 << 20))]
    pub max_header_bytes: u32,
    /// Concurrent requests (streams) per HTTP/2 connection.
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub h2_max_streams: u32,
    /// Concurrent requests (streams) per HTTP/3 connection; each starts with at most 16 and
    /// is allowed this many once it uses half of those.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub h3_max_streams: u32,
    /// An HTTP/3 connection silent this long is closed (the client may ask for less).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pub h3_idle_timeout: Duration,
    /// An HTTP/3 connection with no request open this long is closed, however its client keeps
    /// it alive with PINGs (nginx's keepalive_timeout); the client's next request reconnects,
    /// with 0-RTT. 0: only --h3-idle-timeout closes it.
    #[arg(long, value_name = "DURATION", default_value = "75s", value_parser = duration)]
    pub h3_keepalive_timeout: Duration,
    /// On SIGTERM, time given to requests under way to finish before their connections close.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// On SIGTERM, how long the edge keeps serving, and accepting, with `/readyz` answering
    /// 503, before it closes its listeners and drains: time for a load balancer's health
    /// checks to take it out of rotation (their interval × unhealthy threshold), so no new
    /// client is sent to a closed port. A second SIGTERM or Ctrl-C cuts it short
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration)]
    pub drain_delay: Duration,
}

/// Longest duration a flag takes: beyond it a timeout is a mistake.
const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// A duration as operators write it: `500ms`, `30s`, `5m`, `1h` (decimals allowed), or
/// seconds alone; at most a day.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let not_one = || format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h");
    if number.is_empty() {
        return Err(not_one());
    }
    let seconds = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m or h")),
    };
    let value: f64 = number.parse().map_err(|_| not_one())?;
    match Duration::try_from_secs_f64(value * seconds) {
        Ok(d) if d <= LONGEST => Ok(d),
        _ => Err(format!("{text:?} is longer than 24h")),
    }
}

/// A disk tier, `DIR:GIB`: its directory and its size in bytes.
fn disk_spec(text: &str) -> Result<(PathBuf, u64), String> {
    let (dir, gib) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not DIR:GIB, e.g. /srv/cache1:900"))?;
    let gib: u64 = gib
        .trim()
        .parse()
        .map_err(|_| format!("{gib:?} is not a whole number of GiB"))?;
    if dir.is_empty() || gib == 0 {
        return Err(format!("{text:?}: a directory and at least 1 GiB"));
    }
    Ok((PathBuf::from(dir), gib.saturating_mul(1 << 30)))
}

/// A [`duration`] that is not zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        Duration::ZERO => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// A token leeway: a [`duration`] of at most an hour (clock skew is seconds; more would
/// make expiry meaningless).
fn leeway(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d <= Duration::from_secs(3600) => Ok(d),
        _ => Err("at most 1h".into()),
    }
}

/// What to do with labels.
#[derive(Debug, Subcommand)]
pub enum LabelAction {
    /// Create the label if it is new and print a new API key for it (shown once).
    Create {
        /// The label's name.
        name: String,
    },
    /// Revoke an API key.
    Revoke {
        /// The key, as `label create` printed it.
        api_key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run control plane, origin, a transcode worker and an edge in one process on localhost.
    Up {
        /// Directory for every piece of state (database, objects, keys, certificate).
        #[arg(long, default_value = "cadenza-data", env = "CADENZA_DATA")]
        data: PathBuf,
        /// First of three consecutive ports (control plane, origin, edge); 0 picks free ports.
        #[arg(long, default_value_t = 7700)]
        port_base: u16,
        /// Also ingest masters, play one through the edge, and print its time to first audio.
        /// The masters come from --demo-dir, else ../shared/fixtures/flac/good when present,
        /// else a synthesised one.
        #[arg(long)]
        demo: bool,
        /// Directory of masters for --demo.
        #[arg(long, value_name = "DIR", requires = "demo")]
        demo_dir: Option<PathBuf>,
        /// Stop after the demo instead of serving.
        #[arg(long)]
        exit_after_demo: bool,
        /// Transcode workers to run in process (0: run `cadenza worker` separately).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Job lease, in seconds: how long a silent worker keeps a job.
        #[arg(long, default_value_t = 60)]
        lease_secs: u64,
        /// MaxMind country database for the edge's territory check (reloaded on change).
        #[arg(long, value_name = "MMDB")]
        geoip: Option<PathBuf>,
        /// A proxy (IP or CIDR) whose X-Forwarded-For the edge believes; repeatable.
        #[arg(long, value_name = "CIDR")]
        trusted_proxy: Vec<cadenza_geo::Cidr>,
        /// A web origin whose pages' scripts may call the control plane's public API (sign
        /// in, search, grants), upload to the origin (tus) and read the edge's answers (CORS), as
        /// `https://player.example.com`; repeat. Without it any page may: bearer tokens, not
        /// cookies, open them
        #[arg(long, value_name = "ORIGIN", value_parser = web_origin)]
        cors_origin: Vec<String>,
        /// Also serve the edge without TLS (HTTP/1.1, h2c) on the fifth port.
        #[arg(long)]
        edge_cleartext: bool,
        /// Log every edge request to stderr (target `access`; JSON with --log-json).
        #[arg(long)]
        access_log: bool,
        /// Log every edge request to this file instead of stderr (appended through a 64 KiB
        /// buffer written out every second and at exit). Implies --access-log
        #[arg(long, value_name = "PATH")]
        access_log_file: Option<PathBuf>,
        /// The edge's memory cache, MiB (the disk tier adds 4 GiB under the data directory).
        #[arg(long, default_value_t = 256)]
        edge_memory_mib: u64,
        /// Slices the edge fetches ahead of each request (sequential players want some).
        #[arg(long, default_value_t = 2)]
        edge_read_ahead: u64,
        /// The edge's slice size, KiB (smaller slices cost fewer origin bytes per random
        /// range, at more cache entries and origin requests).
        #[arg(long, default_value_t = 256)]
        edge_slice_kib: u64,
        /// Copy cached slices to the edge's cleartext HTTP/1.1 sockets instead of handing
        /// them over by sendfile (nginx's `sendfile off`).
        #[arg(long)]
        edge_no_sendfile: bool,
        #[command(flatten)]
        s3: S3Args,
        /// The control plane's database, instead of `{data}/catalogue.sqlite`:
        /// `postgres://USER[:PASSWORD]@HOST:PORT/DB` (or a `sqlite://PATH?mode=rwc` URL).
        #[arg(
            long,
            value_name = "URL",
            env = "CADENZA_DATABASE_URL",
            hide_env_values = true
        )]
        database_url: Option<String>,
        /// Make a new master key for content keys and re-seal every content key under it
        /// at start (no audio is touched); the old master keys are dropped once done.
        #[arg(long)]
        rotate_master_key: bool,
        /// Make the next edge-token key (`k2` after `k1`) at start and publish its public half
        /// in cluster.json's token_keys, still signing with the current one: the first step
        /// of a rotation, before the edges are given the new key.
        #[arg(long)]
        token_key_add: bool,
        /// Sign edge tokens with key KID from this start on. Refused while an --edge-site that
        /// answers does not list KID among its token keys (its /healthz).
        #[arg(long, value_name = "KID")]
        token_key_sign: Option<String>,
        /// Delete edge-token key KID at start (once its tokens have expired); it must not be
        /// the signing key.
        #[arg(long, value_name = "KID")]
        token_key_drop: Option<String>,
        /// Another edge grants may list, `URL` or `URL@TERRITORIES` (the countries it is for,
        /// e.g. `https://edge-se.example@SE,NO,FI`); repeatable. Grants list healthy edges
        /// serving the listener's country first, fastest first.
        #[arg(long, value_name = "URL[@TERRITORIES]")]
        edge_site: Vec<cadenza_control_plane::EdgeSite>,
    },
    /// Run one edge node alone, fetching from origins elsewhere (one per region or more).
    Edge(Box<EdgeArgs>),
    /// Upload masters with their metadata and wait until each is ready or refused.
    Ingest {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Master files (WAV, FLAC, AIFF, MP3, Ogg Vorbis).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Track title (default: the file name without extension).
        #[arg(long)]
        title: Option<String>,
        /// Artist name.
        #[arg(long)]
        artist: String,
        /// Licensed territories: `GB,SE,US`, `WW`, or `WW,-CN`.
        #[arg(long, default_value = "WW")]
        territories: Territories,
        /// ISRC (e.g. GBAYE6300001).
        #[arg(long)]
        isrc: Option<String>,
        /// Album title.
        #[arg(long)]
        album: Option<String>,
        /// Position on the album, from 1.
        #[arg(long)]
        track_number: Option<u32>,
        /// A featured artist; repeatable, in credit order.
        #[arg(long)]
        featuring: Vec<String>,
        /// Release time, seconds since the epoch (the track is embargoed until then).
        #[arg(long, value_name = "UNIX_SECS")]
        release_at: Option<u64>,
        /// A licence window, `TERRITORIES[@START..END]` in seconds since the epoch (either
        /// bound may be left out); repeatable. When given, the windows replace `--territories`.
        #[arg(long = "licence", value_name = "WINDOW")]
        licences: Vec<cadenza_common::Licence>,
    },
    /// Sign edge tokens for file ids with a stack's key (for debugging and load tests).
    Token {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Rendition file ids.
        #[arg(required = true)]
        file_ids: Vec<cadenza_common::FileId>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Manage labels and their API keys on a running stack.
    Label {
        #[command(flatten)]
        endpoint: Endpoint,
        #[command(subcommand)]
        action: LabelAction,
    },
    /// Play a track through the edge: grant, fetch, decrypt, decode.
    Play {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Track id, as `cadenza ingest` printed it.
        track: TrackId,
        /// low (96 kbps), normal (160) or high (320).
        #[arg(long, default_value = "normal")]
        quality: Quality,
        /// Write the decoded audio to this WAV file (default: discard).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sign in as this listener (password from `CADENZA_PASSWORD`) instead of the
        /// stack's own listener account.
        #[arg(long)]
        email: Option<String>,
    },
    /// Run a transcode worker for a running stack (leases jobs from its control plane).
    Worker {
        #[command(flatten)]
        endpoint: Endpoint,
        /// The stack's job lease, in seconds; heartbeats go every quarter of it.
        #[arg(long, default_value_t = 60)]
        lease_secs: u64,
    },
    /// Transcode a master locally into the three renditions.
    Transcode {
        /// The master.
        master: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Write plain Ogg files instead of encrypted ones (keys printed).
        #[arg(long)]
        plain: bool,
        /// Bitrate mode: fitted (quality VBR fitted to the nominal mean), vbr (libvorbis's
        /// own quality for the nominal rate, as `oggenc -b`) or abr (managed).
        #[arg(long, default_value = "fitted")]
        mode: cadenza_transcoder::BitrateMode,
    },
}

/// A web origin as browsers send it in `Origin`: `scheme://host[:port]`, nothing after.
fn web_origin(text: &str) -> Result<String, String> {
    let refused = || format!("{text:?} is not a web origin like https://player.example.com");
    let (scheme, authority) = text.split_once("://").ok_or_else(refused)?;
    let scheme_ok = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http");
    // Host and optional port only: no user, path, query or fragment.
    let bare = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !scheme_ok || !bare || authority.parse::<http::uri::Authority>().is_err() {
        return Err(refused());
    }
    Ok(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_as_operators_write_them() {
        let secs = Duration::from_secs;
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("30"), Ok(secs(30)));
        assert_eq!(duration(" 30s "), Ok(secs(30)));
        assert_eq!(duration("1.5m"), Ok(secs(90)));
        assert_eq!(duration("24h"), Ok(secs(86_400)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        for wrong in [
            "", "s", "-1s", "1h30m", "1e3s", "1..5s", "5 x", "25h", "1e400",
        ] {
            assert!(duration(wrong).is_err(), "{wrong:?} was taken");
        }
        assert!(positive_duration("0ms").is_err());
        assert_eq!(leeway("1h"), Ok(secs(3600)));
        assert!(leeway("61m").is_err());
    }

    #[test]
    fn disks_are_a_directory_and_a_size() {
        assert_eq!(
            disk_spec("/srv/nvme0/cache:900"),
            Ok((PathBuf::from("/srv/nvme0/cache"), 900 << 30))
        );
        assert_eq!(
            disk_spec("/mnt/a:b/c:2"),
            Ok((PathBuf::from("/mnt/a:b/c"), 2 << 30))
        );
        for wrong in [
            "/srv/cache",
            "/srv/cache:",
            "/srv/cache:0",
            ":5",
            "/srv:1.5",
            "/srv:-1",
        ] {
            assert!(disk_spec(wrong).is_err(), "{wrong:?} was taken");
        }
        // One --disk per device, and not with --disk-gib.
        let parsed = Cli::try_parse_from(["cadenza", "edge", "--disk", "/a:1", "--disk", "/b:2"]);
        assert!(parsed.is_ok());
        let both = Cli::try_parse_from(["cadenza", "edge", "--disk", "/a:1", "--disk-gib", "3"]);
        assert!(both.is_err());
    }

    #[test]
    fn cors_origins_are_read_as_browsers_send_them() {
        assert_eq!(
            web_origin("https://Player.Example.com"),
            Ok("https://player.example.com".into())
        );
        assert_eq!(
            web_origin("http://localhost:8080"),
            Ok("http://localhost:8080".into())
        );
        for wrong in [
            "player.example.com",
            "https://player.example.com/",
            "https://player.example.com/app",
            "https://player.example.com?x=1",
            "ftp://player.example.com",
            "https://user@player.example.com",
            "*",
            "",
        ] {
            assert!(web_origin(wrong).is_err(), "{wrong:?} was taken");
        }
    }
}
