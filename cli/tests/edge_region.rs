//! Standalone edges beside a running stack: three edges of one region share the origin's
//! load through the shield tier (one origin fetch per slice for the whole region, and a
//! dead owner costs a fallback to the origin, not an error), and `cadenza edge --join` runs
//! as its own process and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "../../tests/support/get.rs"]
mod get;
#[path = "../../tests/support/h2_credit.rs"]
mod h2_credit;
#[path = "../../tests/support/peers.rs"]
mod peers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cadenza::edge_node::{self, EdgeListeners, EdgeNode, EdgeNodeConfig};
use cadenza::stack::{JoinInfo, Stack, StackConfig, join_info, signing_key};
use cadenza_common::http::client::{self, HttpClient};
use cadenza_common::http::{Shutdown, ShutdownTrigger, full};
use cadenza_common::{FileId, Territories, TokenClaims, hex_encode};
use get::get_headed;
use http::{Method, StatusCode};
use tokio::net::TcpListener;

const SLICE: u64 = 64 * 1024;

/// Deterministic bytes, different per seed.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A stack on free ports with no transcode workers (these tests store objects directly).
async fn start_stack(dir: &Path) -> Stack {
    let mut config = StackConfig::new(dir);
    config.port_base = 0;
    config.workers = 0;
    Stack::start(config).await.unwrap()
}

/// Stores `data` through the origin's service API; its id is the content hash.
/// A stack running in `dir` with one object of `len` bytes made from `seed` put through its
/// origin: the stack, the object's bytes and its id.
async fn stack_with_file(dir: &Path, seed: u64, len: usize) -> (Stack, Vec<u8>, FileId) {
    let stack = start_stack(dir).await;
    let data = bytes(seed, len);
    let id = put(&stack, dir, data.clone()).await;
    (stack, data, id)
}

async fn put(stack: &Stack, dir: &Path, data: Vec<u8>) -> FileId {
    let digest = ring::digest::digest(&ring::digest::SHA256, &data);
    let id: FileId = hex_encode(digest.as_ref())[..40].parse().unwrap();
    let service = cadenza::stack::service_token(dir).unwrap();
    let url = format!("{}/internal/v1/objects/{id}", stack.info.origin);
    let req = client::request(Method::PUT, &url, Some(&service), full(data)).unwrap();
    let resp = stack.client().unwrap().request(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    id
}

fn token(dir: &Path, id: &FileId) -> String {
    token_expiring(dir, id, 600)
}

/// A token of the stack in `dir` for `id` that expires `in_secs` from now (in the past if
/// negative).
fn token_expiring(dir: &Path, id: &FileId, in_secs: i64) -> String {
    let claims = claims_for(id, in_secs, Territories::worldwide());
    signing_key(dir).unwrap().sign(&claims).0
}

/// Claims for `id` in `territories`, expiring `in_secs` from now (in the past if negative).
fn claims_for(id: &FileId, in_secs: i64, territories: Territories) -> TokenClaims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    TokenClaims {
        file_id: id.clone(),
        expires_at: now.saturating_add_signed(in_secs),
        territories,
    }
}

async fn get(client: &HttpClient, url: &str, token: &str) -> (StatusCode, Vec<u8>) {
    get_with(client, url, token, None).await
}

async fn get_with(
    client: &HttpClient,
    url: &str,
    token: &str,
    range: Option<&str>,
) -> (StatusCode, Vec<u8>) {
    let (status, _, body) = get_headed(client, url, token, range).await;
    (status, body)
}

struct RegionEdge {
    url: String,
    node: EdgeNode,
    trigger: ShutdownTrigger,
}

impl RegionEdge {
    /// Shuts the edge down; each of its tasks must end cleanly within 15 s.
    async fn stop(self) {
        self.trigger.trigger();
        self.ended_within(Duration::from_secs(15)).await;
    }

    /// Waits for the edge's tasks (once it has been told to stop) to end cleanly, each within
    /// `within`.
    async fn ended_within(self, within: Duration) {
        for task in self.node.tasks {
            tokio::time::timeout(within, task)
                .await
                .expect("the edge did not stop in time")
                .unwrap();
        }
    }
}

/// A listener for an edge's players and its URL.
async fn bind_main() -> (TcpListener, String) {
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", main.local_addr().unwrap());
    (main, url)
}

/// An edge on `main` (reached at `url`) with `SLICE`-byte slices, set up further by
/// `configure`.
async fn start_edge(
    join: &JoinInfo,
    (main, url): (TcpListener, String),
    configure: impl FnOnce(&mut EdgeNodeConfig),
) -> RegionEdge {
    let mut config = EdgeNodeConfig::joining(join);
    config.slice_bytes = SLICE;
    configure(&mut config);
    let (trigger, shutdown) = Shutdown::new();
    let listeners = EdgeListeners {
        main,
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        cleartext: None,
        udp: None,
    };
    let node = edge_node::start(config, listeners, shutdown).await.unwrap();
    RegionEdge { url, node, trigger }
}

/// `n` edges of one region, each knowing the others, all fetching from the stack's origin.
async fn region(join: &JoinInfo, n: usize) -> Vec<RegionEdge> {
    let mut bound = Vec::new();
    for _ in 0..n {
        bound.push(bind_main().await);
    }
    let urls: Vec<String> = bound.iter().map(|(_, u)| u.clone()).collect();
    let mut edges = Vec::new();
    for (main, url) in bound {
        let me = url.clone();
        let peers = urls.clone();
        edges.push(
            start_edge(join, (main, url), |config| {
                config.read_ahead = 0;
                config.region = Some((me, peers));
            })
            .await,
        );
    }
    edges
}

fn origin_fetches(edges: &[RegionEdge]) -> u64 {
    edges
        .iter()
        .map(|e| e.node.edge.cache().origin_fetches())
        .sum()
}

fn shield(edge: &RegionEdge, outcome: &str) -> u64 {
    edge.node
        .edge
        .cache()
        .metrics()
        .shield_fetches
        .with_label_values(&[outcome])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_asks_the_origin_once_per_slice_and_falls_back_past_a_dead_owner() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let client = stack.client().unwrap();
    let join = join_info(dir.path()).unwrap();
    let edges = region(&join, 3).await;

    // 12 objects of 200 KiB (4 slices each), each read whole from all three edges at once.
    let len = 200 * 1024;
    let mut objects = Vec::new();
    for seed in 0..12u64 {
        let data = bytes(seed + 1, len);
        let id = put(&stack, dir.path(), data.clone()).await;
        objects.push((id, data));
    }
    for (id, data) in &objects {
        let t = token(dir.path(), id);
        let reads = edges.iter().map(|e| {
            let (client, url, t) = (client.clone(), format!("{}/a/{id}", e.url), t.clone());
            async move { get(&client, &url, &t).await }
        });
        for (status, body) in futures_util::future::join_all(reads).await {
            assert_eq!(status, StatusCode::OK);
            assert!(body == *data, "an edge served other bytes for {id}");
        }
    }
    let slices = objects.len() as u64 * (len as u64).div_ceil(SLICE);
    println!(
        "origin fetches for {slices} slices read from 3 edges: {}",
        origin_fetches(&edges)
    );
    assert_eq!(
        origin_fetches(&edges),
        slices,
        "the region fetched a slice twice"
    );
    let from_owners: u64 = edges.iter().map(|e| shield(e, "ok")).sum();
    assert_eq!(
        from_owners,
        2 * slices,
        "each non-owner asks the owner once per slice"
    );
    // The three edges agree on one owner per file, and ownership is spread. Twelve files are
    // too few to demand that each edge owns one (3 × (2/3)^12 ≈ 2 % of runs would fail, as
    // one CI run did), so the spread is checked over ids that need no upload.
    let mut owned = [0usize; 3];
    let ids = objects.iter().map(|(id, _)| id.clone());
    for id in ids.chain((0..3000).map(|_| FileId::random())) {
        let owners: Vec<usize> = (0..3)
            .filter(|&i| edges[i].node.edge.cache().owns(&id))
            .collect();
        assert_eq!(owners.len(), 1, "{id} has owners {owners:?}");
        owned[owners[0]] += 1;
    }
    assert!(owned.iter().all(|&n| n > 700), "uneven owners: {owned:?}");

    // The owner of a new file goes down: another edge serves it from the origin.
    let mut edges = edges;
    let data = bytes(1000, len);
    let id = put(&stack, dir.path(), data.clone()).await;
    let owner = edges
        .iter()
        .position(|e| e.node.edge.cache().owns(&id))
        .unwrap();
    edges.remove(owner).stop().await;
    let asker = &edges[0];
    let before = origin_fetches(&edges);
    let started = Instant::now();
    let (status, body) = get(
        &client,
        &format!("{}/a/{id}", asker.url),
        &token(dir.path(), &id),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == data, "wrong bytes after the owner died");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        shield(asker, "failed") >= 1,
        "the dead owner was never tried"
    );
    assert_eq!(
        origin_fetches(&edges) - before,
        (len as u64).div_ceil(SLICE)
    );

    // Peers' object API wants the edge key.
    let url = format!("{}/v1/objects/{id}", asker.url);
    let (status, _) = get(&client, &url, "not-the-key").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = get(&client, &url, &join.edge_key).await;
    assert_eq!((status, body == data), (StatusCode::OK, true));

    for e in edges {
        e.trigger.trigger();
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cadenza_edge_joins_a_running_stack_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let (stack, data, id) = stack_with_file(dir.path(), 7, 300 * 1024).await;
    // A region's shared session-ticket key; one too short to be a key is refused at start.
    let ticket_key = edge_dir.path().join("ticket.key");
    std::fs::write(&ticket_key, bytes(8, 80)).unwrap();
    let short_key = edge_dir.path().join("short.key");
    std::fs::write(&short_key, b"not 32 bytes").unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_cadenza"))
        .args(["edge", "--join"])
        .arg(dir.path())
        .arg("--data")
        .arg(edge_dir.path().join("refused"))
        .arg("--tls-ticket-key")
        .arg(&short_key)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("session-ticket key refused"), "{said}");
    assert!(
        !edge_dir.path().join("refused").exists(),
        "a refused start left its data directory behind"
    );

    let mut child = Reaped(
        edge_command(dir.path(), edge_dir.path())
            .arg("--tls-ticket-key")
            .arg(&ticket_key)
            .args(["--max-connections", "1"])
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut child, edge_dir.path()).await;
    let url = format!("{}/a/{id}", about["edge"].as_str().unwrap());
    let client = stack.client().unwrap();
    let (status, body) = get(&client, &url, &token(dir.path(), &id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == data, "the standalone edge served other bytes");
    let (status, _) = get(&client, &url, "v1.k1.bad.token").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let metrics = format!("{}/metrics", about["edge_admin"].as_str().unwrap());
    let (status, text) = get(&client, &metrics, about["admin_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&text).contains("cadenza_edge_upstream_bytes_total"));
    // --max-connections holds HTTP/3 too: one QUIC connection is served and counted. A
    // newcomer takes an idle one's place; with the one open busy, the next is refused (a
    // browser would fall back to TCP).
    let join = join_info(dir.path()).unwrap();
    let udp: std::net::SocketAddr = about["edge"].as_str().unwrap()["https://".len()..]
        .parse()
        .unwrap();
    let quic = quic_endpoint(&join);
    let idle = quic.connect(udp, "localhost").unwrap().await.unwrap();
    // The client is connected once it has sent its last handshake packet; the edge has read
    // it (and the connection is out of its handshake, so idle) once it sends HANDSHAKE_DONE.
    handshake_confirmed(&idle).await;
    let held = quic.connect(udp, "localhost").unwrap().await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), idle.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0x100))
        }
        other => panic!("the idle HTTP/3 connection got {other:?}"),
    }
    // A request whose stream the client keeps open keeps `held` busy. Its answer's head
    // shows the edge has seen it (before, a fixed wait after writing one byte of a request;
    // once in CI the edge had not read it yet, `held` counted idle and made room).
    let (mut send, drive) = h3_over(held).await;
    let req = http::Request::get(&url)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token(dir.path(), &id)),
        )
        .body(())
        .unwrap();
    let mut held_request = send.send_request(req).await.unwrap();
    let resp = held_request.recv_response().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    match quic.connect(udp, "localhost").unwrap().await {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => assert_eq!(
            close.error_code,
            quinn::TransportErrorCode::CONNECTION_REFUSED
        ),
        other => panic!("a third HTTP/3 connection got {other:?}"),
    }
    // The TCP listener makes room the same way: the pooled connection of `client`, idle
    // since its last GET, gives way to curl's (HTTP/1.1, a client not written here).
    let out = edge_dir.path().join("curl.out");
    let curl = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "--max-time",
            "10",
            "-w",
            "%{http_code}",
            "-o",
        ])
        .arg(&out)
        .arg("--cacert")
        .arg(dir.path().join("tls/cert.pem"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", token(dir.path(), &id)))
        .arg(&url)
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == data);
    let (status, text) = get(&client, &metrics, about["admin_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&text);
    for open in [
        r#"cadenza_edge_open_connections{listener="quic"} 1"#,
        r#"cadenza_edge_open_connections{listener="admin"} 1"#,
        r#"cadenza_edge_reclaimed_connections_total{listener="quic"} 1"#,
        r#"cadenza_edge_refused_connections_total{listener="quic"} 1"#,
        r#"cadenza_edge_reclaimed_connections_total{listener="tls"} 1"#,
        r#"cadenza_edge_refused_connections_total{listener="tls"} 0"#,
    ] {
        assert!(text.contains(open), "{open} in\n{text}");
    }
    drop((held_request, send));
    drive.abort();

    // SIGHUP (`systemctl reload`) with no --cert or --geoip to look at again: the edge stays.
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the edge"
    );
    let (status, _) = get(&client, &metrics, about["admin_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    term(&child);
    exited(&mut child, Instant::now()).await;
    stack.shutdown().await;
}

/// What a `cadenza edge` child writes to `{data}/edge.json` once it serves (its URLs and admin
/// token), waited for up to 30 s.
/// Sends SIGHUP (`systemctl reload`) to process `pid`.
fn hup(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -HUP {pid}: {sent}");
}

/// `cadenza edge --join stack --data data` on free loopback ports, memory cache only, its
/// standard output discarded; callers add their flags and spawn it.
fn edge_command(stack: &Path, data: &Path) -> std::process::Command {
    edge_command_on(stack, data, "127.0.0.1:0")
}

/// [`edge_command`] with its players' port at `listen`.
fn edge_command_on(stack: &Path, data: &Path, listen: &str) -> std::process::Command {
    let mut command = edge_command_with_disks(stack, data, listen);
    command.args(["--disk-gib", "0"]);
    command
}

/// [`edge_command_on`] with no disk flag yet, for a caller giving `--disk`.
fn edge_command_with_disks(stack: &Path, data: &Path, listen: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cadenza"));
    command
        .args(["edge", "--join"])
        .arg(stack)
        .arg("--data")
        .arg(data)
        .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null());
    command
}

async fn edge_started(child: &mut Reaped, data: &Path) -> serde_json::Value {
    let about = data.join("edge.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !about.exists() {
        assert!(
            Instant::now() < deadline,
            "cadenza edge never wrote edge.json"
        );
        assert!(child.try_wait().unwrap().is_none(), "cadenza edge exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serde_json::from_slice(&std::fs::read(&about).unwrap()).unwrap()
}

/// The end-entity certificate `addr` presents over TLS on TCP to a client trusting `roots`
/// (PEM), and the connection, kept open.
async fn presented_tcp(
    addr: &str,
    roots: &str,
) -> (
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let conn = tls_to(addr, roots, b"http/1.1").await;
    let cert = conn.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (cert, conn)
}

/// A TLS connection to `addr` from a client trusting `roots` (PEM) and offering `alpn`.
async fn tls_to(
    addr: &str,
    roots: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tls_over(tcp, roots, alpn).await.unwrap()
}

/// TLS to `localhost` over `tcp`, trusting `roots` (PEM) and offering `alpn`.
async fn tls_over(
    tcp: tokio::net::TcpStream,
    roots: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut tls = (*cadenza_common::http::tls::client_config(roots.as_bytes()).unwrap()).clone();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
}

/// The end-entity certificate `addr` presents over QUIC to a client trusting `roots` (PEM).
async fn presented_quic(addr: std::net::SocketAddr, roots: &str) -> Vec<u8> {
    let mut tls = (*cadenza_common::http::tls::client_config(roots.as_bytes()).unwrap()).clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let chain = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    conn.close(0u32.into(), b"");
    chain[0].to_vec()
}

fn der(pem: &cadenza_common::http::tls::CertPem) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.cert.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_and_geoip_database_are_taken_without_a_restart() {
    use cadenza_common::http::tls::self_signed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let names = ["localhost", "127.0.0.1"];
    let (old, new) = (self_signed(&names).unwrap(), self_signed(&names).unwrap());
    let (cert, key) = (
        edge_dir.path().join("cert.pem"),
        edge_dir.path().join("key.pem"),
    );
    std::fs::write(&cert, &old.cert).unwrap();
    std::fs::write(&key, &old.key).unwrap();
    // A GeoIP database the edge follows too; SIGHUP has it looked at at once.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/geoip");
    let geoip = edge_dir.path().join("country.mmdb");
    std::fs::copy(fixtures.join("GeoIP2-Country-Test.mmdb"), &geoip).unwrap();
    let log = edge_dir.path().join("edge.log");
    let state = edge_dir.path().join("state");
    let mut child = Reaped(
        edge_command(dir.path(), &state)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--geoip")
            .arg(&geoip)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut child, &state).await;
    let main = about["edge"].as_str().unwrap()["https://".len()..].to_owned();
    let udp: std::net::SocketAddr = main.parse().unwrap();
    let roots = format!("{}\n{}", old.cert, new.cert);
    // The operator's certificate is presented on TCP and QUIC, and with --join the edge
    // still trusts the stack's origin: a file is served through it.
    let (presented, mut kept) = presented_tcp(&main, &roots).await;
    assert!(presented == der(&old));
    assert!(presented_quic(udp, &roots).await == der(&old));
    let id = put(&stack, dir.path(), bytes(9, 100 * 1024)).await;
    let client =
        client::https_client(cadenza_common::http::tls::client_config(roots.as_bytes()).unwrap());
    let url = format!("https://{main}/a/{id}");
    let (status, body) = get(&client, &url, &token(dir.path(), &id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == bytes(9, 100 * 1024));

    // Renewed in place, with a new GeoIP database, then SIGHUP (`systemctl reload`): new
    // connections get the new pair, and both files are taken at once, not at the next 10 s
    // look.
    std::fs::write(&key, &new.key).unwrap();
    std::fs::write(&cert, &new.cert).unwrap();
    std::fs::copy(fixtures.join("GeoLite2-Country-Test.mmdb"), &geoip).unwrap();
    let hupped = Instant::now();
    hup(child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while presented_tcp(&main, &roots).await.0 != der(&new) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not presented"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(presented_quic(udp, &roots).await == der(&new));
    let logged = |what: &str| std::fs::read_to_string(&log).unwrap().contains(what);
    while !(logged("TLS certificate reloaded") && logged("GeoIP database reloaded")) {
        assert!(
            hupped.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload both files at once:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the renewal goes on with its own.
    let untokened = format!("GET /a/{id} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    kept.write_all(untokened.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 403");

    // A damaged certificate file is refused: the renewed pair stays, the edge keeps serving.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().unwrap().is_none(), "the edge exited");
    assert!(presented_tcp(&main, &roots).await.0 == der(&new));
    let (status, _) = get(&client, &url, &token(dir.path(), &id)).await;
    assert_eq!(status, StatusCode::OK);
    stack.shutdown().await;
}

/// A token for `id` signed by `key`, good for ten minutes anywhere.
fn token_by(key: &cadenza_common::SigningKey, id: &FileId) -> String {
    key.sign(&claims_for(id, 600, Territories::worldwide())).0
}

/// A token-signing key rotated on a running `cadenza edge`: the new key is added to
/// `--token-keys-file` and taken on SIGHUP, then the old one is withdrawn and its tokens,
/// though already verified and remembered, are refused at once; a damaged file is refused
/// and the keys in service stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_key_rotation_is_taken_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let old = signing_key(dir.path()).unwrap();
    let (new, _) = cadenza_common::SigningKey::generate("k-next").unwrap();
    let line =
        |k: &cadenza_common::SigningKey| format!("{}={}\n", k.kid(), hex_encode(&k.public_key()));
    let keys = edge_dir.path().join("token-keys");
    std::fs::write(&keys, format!("# the control plane's key\n{}", line(&old))).unwrap();
    let log = edge_dir.path().join("edge.log");
    let state = edge_dir.path().join("state");
    let edge = |extra: &[&str]| {
        edge_command(dir.path(), &state)
            .arg("--token-keys-file")
            .arg(&keys)
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap()
    };
    // --token-key and --token-keys-file are one or the other.
    let both = format!("k=0{}", "0".repeat(63));
    assert!(!edge(&["--token-key", &both]).wait().unwrap().success());
    let mut child = Reaped(edge(&[]));
    let about = edge_started(&mut child, &state).await;
    let id = put(&stack, dir.path(), bytes(12, 50 * 1024)).await;
    let url = format!("{}/a/{id}", about["edge"].as_str().unwrap());
    let client = stack.client().unwrap();
    let (by_old, by_new) = (token_by(&old, &id), token_by(&new, &id));
    let status = |token: String| {
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url, &token).await.0 }
    };
    assert_eq!(status(by_old.clone()).await, StatusCode::OK);
    assert_eq!(status(by_new.clone()).await, StatusCode::FORBIDDEN);
    let until = |token: String, want: StatusCode, what: &'static str| {
        let status = &status;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while status(token.clone()).await != want {
                assert!(Instant::now() < deadline, "{what} within 5 s of SIGHUP");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // The rotation begins: both keys.
    std::fs::write(&keys, format!("{}{}", line(&old), line(&new))).unwrap();
    hup(child.id());
    until(by_new.clone(), StatusCode::OK, "the new key taken").await;
    assert_eq!(status(by_old.clone()).await, StatusCode::OK);

    // The metrics tell which keys the edge holds, so a fleet can be checked before the
    // control plane signs with the new one.
    let metrics = format!("{}/metrics", about["edge_admin"].as_str().unwrap());
    let admin = about["admin_token"].as_str().unwrap().to_owned();
    let scraped = || {
        let (client, metrics, admin) = (client.clone(), metrics.clone(), admin.clone());
        async move { String::from_utf8(get(&client, &metrics, &admin).await.1).unwrap() }
    };
    let text = scraped().await;
    for kid in [old.kid(), new.kid()] {
        let held = format!("cadenza_edge_token_keys{{kid=\"{kid}\"}} 1");
        assert!(text.contains(&held), "{held} in\n{text}");
    }

    // It ends: the old key withdrawn. Its token was verified and remembered; it is refused.
    std::fs::write(&keys, line(&new)).unwrap();
    hup(child.id());
    until(
        by_old.clone(),
        StatusCode::FORBIDDEN,
        "the old key withdrawn",
    )
    .await;
    assert_eq!(status(by_new.clone()).await, StatusCode::OK);
    let text = scraped().await;
    assert!(!text.contains(&format!("kid=\"{}\"", old.kid())), "{text}");

    // A damaged file (and an empty one) is refused; the keys in service stay.
    for damaged in ["k-next=not hex\n", "# nothing\n"] {
        std::fs::write(&keys, damaged).unwrap();
        let refusals = std::fs::read_to_string(&log)
            .unwrap()
            .matches("token-key reload refused")
            .count();
        hup(child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&log)
            .unwrap()
            .matches("token-key reload refused")
            .count()
            == refusals
        {
            assert!(
                Instant::now() < deadline,
                "{damaged:?} not refused:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status(by_new.clone()).await, StatusCode::OK);
        assert_eq!(status(by_old.clone()).await, StatusCode::FORBIDDEN);
    }
    assert!(child.try_wait().unwrap().is_none(), "the edge exited");
    stack.shutdown().await;
}

/// The stack's half of a rotation, in three starts: a next key made and published (the old
/// one still signs), then signing with it, then the old one dropped; the stack's own edge
/// accepts what cluster.json lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_rotates_its_token_key_in_three_starts() {
    use cadenza::stack::TokenKeyChanges;
    let dir = tempfile::tempdir().unwrap();
    let start_listing = |changes: TokenKeyChanges, edges: Vec<String>| {
        let mut config = StackConfig::new(dir.path());
        config.port_base = 0;
        config.workers = 0;
        config.token_keys = changes;
        config.edge_sites = edges.iter().map(|url| url.parse().unwrap()).collect();
        Stack::start(config)
    };
    let start = |changes: TokenKeyChanges| start_listing(changes, Vec::new());
    let published = || {
        let mut kids: Vec<String> = join_info(dir.path()).unwrap().token_keys.ids();
        kids.sort();
        kids
    };
    let stack = start(TokenKeyChanges::default()).await.unwrap();
    let id = put(&stack, dir.path(), bytes(13, 20 * 1024)).await;
    let first = signing_key(dir.path()).unwrap();
    assert_eq!((first.kid(), published()), ("k1", vec!["k1".to_owned()]));
    let by_first = token_by(&first, &id);
    stack.shutdown().await;

    let status = |stack: &Stack, token: &str| {
        let (client, url) = (
            stack.client().unwrap(),
            format!("{}/a/{id}", stack.info.edge),
        );
        let token = token.to_owned();
        async move { get(&client, &url, &token).await.0 }
    };
    // 1. Added: published beside k1, which still signs.
    let stack = start(TokenKeyChanges {
        add: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(published(), ["k1", "k2"]);
    assert_eq!(signing_key(dir.path()).unwrap().kid(), "k1");
    assert_eq!(status(&stack, &by_first).await, StatusCode::OK);
    stack.shutdown().await;

    // 2. k2 signs; k1's tokens are still good.
    let stack = start(TokenKeyChanges {
        sign_with: Some("k2".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let second = signing_key(dir.path()).unwrap();
    assert_eq!(second.kid(), "k2");
    assert_eq!(
        status(&stack, &token(dir.path(), &id)).await,
        StatusCode::OK
    );
    assert_eq!(status(&stack, &by_first).await, StatusCode::OK);
    stack.shutdown().await;

    // The signing key cannot be dropped, nor a key signed with that does not exist.
    for refused in [
        TokenKeyChanges {
            drop: Some("k2".into()),
            ..Default::default()
        },
        TokenKeyChanges {
            sign_with: Some("k9".into()),
            ..Default::default()
        },
    ] {
        let Err(e) = start(refused).await else {
            panic!("a refused key change started the stack")
        };
        assert!(e.to_string().contains("token key"), "{e:#}");
    }
    // Refused, they changed nothing.
    assert_eq!(signing_key(dir.path()).unwrap().kid(), "k2");
    let keys = dir.path().join("keys");
    assert!(keys.join("edge-token-k1.pk8").exists() && keys.join("edge-token-k2.pk8").exists());

    // An edge joined to the stack follows its cluster.json: a key the stack adds is taken
    // without the edge's restart (and a rewrite with the same keys changes nothing).
    let edge_dir = tempfile::tempdir().unwrap();
    let mut joined = Reaped(edge_command(dir.path(), edge_dir.path()).spawn().unwrap());
    let about = edge_started(&mut joined, edge_dir.path()).await;
    let holds = |kid: &str| {
        let metrics = format!("{}/metrics", about["edge_admin"].as_str().unwrap());
        let admin = about["admin_token"].as_str().unwrap().to_owned();
        let held = format!("cadenza_edge_token_keys{{kid=\"{kid}\"}} 1");
        let client = client::https_client(
            cadenza_common::http::tls::client_config(
                join_info(dir.path()).unwrap().cert.cert.as_bytes(),
            )
            .unwrap(),
        );
        async move {
            String::from_utf8(get(&client, &metrics, &admin).await.1)
                .unwrap()
                .contains(&held)
        }
    };
    assert!(holds("k2").await && !holds("k3").await);
    let stack = start(TokenKeyChanges {
        add: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(published(), ["k1", "k2", "k3"]);
    hup(joined.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holds("k3").await {
        assert!(Instant::now() < deadline, "the joined edge did not take k3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(holds("k1").await && holds("k2").await);
    stack.shutdown().await;

    // The stack signs with a key only once every edge grants may list accepts it (their
    // `/healthz` lists the keys in service): an edge that follows a file still without k3
    // stops the switch, and is named.
    let file_edge_dir = tempfile::tempdir().unwrap();
    let keys_file = file_edge_dir.path().join("token-keys");
    let info = join_info(dir.path()).unwrap();
    let published_hex = cadenza::stack::ClusterInfo::load(dir.path())
        .unwrap()
        .token_keys;
    let line = |kid: &str| format!("{kid}={}\n", published_hex[kid]);
    std::fs::write(&keys_file, line("k1") + &line("k2")).unwrap();
    let mut file_edge = Reaped(
        edge_command(dir.path(), file_edge_dir.path())
            .arg("--token-keys-file")
            .arg(&keys_file)
            .spawn()
            .unwrap(),
    );
    let file_about = edge_started(&mut file_edge, file_edge_dir.path()).await;
    let sites = vec![
        about["edge"].as_str().unwrap().to_owned(),
        file_about["edge"].as_str().unwrap().to_owned(),
    ];
    let sign_k3 = || TokenKeyChanges {
        sign_with: Some("k3".into()),
        ..Default::default()
    };
    let Err(e) = start_listing(sign_k3(), sites.clone()).await else {
        panic!("signed with a key an edge does not accept")
    };
    let said = format!("{e:#}");
    assert!(
        said.contains(file_about["edge"].as_str().unwrap())
            && !said.contains(about["edge"].as_str().unwrap()),
        "{said}"
    );
    assert_eq!(signing_key(dir.path()).unwrap().kid(), "k2");
    // Given k3 (and reloaded), the edge no longer stands in the way.
    std::fs::write(&keys_file, line("k1") + &line("k2") + &line("k3")).unwrap();
    hup(file_edge.id());
    let healthz = format!("{}/healthz", file_about["edge"].as_str().unwrap());
    let client = client::https_client(
        cadenza_common::http::tls::client_config(info.cert.cert.as_bytes()).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8(get(&client, &healthz, "").await.1)
        .unwrap()
        .contains("\"k3\"")
    {
        assert!(Instant::now() < deadline, "the file edge did not take k3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stack = start_listing(sign_k3(), sites).await.unwrap();
    assert_eq!(signing_key(dir.path()).unwrap().kid(), "k3");
    drop((joined, file_edge));
    stack.shutdown().await;

    // 3. k1 dropped: no longer published, and its tokens are refused.
    let stack = start(TokenKeyChanges {
        drop: Some("k1".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(published(), ["k2", "k3"]);
    assert_eq!(signing_key(dir.path()).unwrap().kid(), "k3");
    assert_eq!(status(&stack, &by_first).await, StatusCode::FORBIDDEN);
    assert_eq!(
        status(&stack, &token(dir.path(), &id)).await,
        StatusCode::OK
    );
    stack.shutdown().await;
}

/// A child process killed when dropped, so a failing test leaves no server behind (nor its
/// stderr, which the test shares, open under `cargo test | …`).
struct Reaped(std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads a whole response over HTTP/3, after waiting `stall` once the head has come; returns
/// the bytes read and whether the body ended normally (rather than by a reset).
async fn h3_read(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    url: &str,
    token: &str,
    stall: Duration,
) -> (usize, bool) {
    let req = http::Request::get(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::ORIGIN, "https://player.example")
        .body(())
        .unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    let resp = stream.recv_response().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Alt-Svc is for clients on TCP; one already on HTTP/3 is not told again.
    assert!(!resp.headers().contains_key(http::header::ALT_SVC));
    // A web player's script may read it over HTTP/3 as over TCP (any origin by default).
    assert_eq!(
        resp.headers()[http::header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "*"
    );
    tokio::time::sleep(stall).await;
    let (got, ended) = h3_rest(&mut stream).await;
    (got, ended.is_ok())
}

/// Reads the rest of a response's body: the bytes read, and how the body ended.
async fn h3_rest(
    stream: &mut h3::client::RequestStream<h3_quinn::BidiStream<bytes::Bytes>, bytes::Bytes>,
) -> (usize, Result<(), h3::error::StreamError>) {
    use bytes::Buf;
    let mut got = 0;
    loop {
        match stream.recv_data().await {
            Ok(Some(chunk)) => got += chunk.remaining(),
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_client_that_stops_reading_has_its_stream_reset() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let len = 8 << 20;
    let id = put(&stack, dir.path(), bytes(11, len)).await;
    let join = join_info(dir.path()).unwrap();
    let (main, base) = bind_main().await;
    let addr = main.local_addr().unwrap();
    let edge = start_edge(&join, (main, base), |config| {
        config.slice_bytes = 256 << 10;
        // At least 64 KiB/s: a 256 KiB slice may take 1 s + 4 s to be taken.
        config.h3.min_send_rate = cadenza_common::http::MinRate {
            bytes_per_sec: 64 * 1024,
            window: Duration::from_secs(1),
        };
    })
    .await;
    let (mut send, drive) = h3_client(&join, addr).await;
    let url = format!("https://localhost:{}/a/{id}", addr.port());
    let t = token(dir.path(), &id);
    // A client that reads gets every byte, and the edge hands every body byte to quinn
    // without copying it.
    let (lent, copied) = cadenza_edge::h3_body_bytes();
    assert_eq!(
        h3_read(&mut send, &url, &t, Duration::ZERO).await,
        (len, true)
    );
    let (lent_after, copied_after) = cadenza_edge::h3_body_bytes();
    assert!(
        lent_after - lent >= len as u64,
        "{} bytes lent",
        lent_after - lent
    );
    assert_eq!(copied_after, copied, "HTTP/3 body bytes were copied");
    // One that stops reading for 8 s finds its stream reset, after only what flow control
    // let through.
    let (got, complete) = h3_read(&mut send, &url, &t, Duration::from_secs(8)).await;
    println!("HTTP/3 client that stalled 8 s: {got} bytes, complete: {complete}");
    assert!(
        !complete && got < len / 2,
        "{got} bytes, complete: {complete}"
    );
    drive.abort();
    edge.stop().await;
    stack.shutdown().await;
}

/// Waits (5 s at most) for the server's HANDSHAKE_DONE on `conn`: the server has read the
/// client's last handshake packet and counts the connection as set up.
async fn handshake_confirmed(conn: &quinn::Connection) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn.stats().frame_rx.handshake_done == 0 {
        assert!(Instant::now() < deadline, "no HANDSHAKE_DONE within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A QUIC client endpoint trusting `join`'s certificate, offering h3, and ready to send
/// early (0-RTT) data when it holds a session ticket.
fn quic_endpoint(join: &JoinInfo) -> quinn::Endpoint {
    let mut tls =
        (*cadenza_common::http::tls::client_config(join.cert.cert.as_bytes()).unwrap()).clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    endpoint
}

/// HTTP/3 over `conn`, its connection driven in a task.
async fn h3_over(
    conn: quinn::Connection,
) -> (
    h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    (send, drive)
}

/// An HTTP/3 client of `addr` trusting `join`'s certificate, its connection driven in a task.
async fn h3_client(
    join: &JoinInfo,
    addr: std::net::SocketAddr,
) -> (
    h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let conn = quic_endpoint(join).connect(addr, "localhost").unwrap();
    h3_over(conn.await.unwrap()).await
}

/// A UDP path to `server` that holds every datagram `delay` each way (a round trip of twice
/// `delay`), in order, for one client at a time; returns the address to send to.
async fn slow_path(server: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    use std::sync::{Arc, Mutex};
    use tokio::net::UdpSocket;
    use tokio::sync::mpsc;
    type Held = (tokio::time::Instant, Vec<u8>);
    /// Sends what `held` gives once its time has come, in the order it came.
    async fn release(mut held: mpsc::UnboundedReceiver<Held>, send: impl AsyncFn(&[u8])) {
        while let Some((due, datagram)) = held.recv().await {
            tokio::time::sleep_until(due).await;
            send(&datagram).await;
        }
    }
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let client = Arc::new(Mutex::new(None));
    let (to_server, held) = mpsc::unbounded_channel::<Held>();
    let sender = back.clone();
    tokio::spawn(release(held, async move |d: &[u8]| {
        let _ = sender.send(d).await;
    }));
    let (to_client, held) = mpsc::unbounded_channel::<Held>();
    let (sender, seen) = (front.clone(), client.clone());
    tokio::spawn(release(held, async move |d: &[u8]| {
        let to = *seen.lock().unwrap();
        if let Some(to) = to {
            let _ = sender.send_to(d, to).await;
        }
    }));
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = front.recv_from(&mut buf).await {
            *client.lock().unwrap() = Some(from);
            let due = tokio::time::Instant::now() + delay;
            let _ = to_server.send((due, buf[..n].to_vec()));
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let due = tokio::time::Instant::now() + delay;
            let _ = to_client.send((due, buf[..n].to_vec()));
        }
    });
    addr
}

/// A client back with a session ticket sends its request in its first flight (0-RTT) and
/// gets the answer's head one round trip later, not two: the edge answers before the
/// client's handshake completes. Over a path with a 200 ms round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_http3_client_is_answered_within_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, data, id) = stack_with_file(dir.path(), 13, 100_000).await;
    let join = join_info(dir.path()).unwrap();
    let (main, base) = bind_main().await;
    let addr = main.local_addr().unwrap();
    let edge = start_edge(&join, (main, base), |_| {}).await;
    let path = slow_path(addr, Duration::from_millis(100)).await;
    let url = format!("https://localhost:{}/a/{id}", addr.port());
    let t = token(dir.path(), &id);
    let endpoint = quic_endpoint(&join);

    // The first visit: a full handshake; the session ticket comes with the answer.
    let conn = endpoint.connect(path, "localhost").unwrap().await.unwrap();
    let (mut send, drive) = h3_over(conn.clone()).await;
    assert_eq!(
        h3_read(&mut send, &url, &t, Duration::ZERO).await,
        (data.len(), true)
    );
    conn.close(0u32.into(), b"");
    drive.abort();

    // Back: the request rides with the ClientHello.
    let started = Instant::now();
    let Ok((conn, accepted)) = endpoint.connect(path, "localhost").unwrap().into_0rtt() else {
        panic!("the client holds no ticket allowing 0-RTT: the edge offered none");
    };
    let (mut send, drive) = h3_over(conn).await;
    let req = http::Request::get(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {t}"))
        .body(())
        .unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    let resp = stream.recv_response().await.unwrap();
    let answered = started.elapsed();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h3_rest(&mut stream).await.0, data.len());
    assert!(accepted.await, "the edge refused the 0-RTT data");
    println!("a returning client's first answer came after {answered:?} (round trip 200 ms)");
    assert!(
        answered < Duration::from_millis(300),
        "the answer took {answered:?}: more than one round trip of 200 ms"
    );
    drive.abort();
    edge.stop().await;
    stack.shutdown().await;
}

/// A response under way over HTTP/3 when the edge is told to stop is delivered whole; the
/// connection is told to go away (a new request on it is refused) and closes once its
/// responses are delivered, well before the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_response_under_way_at_shutdown_is_delivered_whole() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let len = 8 << 20;
    let id = put(&stack, dir.path(), bytes(12, len)).await;
    let join = join_info(dir.path()).unwrap();
    let (main, base) = bind_main().await;
    let addr = main.local_addr().unwrap();
    let edge = start_edge(&join, (main, base), |config| config.slice_bytes = 256 << 10).await;
    let (mut send, drive) = h3_client(&join, addr).await;
    let url = format!("https://localhost:{}/a/{id}", addr.port());
    let get = || {
        http::Request::get(&url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token(dir.path(), &id)),
            )
            .body(())
            .unwrap()
    };
    let mut stream = send.send_request(get()).await.unwrap();
    stream.finish().await.unwrap();
    let resp = stream.recv_response().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Unread, the client's stream window (1.25 MB) fills and the rest waits at the edge.
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.trigger.trigger();
    let stopped = Instant::now();
    let (got, ended) = h3_rest(&mut stream).await;
    assert!(
        ended.is_ok() && got == len,
        "{got} of {len} bytes after the shutdown, then {ended:?}"
    );
    // Told to go away: a request sent now is not answered.
    let again = async {
        let mut stream = send.send_request(get()).await?;
        stream.finish().await?;
        stream.recv_response().await
    };
    let again = tokio::time::timeout(Duration::from_secs(5), again).await;
    assert!(
        !matches!(again, Ok(Ok(_))),
        "a request after the shutdown was answered"
    );
    // Once its responses are delivered, well before the drain timeout (10 s).
    edge.ended_within(Duration::from_secs(5)).await;
    assert!(stopped.elapsed() < Duration::from_secs(8));
    drive.abort();
    stack.shutdown().await;
}

async fn get_range(client: &HttpClient, url: &str, token: &str, range: &str) -> Vec<u8> {
    get_range_cached(client, url, token, range).await.0
}

/// [`get_range`], and what the edge's `Cache-Status` said of it.
async fn get_range_cached(
    client: &HttpClient,
    url: &str,
    token: &str,
    range: &str,
) -> (Vec<u8>, String) {
    let (status, headers, body) = get_headed(client, url, token, Some(range)).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
    let said = headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned());
    (body, said.unwrap_or_default())
}

/// `Cache-Status` says a response whose first slice was held but a later one is fetched is a
/// partial hit (RFC 9211's `fwd=partial`), not a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_whose_later_slice_is_fetched_is_a_partial_hit() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, data, id) = stack_with_file(dir.path(), 78, 1024 * 1024 + 1000).await;
    let client = stack.client().unwrap();
    let t = token(dir.path(), &id);
    let url = format!("{}/a/{id}", stack.info.edge);
    let fetches = || stack.edge.cache().origin_fetches();

    // Slice 2 whole (a seek: nothing read ahead).
    let (body, said) = get_range_cached(&client, &url, &t, "bytes=524288-786431").await;
    assert!(body == data[524_288..=786_431]);
    assert_eq!(said, "cadenza; fwd=miss; stored");
    let before = fetches();
    // Slices 2 and 3: the first held, the second not.
    let (body, said) = get_range_cached(&client, &url, &t, "bytes=524288-800000").await;
    assert!(body == data[524_288..=800_000]);
    assert_eq!(said, "cadenza; fwd=partial; stored");
    assert_eq!(fetches() - before, 1, "slice 3 fetched");
    // Again: both held.
    let (body, said) = get_range_cached(&client, &url, &t, "bytes=524288-800000").await;
    assert!(body == data[524_288..=800_000]);
    assert_eq!(said, "cadenza; hit");
    assert_eq!(fetches() - before, 1, "nothing fetched");
    stack.shutdown().await;
}

/// Random seeks into a cold file fetch their own bytes (widened to 32 KiB), not whole
/// 256 KiB slices; a crowd seeking to the same place makes one fetch per slice; a later
/// read front to back gets every byte right, and a repeated seek is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_seek_fetches_its_own_bytes_and_a_crowd_shares_them() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, data, id) = stack_with_file(dir.path(), 77, 1024 * 1024 + 1000).await;
    let client = stack.client().unwrap();
    let t = token(dir.path(), &id);
    let url = format!("{}/a/{id}", stack.info.edge);
    let cache = stack.edge.cache();
    let upstream = || cache.metrics().upstream_bytes.get();

    let (body, said) = get_range_cached(&client, &url, &t, "bytes=300000-431071").await;
    assert!(body == data[300_000..=431_071], "a seek served other bytes");
    assert_eq!(said, "cadenza; fwd=miss; stored");
    let fetched = upstream();
    assert!(
        fetched <= 2 * body.len() as u64 && fetched >= body.len() as u64,
        "a 128 KiB seek fetched {fetched} bytes"
    );
    println!("a cold 128 KiB seek fetched {fetched} origin bytes");

    let before = cache.origin_fetches();
    let crowd = (0..20).map(|_| get_range_cached(&client, &url, &t, "bytes=700000-850000"));
    let mut told = std::collections::BTreeMap::<String, usize>::new();
    for (body, said) in futures_util::future::join_all(crowd).await {
        assert!(
            body == data[700_000..=850_000],
            "a crowd member got other bytes"
        );
        *told.entry(said).or_default() += 1;
    }
    // One fetched the first slice; the others waited for it, or came once it was in.
    println!("the crowd's Cache-Status: {told:?}");
    assert_eq!(
        told.remove("cadenza; fwd=miss; stored"),
        Some(1),
        "{told:?}"
    );
    // (Partial: its first slice was in, its second still on its way.)
    let waited = [
        "cadenza; fwd=miss; stored; collapsed",
        "cadenza; hit",
        "cadenza; fwd=partial; stored",
    ];
    assert!(
        told.keys().all(|said| waited.contains(&said.as_str())),
        "{told:?}"
    );
    assert_eq!(
        cache.origin_fetches() - before,
        2,
        "the crowd's range spans two slices"
    );

    let (status, whole) = get(&client, &url, &t).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        whole == data,
        "a front-to-back read after seeks served other bytes"
    );
    let before = cache.origin_fetches();
    let (again, said) = get_range_cached(&client, &url, &t, "bytes=300000-431071").await;
    assert!(again == data[300_000..=431_071]);
    assert_eq!(said, "cadenza; hit");
    assert_eq!(
        cache.origin_fetches(),
        before,
        "a repeated seek went to the origin"
    );
    stack.shutdown().await;
}

/// An edge with a cleartext listener keeps its memory tier in memory files and sends
/// HTTP/1.1 bodies from them by sendfile: whole reads and ranges are byte-exact, on a miss
/// (the filling request) and on hits, and curl, a client not written here, agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http1_sends_cached_slices_by_sendfile_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let len = 700_001;
    let data = bytes(12, len);
    let id = put(&stack, dir.path(), data.clone()).await;
    let join = join_info(dir.path()).unwrap();
    let edge = cleartext_edge(&join, |_| {}).await;
    let client = stack.client().unwrap();
    let url = format!("{}/a/{id}", edge.url);
    let t = token(dir.path(), &id);
    let before = cadenza_common::http::h1::sent_by_file();
    let mut expected_by_file = 0;
    for round in ["miss", "hit"] {
        let (status, body) = get(&client, &url, &t).await;
        assert_eq!(status, StatusCode::OK, "{round}");
        assert!(body == data, "{round}: whole file differs");
        for (range, from, to) in [
            ("bytes=1000-300000", 1000, 300_001),
            ("bytes=262144-524287", 262_144, 524_288),
            ("bytes=-5000", len - 5000, len),
        ] {
            let body = get_range(&client, &url, &t, range).await;
            assert!(body == data[from..to], "{round} {range}: bytes differ");
        }
        // Every chunk but the last range's (under 16 KiB, so written) goes by sendfile.
        expected_by_file += len + 299_001 + 262_144;
    }
    let by_file = cadenza_common::http::h1::sent_by_file() - before;
    assert!(
        by_file as usize >= expected_by_file,
        "{by_file} bytes by sendfile, expected at least {expected_by_file}"
    );
    assert!(cadenza_common::mapped::live() > 0);

    let out = dir.path().join("curl.out");
    let status = std::process::Command::new("curl")
        .args(["-sS", "--http1.1", "-r", "100-600000", "-o"])
        .arg(&out)
        .arg("-H")
        .arg(format!("Authorization: Bearer {t}"))
        .arg(&url)
        .status()
        .expect("curl runs");
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == data[100..600_001]);

    edge.stop().await;
    stack.shutdown().await;
}

/// Waits (at most 10 s) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_to_back_read_is_read_ahead_and_a_seek_or_a_purged_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let client = stack.client().unwrap();
    let join = join_info(dir.path()).unwrap();
    let edge = start_edge(&join, bind_main().await, |config| config.read_ahead = 2).await;
    let cache = edge.node.edge.cache().clone();

    let data = bytes(42, 10 * SLICE as usize);
    let id = put(&stack, dir.path(), data.clone()).await;
    let (url, t) = (format!("{}/a/{id}", edge.url), token(dir.path(), &id));
    let slice = |i: u64, j: u64| format!("bytes={}-{}", i * SLICE, (j + 1) * SLICE - 1);
    let read = |range: String| {
        let (client, url, t) = (client.clone(), url.clone(), t.clone());
        async move {
            let (status, body) = get_with(&client, &url, &t, Some(&range)).await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
            body
        }
    };
    let fetched = || cache.origin_fetches();

    // The first slice starts the file: slices 1 and 2 are fetched behind it.
    assert!(read(slice(0, 0)).await == data[..SLICE as usize]);
    let held = |i| cache.holds(&id, i);
    eventually("slices 1 and 2 read ahead", || (0..3).all(held)).await;
    assert_eq!((cache.prefetches(), fetched()), (2, 3));
    assert!(!held(3));

    // Slice 1 continues the read: only slice 3 is new to read ahead (2 is held).
    let body = read(slice(1, 1)).await;
    assert!(body == data[SLICE as usize..2 * SLICE as usize]);
    eventually("slice 3 read ahead", || held(3)).await;
    assert_eq!(fetched(), 4);
    assert_eq!(cache.prefetches(), 3, "a held slice was read ahead again");

    // A seek into slice 7 (6 is not held) reads nothing ahead.
    let body = read(slice(7, 7)).await;
    assert!(body == data[7 * SLICE as usize..8 * SLICE as usize]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!((cache.prefetches(), fetched()), (3, 5));

    // Once the file is purged, slice 1 no longer continues a read.
    cache.purge(std::slice::from_ref(&id)).await;
    assert!(!held(0));
    let body = read(slice(1, 1)).await;
    assert!(body == data[SLICE as usize..2 * SLICE as usize]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cache.prefetches(), 3, "a purged file counted as held");
    assert!(held(1), "the slice fetched again is held");

    edge.stop().await;
    stack.shutdown().await;
}

/// Sends `request` on a new connection to `addr` and reads until the edge closes it (at most
/// 10 s); returns what came back and how long after the request the close came.
async fn until_closed(addr: &str, request: &[u8]) -> (Vec<u8>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let sent = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "still open 10 s after {:?}",
        String::from_utf8_lossy(&request[..request.len().min(40)])
    );
    (got, sent.elapsed())
}

/// `cadenza edge`'s timeouts and limits are the operator's: each flag set below changes what
/// the edge does from its default. A token past its expiry by more than --token-leeway is
/// refused where the default leeway (the stack's edge) takes it; a head slower than
/// --header-timeout, a keep-alive connection idle past --idle-timeout, an HTTP/3 connection
/// silent past --h3-idle-timeout, and one pinging with no request past
/// --h3-keepalive-timeout are closed in about that time, not the defaults' 10 s, 75 s,
/// 30 s and 75 s; a head over --max-header-bytes is answered 431 where 16 KiB would pass; an origin
/// that never answers costs --upstream-timeout, not 10 s. Values that make no sense are
/// refused at start, naming the flag and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_timeouts_and_limits_are_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    for (flag, value, why) in [
        ("--header-timeout", "0s", "must be more than 0"),
        ("--idle-timeout", "5x", "unknown unit"),
        ("--send-timeout", "-1s", "is not a duration"),
        ("--drain-timeout", "25h", "longer than 24h"),
        ("--token-leeway", "2h", "at most 1h"),
        ("--max-header-bytes", "100", "8192"),
        ("--upstream-failures", "0", "1.."),
        ("--max-connections-per-client", "0", "1.."),
    ] {
        let refused = edge_command(dir.path(), &edge_dir.path().join("refused"))
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{flag} {value} was taken");
        assert!(
            said.contains(flag) && said.contains(why),
            "{flag} {value}: {said}"
        );
    }

    // An origin that takes connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let data = edge_dir.path().join("edge");
    let mut child = Reaped(
        edge_command(dir.path(), &data)
            .args(["--origin", &silent_url, "--cleartext-listen", "127.0.0.1:0"])
            .args(["--token-leeway", "2s", "--upstream-timeout", "1s"])
            .args(["--header-timeout", "1s", "--idle-timeout", "2s"])
            .args(["--h3-idle-timeout", "1s", "--max-header-bytes", "8192"])
            .args(["--handshake-timeout", "1s", "--h2-max-streams", "3"])
            .args(["--h3-keepalive-timeout", "2s"])
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut child, &data).await;
    let edge = about["edge"].as_str().unwrap();
    let clear = about["edge_cleartext"].as_str().unwrap();
    let clear_addr = clear.trim_start_matches("http://");
    let client = stack.client().unwrap();

    // Expired 10 s ago: inside the default 30 s leeway, outside 2 s.
    let id = put(&stack, dir.path(), bytes(21, 10_000)).await;
    let late = token_expiring(dir.path(), &id, -10);
    let (status, _) = get(&client, &format!("{}/a/{id}", stack.info.edge), &late).await;
    assert_eq!(status, StatusCode::OK, "the stack's edge, default leeway");
    let (status, body) = get(&client, &format!("{edge}/a/{id}"), &late).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("token_expired"));

    // The origin is silent: the answer comes after about a second per try, not ten.
    let asked = Instant::now();
    let (status, _) = get(&client, &format!("{edge}/a/{id}"), &token(dir.path(), &id)).await;
    let took = asked.elapsed();
    assert!(status.is_server_error(), "{status}");
    assert!(
        took < Duration::from_secs(6),
        "the silent origin took {took:?}"
    );

    let (got, took) = until_closed(clear_addr, b"GET /healthz HTTP/1.1\r\nHost: e\r\n").await;
    assert!(!got.starts_with(b"HTTP/1.1 200"));
    let slow_head = Duration::from_millis(900)..Duration::from_secs(5);
    assert!(
        slow_head.contains(&took),
        "an unfinished head closed after {took:?}"
    );

    let (got, took) = until_closed(clear_addr, b"GET /healthz HTTP/1.1\r\nHost: e\r\n\r\n").await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let idle = Duration::from_millis(1800)..Duration::from_secs(6);
    assert!(
        idle.contains(&took),
        "an idle keep-alive connection closed after {took:?}"
    );

    let pad = "a".repeat(10_000);
    let big = format!("GET /healthz HTTP/1.1\r\nHost: e\r\nX-Pad: {pad}\r\n\r\n");
    let (got, _) = until_closed(clear_addr, big.as_bytes()).await;
    assert!(
        got.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    let join = join_info(dir.path()).unwrap();
    let udp: std::net::SocketAddr = edge.trim_start_matches("https://").parse().unwrap();
    // A TCP client that never starts its TLS handshake is closed after --handshake-timeout.
    let (_, took) = until_closed(&udp.to_string(), b"").await;
    let shy = Duration::from_millis(900)..Duration::from_secs(5);
    assert!(
        shy.contains(&took),
        "a silent TLS client closed after {took:?}"
    );
    // HTTP/2's SETTINGS carry --h2-max-streams.
    assert_eq!(h2_max_streams(&join, udp).await, 3);

    // Over HTTP/3 a header section over --max-header-bytes (as RFC 9114 sizes it) is
    // answered 431 too, whether or not the client has the edge's SETTINGS yet.
    let (mut h3, drive) = h3_client(&join, udp).await;
    let healthz = format!("https://localhost:{}/healthz", udp.port());
    for pad in ["a".repeat(7_000), pad] {
        let req = http::Request::get(&healthz)
            .header("x-pad", &pad)
            .body(())
            .unwrap();
        let mut stream = h3.send_request(req).await.unwrap();
        stream.finish().await.unwrap();
        let status = stream.recv_response().await.unwrap().status();
        let want = match pad.len() {
            7_000 => StatusCode::OK,
            _ => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        };
        assert_eq!(status, want, "a {}-byte header over HTTP/3", pad.len());
    }
    drive.abort();

    // quinn's client asks for a 30 s idle timeout; the two sides take the lower.
    let conn = quic_endpoint(&join)
        .connect(udp, "localhost")
        .unwrap()
        .await
        .unwrap();
    let opened = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    let took = opened.elapsed();
    assert!(
        matches!(closed, Ok(quinn::ConnectionError::TimedOut)),
        "{closed:?}"
    );
    let quiet = Duration::from_millis(900)..Duration::from_secs(5);
    assert!(
        quiet.contains(&took),
        "a silent HTTP/3 connection closed after {took:?}"
    );
    // One that PINGs every 300 ms is not silent, but with no request it is closed after
    // --h3-keepalive-timeout (H3_NO_ERROR).
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(300)));
    let mut tls =
        (*cadenza_common::http::tls::client_config(join.cert.cert.as_bytes()).unwrap()).clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut pinging = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    pinging.transport_config(std::sync::Arc::new(transport));
    let conn = quic_endpoint(&join)
        .connect_with(pinging, udp, "localhost")
        .unwrap()
        .await
        .unwrap();
    let opened = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    let took = opened.elapsed();
    match closed {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0x100));
        }
        other => panic!("a pinging HTTP/3 connection with no request got {other:?}"),
    }
    let kept = Duration::from_millis(1800)..Duration::from_secs(6);
    assert!(
        kept.contains(&took),
        "a pinging HTTP/3 connection closed after {took:?}"
    );

    holding.abort();
    stack.shutdown().await;
}

/// The concurrent streams the edge at `addr` allows an HTTP/2 client, read from its SETTINGS
/// once a first request is answered.
async fn h2_max_streams(join: &JoinInfo, addr: std::net::SocketAddr) -> usize {
    let (mut client, mut conn) = h2::client::handshake(h2_tls(join, addr).await)
        .await
        .unwrap();
    let get = http::Request::get(format!("https://localhost:{}/healthz", addr.port()))
        .body(())
        .unwrap();
    let (answered, _) = client.send_request(get, true).unwrap();
    let status = tokio::select! {
        resp = answered => resp.unwrap().status(),
        ended = &mut conn => panic!("the HTTP/2 connection ended: {ended:?}"),
    };
    assert_eq!(status, StatusCode::OK);
    conn.max_concurrent_send_streams()
}

/// A TLS connection to `addr` trusting `join`'s certificate that agreed on h2.
async fn h2_tls(
    join: &JoinInfo,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let io = tls_to(&addr.to_string(), &join.cert.cert, b"h2").await;
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    io
}

/// The request-body credit an HTTP/2 client gets from the edge at `addr` on a GET of `path`
/// whose response it does not read: asking for 4 MiB, what it has after a second of no change.
async fn h2_body_credit(
    join: &JoinInfo,
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> usize {
    let (client, conn) = h2::client::handshake(h2_tls(join, addr).await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let get = |path: &str| {
        http::Request::get(format!("https://localhost:{}{path}", addr.port()))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(())
            .unwrap()
    };
    // A first exchange, so the edge's SETTINGS and window updates have come.
    let (first, _) = client.send_request(get("/healthz"), true).unwrap();
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    let (_response, mut body) = client.send_request(get(path), false).unwrap();
    h2_credit::settled(&mut body).await
}

/// `value` as a QUIC variable-length integer in its 8-byte form.
fn varint8(value: u64) -> [u8; 8] {
    (value | 0xc0 << 56).to_be_bytes()
}

/// A client's streams cannot make the edge hold what they send. h3 buffers a frame
/// whole before it reads it, whatever length it declares, and QUIC gives a client more
/// credit as the edge reads: a request whose HEADERS frame claims a gigabyte used to be read
/// and kept for as long as the client sent. Now such a stream is stopped (H3_EXCESSIVE_LOAD)
/// after about twice the header limit, and the connection goes on serving; a control-stream
/// frame claiming a gigabyte closes the connection at its header; and an unread stream takes
/// no more than the edge's 64 KiB stream window, over HTTP/2 as over HTTP/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_make_the_edge_hold_what_it_sends() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let join = join_info(dir.path()).unwrap();
    let (main, base) = bind_main().await;
    let addr = main.local_addr().unwrap();
    let edge = start_edge(&join, (main, base), |_| {}).await;
    let client = quic_endpoint(&join);
    let connect = || async { client.connect(addr, "localhost").unwrap().await.unwrap() };
    let junk = vec![0x5a_u8; 4 << 20];
    let one_gigabyte = varint8(1 << 30);

    // A HEADERS frame (type 1) that never ends.
    let conn = connect().await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0x01]).await.unwrap();
    send.write_all(&one_gigabyte).await.unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(10), send.write_all(&junk)).await;
    match sent {
        Ok(Err(quinn::WriteError::Stopped(code))) => assert_eq!(code.into_inner(), 0x107),
        other => panic!("4 MiB of one HEADERS frame: {other:?}"),
    }
    assert!(
        conn.stats().udp_tx.bytes < 1 << 20,
        "the client sent {} bytes before the stop",
        conn.stats().udp_tx.bytes
    );
    // The connection serves on (h3's client opens its control stream now).
    let (mut h3, drive) = h3_over(conn.clone()).await;
    let req = http::Request::get(format!("https://localhost:{}/healthz", addr.port()))
        .body(())
        .unwrap();
    let mut stream = h3.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(
        stream.recv_response().await.unwrap().status(),
        StatusCode::OK
    );
    drive.abort();

    // A request under way, whose response the client does not read: the edge reads no
    // request body, and the client may send only what the stream window allows (quinn's
    // default would have let 1.25 MB sit in the edge's memory per stream).
    let id = put(&stack, dir.path(), bytes(23, 8 << 20)).await;
    let conn = connect().await;
    let (mut h3, drive) = h3_over(conn.clone()).await;
    let req = http::Request::get(format!("https://localhost:{}/a/{id}", addr.port()))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token(dir.path(), &id)),
        )
        .body(())
        .unwrap();
    let mut stream = h3.send_request(req).await.unwrap();
    let body = bytes::Bytes::from(junk.clone());
    let unread = tokio::time::timeout(Duration::from_secs(2), stream.send_data(body)).await;
    assert!(unread.is_err(), "4 MiB of body was taken: {unread:?}");
    let sent = conn.stats().udp_tx.bytes;
    assert!(sent < 256 << 10, "{sent} bytes sent on an unread stream");
    drop(stream);
    drive.abort();

    // The same over HTTP/2: the edge grants a request body 64 KiB of credit, not hyper's 1 MiB.
    let credit = h2_body_credit(&join, addr, &format!("/a/{id}"), &token(dir.path(), &id)).await;
    assert!(credit <= 64 << 10, "HTTP/2 body credit {credit}");

    // A reserved frame type on the control stream, claiming a gigabyte.
    let conn = connect().await;
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00, 0x21]).await.unwrap();
    control.write_all(&one_gigabyte).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), control.write_all(&junk[..1 << 16])).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the connection stayed open");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code.into_inner(), 0x107, "{close:?}")
        }
        other => panic!("{other:?}"),
    }

    edge.stop().await;
    stack.shutdown().await;
}

/// A PROXY protocol v1 line naming `client` (IPv4 or IPv6) as the connection's source.
fn proxy_v1(client: &str) -> Vec<u8> {
    let ip: std::net::IpAddr = client.parse().unwrap();
    let (family, to) = if ip.is_ipv4() {
        ("TCP4", "10.0.0.1")
    } else {
        ("TCP6", "2001:db8::1")
    };
    format!("PROXY {family} {client} {to} 40000 443\r\n").into_bytes()
}

/// A PROXY protocol v2 header: PROXY naming `client` over TCP, or LOCAL when `None`.
fn proxy_v2(client: Option<&str>) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let (command, family, block) = match client.map(|c| c.parse::<std::net::IpAddr>().unwrap()) {
        None => (0x20, 0x00, Vec::new()),
        Some(std::net::IpAddr::V4(ip)) => {
            let block = [&ip.octets()[..], &[10, 0, 0, 1], &[0x9c, 0x40, 0x01, 0xbb]].concat();
            (0x21, 0x11, block)
        }
        Some(std::net::IpAddr::V6(ip)) => {
            let to = "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap();
            let block = [&ip.octets()[..], &to.octets(), &[0x9c, 0x40, 0x01, 0xbb]].concat();
            (0x21, 0x21, block)
        }
    };
    header.extend_from_slice(&[command, family]);
    header.extend_from_slice(&(block.len() as u16).to_be_bytes());
    header.extend_from_slice(&block);
    header
}

/// The status of a `GET path` (bytes 0-9, `Authorization: Bearer token`, and `extra` header
/// lines) on a new connection from loopback address `from` to `addr` that opens with `first`
/// and then speaks TLS (trusting `roots`) or, without roots, cleartext HTTP/1.1; `None` when
/// the edge closes it unanswered.
async fn status_after(
    (from, addr): (&str, &str),
    first: &[u8],
    roots: Option<&str>,
    path: &str,
    token: &str,
    extra: &str,
) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = connect_from(from, addr, first).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Range: bytes=0-9\r\n{extra}Connection: close\r\n\r\n"
    );
    let mut answer = Vec::new();
    let read = async {
        match roots {
            Some(roots) => {
                let mut tls = tls_over(tcp, roots, b"http/1.1").await?;
                tls.write_all(request.as_bytes()).await?;
                tls.read_to_end(&mut answer).await
            }
            None => {
                tcp.write_all(request.as_bytes()).await?;
                tcp.read_to_end(&mut answer).await
            }
        }
    };
    let read = tokio::time::timeout(Duration::from_secs(20), read).await;
    assert!(read.is_ok(), "no answer nor close from {addr} within 20 s");
    let head = String::from_utf8_lossy(&answer);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
}

/// A TCP connection from loopback address `from` to `addr` that has sent `first`.
async fn connect_from(from: &str, addr: &str, first: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
    tcp.write_all(first).await.unwrap();
    tcp
}

/// A free loopback TCP port (bound and let go: a peer binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tcp_balancer_clients_are_placed_by_the_proxy_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let id = put(&stack, dir.path(), bytes(11, 64 * 1024)).await;
    // Licensed in Britain and Sweden; the test database places 89.160.20.112 in Sweden,
    // 2.125.160.216 in Britain and 2001:218::1 in Japan, and not 127.0.0.1.
    let claims = claims_for(&id, 600, "GB,SE".parse().unwrap());
    let token = signing_key(dir.path()).unwrap().sign(&claims).0;
    let geoip = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/geoip/GeoIP2-Country-Test.mmdb");

    // Refused at start: the header would be believed from anyone; a listener not there.
    for (args, why) in [
        (&["--proxy-protocol", "tls"][..], "--trusted-proxy"),
        (
            &["--proxy-protocol", "both", "--trusted-proxy", "127.0.0.1"],
            "--cleartext-listen",
        ),
    ] {
        let refused = edge_command(dir.path(), &edge_dir.path().join("refused"))
            .args(args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{args:?} was taken");
        assert!(said.contains(why), "{args:?}: {said}");
    }

    let data = edge_dir.path().join("edge");
    let log = edge_dir.path().join("edge.log");
    let mut child = Reaped(
        edge_command(dir.path(), &data)
            .arg("--geoip")
            .arg(&geoip)
            .args(["--cleartext-listen", "127.0.0.1:0"])
            .args(["--proxy-protocol", "both", "--trusted-proxy", "127.0.0.1"])
            .args(["--access-log", "--log-json"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut child, &data).await;
    let main = about["edge"].as_str().unwrap()["https://".len()..].to_owned();
    let clear = about["edge_cleartext"].as_str().unwrap()["http://".len()..].to_owned();
    let roots = std::fs::read_to_string(dir.path().join("tls/cert.pem")).unwrap();
    let path = format!("/a/{id}");
    let tls = Some(roots.as_str());
    let sweden = "89.160.20.112";
    let japan = "2001:218::1";

    // Over TLS and in the clear, both versions: the header's client is the one placed.
    // 127.0.0.1 is the trusted balancer; 127.0.0.2 reaches the edge directly.
    let (balancer, direct) = ("127.0.0.1", "127.0.0.2");
    for (listener, roots) in [(&main, tls), (&clear, None)] {
        for (from, first, want) in [
            (balancer, proxy_v2(Some(sweden)), Some(206)),
            (balancer, proxy_v2(Some(japan)), Some(451)),
            (balancer, proxy_v1("2.125.160.216"), Some(206)),
            (balancer, proxy_v1(japan), Some(451)),
            // The balancer's own connection: the peer (placed nowhere) is served.
            (balancer, proxy_v2(None), Some(206)),
            // From the balancer, no header or a broken one: closed unanswered.
            (balancer, Vec::new(), None),
            (balancer, b"PROXY TCP4 89.160.20.112\r\n".to_vec(), None),
            // Anyone else is served as itself (a region's other edges fetch so), and may
            // not name a client.
            (direct, Vec::new(), Some(206)),
            (direct, proxy_v2(Some(sweden)), None),
        ] {
            let status = status_after((from, listener), &first, roots, &path, &token, "").await;
            assert_eq!(
                status,
                want,
                "{listener} from {from} after \"{}\"",
                first.escape_ascii()
            );
        }
    }
    // The named client is not a trusted proxy, so its X-Forwarded-For claims nothing.
    let spoofed = format!("X-Forwarded-For: {sweden}\r\n");
    let first = proxy_v1(japan);
    let status = status_after((balancer, &clear), &first, None, &path, &token, &spoofed).await;
    assert_eq!(status, Some(451));
    // One naming another trusted proxy has that proxy's X-Forwarded-For walked.
    let forwarded = "X-Forwarded-For: 2.125.160.216\r\n";
    let first = proxy_v1(balancer);
    let status = status_after((balancer, &clear), &first, None, &path, &token, forwarded).await;
    assert_eq!(status, Some(206));

    // The JSON access log names the client as placed, and the connection's peer.
    let logged: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|event: &serde_json::Value| event["target"] == "access")
        .map(|event| event["fields"].clone())
        .collect();
    for (client, peer, status) in [
        (sweden, "89.160.20.112:40000", 206),
        ("2001:218::1", "[2001:218::1]:40000", 451),
        ("2.125.160.216", "127.0.0.1:40000", 206),
        ("127.0.0.2", "127.0.0.2:", 206),
    ] {
        assert!(
            logged.iter().any(|f| f["client"] == client
                && f["peer"].as_str().is_some_and(|p| p.starts_with(peer))
                && f["status"] == status
                && f["path"] == path.as_str()
                && f["method"] == "GET"
                && f["bytes"].is_u64()
                && f["ms"].is_f64()),
            "no access log line for {client} via {peer} ({status}) in {logged:#?}"
        );
    }
    // Each 206 says how the cache served it (its Cache-Status); a refusal says nothing.
    let first = logged.iter().find(|f| f["status"] == 206).unwrap();
    assert_eq!(first["cache"], "cadenza; fwd=miss; stored", "{first:#?}");
    assert!(
        logged
            .iter()
            .filter(|f| f["status"] == 206)
            .skip(1)
            .all(|f| f["cache"] == "cadenza; hit")
    );
    assert!(
        logged
            .iter()
            .filter(|f| f["status"] == 451)
            .all(|f| f["cache"] == "")
    );

    // Real peers. curl's own v1 line (naming itself, 127.0.0.1) on both listeners.
    let ca = dir.path().join("tls/cert.pem");
    let bearer = format!("Authorization: Bearer {token}");
    let ranged = ["-H", bearer.as_str(), "-r", "0-9"];
    for url in [
        format!("https://{main}{path}"),
        format!("http://{clear}{path}"),
    ] {
        let (status, _) = curl_head(&url, &ca, &[&ranged[..], &["--haproxy-protocol"]].concat());
        assert_eq!(status, 206, "{url}");
    }
    // HAProxy passing TLS through (`mode tcp`, `send-proxy-v2`), as a regional balancer
    // would; its frontends stand in for clients in Sweden and Japan by rewriting the source.
    let haproxy_ok = std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if haproxy_ok {
        let (se_port, jp_port) = (free_port(), free_port());
        let config = edge_dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
                 timeout server 30s\n\
                 frontend sweden\n  bind 127.0.0.1:{se_port}\n  \
                 tcp-request connection set-src ipv4({sweden})\n  default_backend edge\n\
                 frontend japan\n  bind 127.0.0.1:{jp_port}\n  \
                 tcp-request connection set-src ipv6({japan})\n  default_backend edge\n\
                 backend edge\n  server edge {main} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let _haproxy = Reaped(
            std::process::Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        for (port, want) in [(se_port, 206), (jp_port, 451)] {
            // Once HAProxy listens (both frontends bind before it serves either).
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "HAProxy never listened on {port}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let url = format!("https://localhost:{port}{path}");
            let resolve = format!("localhost:{port}:127.0.0.1");
            let (status, _) =
                curl_head(&url, &ca, &[&ranged[..], &["--resolve", &resolve]].concat());
            assert_eq!(status, want, "through HAProxy on {port}");
        }
    } else {
        peers::skip_or_fail("haproxy");
    }

    // What was closed is counted, per listener: the balancer's connections without a
    // header or with a broken one, and the header from a peer not trusted to send it.
    let client = stack.client().unwrap();
    let metrics = format!("{}/metrics", about["edge_admin"].as_str().unwrap());
    let (status, text) = get(&client, &metrics, about["admin_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&text);
    for listener in ["tls", "cleartext"] {
        let line = format!("cadenza_edge_proxy_header_refused_total{{listener=\"{listener}\"}} 3");
        assert!(text.contains(&line), "no {line} in\n{text}");
    }
    drop(child);
    stack.shutdown().await;
}

/// The status and headers (names lowercased) curl gets for `url` with `args` added.
fn curl_head(url: &str, ca: &Path, args: &[&str]) -> (u16, Vec<(String, String)>) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
        .arg("--cacert")
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no answer from {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_players_may_read_the_edge_from_the_origins_it_allows() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let id = put(&stack, dir.path(), bytes(12, 64 * 1024)).await;
    let token = token(dir.path(), &id);
    let ca = dir.path().join("tls/cert.pem");
    let bearer = format!("Authorization: Bearer {token}");
    let preflight = [
        "-X",
        "OPTIONS",
        "-H",
        "Access-Control-Request-Method: GET",
        "-H",
        "Access-Control-Request-Headers: authorization, range",
    ];

    let refused = edge_command(dir.path(), &edge_dir.path().join("refused"))
        .args(["--cors-origin", "https://player.example/app"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("--cors-origin"),
        "{said}"
    );

    // By default any page may read: the token opens the file, not the page.
    let data = edge_dir.path().join("any");
    let mut any = Reaped(edge_command(dir.path(), &data).spawn().unwrap());
    let about = edge_started(&mut any, &data).await;
    let url = format!("{}/a/{id}", about["edge"].as_str().unwrap());
    let from_app = ["-H", "Origin: https://app.example"];
    // Over HTTP/1.1 (the edge's own loop) here; curl's default, HTTP/2, below.
    let h1 = ["--http1.1"];
    let (status, h) = curl_head(&url, &ca, &[&from_app[..], &preflight[..], &h1].concat());
    assert_eq!(status, 204, "{h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    let methods = header(&h, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("GET") && methods.contains("HEAD"), "{h:?}");
    let allowed = header(&h, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.contains("Authorization") && allowed.contains("Range"),
        "{h:?}"
    );
    assert_eq!(header(&h, "access-control-max-age"), Some("86400"));
    let (status, h) = curl_head(
        &url,
        &ca,
        &[&from_app[..], &["-H", &bearer, "-r", "0-9"]].concat(),
    );
    assert_eq!(status, 206, "{h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    // Its Resource Timing entry may be read in full by the same pages.
    assert_eq!(header(&h, "timing-allow-origin"), Some("*"));
    let exposed = header(&h, "access-control-expose-headers").unwrap_or_default();
    assert!(
        exposed.contains("Content-Range") && exposed.contains("ETag"),
        "{h:?}"
    );
    // An error too, so the player's script can read why.
    let bad = ["-H", "Authorization: Bearer v1.k1.bad.token"];
    let (status, h) = curl_head(&url, &ca, &[&from_app[..], &bad[..]].concat());
    assert_eq!(status, 403);
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    drop(any);

    // Restricted to the operator's players: each echoed back to itself, others not served.
    let data = edge_dir.path().join("only");
    let mut only = Reaped(
        edge_command(dir.path(), &data)
            .args(["--cors-origin", "https://player.example"])
            .args(["--cors-origin", "http://localhost:8080"])
            .args(["--alt-svc-port", "443"])
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut only, &data).await;
    let url = format!("{}/a/{id}", about["edge"].as_str().unwrap());
    for origin in ["https://player.example", "http://localhost:8080"] {
        let from = format!("Origin: {origin}");
        let (status, h) = curl_head(&url, &ca, &["-H", &from, "-H", &bearer, "-r", "0-9"]);
        assert_eq!(status, 206);
        assert_eq!(header(&h, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(&h, "timing-allow-origin"), Some(origin));
        assert_eq!(header(&h, "vary"), Some("Origin"));
        // (And HTTP/3 is where the balancer in front forwards it: --alt-svc-port.)
        assert_eq!(header(&h, "alt-svc"), Some("h3=\":443\"; ma=86400"));
        let (status, _) = curl_head(&url, &ca, &[&["-H", &from][..], &preflight[..]].concat());
        assert_eq!(status, 204);
    }
    let from_other = ["-H", "Origin: https://elsewhere.example"];
    let (status, h) = curl_head(
        &url,
        &ca,
        &[&from_other[..], &["-H", &bearer, "-r", "0-9"]].concat(),
    );
    assert_eq!(status, 206, "the token still opens the file");
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    assert_eq!(header(&h, "timing-allow-origin"), None);
    assert_eq!(header(&h, "vary"), Some("Origin"));
    let (status, _) = curl_head(&url, &ca, &[&from_other[..], &preflight[..]].concat());
    assert_eq!(status, 403);
    drop(only);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_svc_names_the_port_clients_reach_http3_on() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let join = join_info(dir.path()).unwrap();
    let id = put(&stack, dir.path(), bytes(13, 1024)).await;
    let bearer = format!("Authorization: Bearer {}", token(dir.path(), &id));
    let ca = dir.path().join("tls/cert.pem");
    // Its own port by default; a balancer's (443 forwarded to it) when told; none with 0.
    for port in [None, Some(443), Some(0)] {
        let main = bind_main().await;
        let own = main.0.local_addr().unwrap().port();
        let want = match port {
            None => Some(own),
            Some(0) => None,
            Some(p) => Some(p),
        }
        .map(|p| format!("h3=\":{p}\"; ma=86400"));
        let edge = start_edge(&join, main, |c| c.alt_svc_port = port).await;
        let (status, h) = curl_head(&format!("{}/a/{id}", edge.url), &ca, &["-H", &bearer]);
        assert_eq!(status, 200);
        assert_eq!(header(&h, "alt-svc").map(str::to_owned), want, "{port:?}");
        edge.stop().await;
    }
    stack.shutdown().await;
}

/// A connection from loopback address `from` to `addr` that opens with `first`, speaks TLS
/// (trusting `roots`) or, without roots, cleartext HTTP/1.1, and has had bytes 0-9 of `path`
/// answered 206; kept alive for the caller to hold open.
async fn held_open(
    (from, addr): (&str, &str),
    first: &[u8],
    roots: Option<&str>,
    path: &str,
    token: &str,
) -> Box<dyn HeldConnection> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = connect_from(from, addr, first).await;
    let mut conn: Box<dyn HeldConnection> = match roots {
        Some(roots) => Box::new(tls_over(tcp, roots, b"http/1.1").await.unwrap()),
        None => Box::new(tcp),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Range: bytes=0-9\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    // The head, then the ten bytes asked for.
    let mut answer = Vec::new();
    let read = async {
        loop {
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "{addr} closed the connection from {from}");
            answer.extend_from_slice(&buf[..n]);
            let head = answer.windows(4).position(|w| w == b"\r\n\r\n");
            if head.is_some_and(|end| answer.len() >= end + 4 + 10) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer within 20 s");
    assert!(
        answer.starts_with(b"HTTP/1.1 206 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    conn
}

trait HeldConnection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> HeldConnection for T {}

/// Whether an HTTP/3 connection from 127.0.0.1 to `addr` is let in and answers a request for
/// bytes 0-9 of `path` with 206; false when it is refused or closed. The connection, if any,
/// is kept open in what is returned.
async fn h3_let_in(
    join: &JoinInfo,
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> (bool, Option<(quinn::Endpoint, quinn::Connection)>) {
    let endpoint = quic_endpoint(join);
    let connecting = endpoint.connect(addr, "localhost").unwrap();
    let conn = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            println!("HTTP/3 refused: {e}");
            return (false, None);
        }
        Err(_) => panic!("no HTTP/3 handshake nor refusal within 10 s"),
    };
    let asked = async {
        let (mut send, _drive) = h3_over(conn.clone()).await;
        let req = http::Request::get(format!("https://localhost:{}{path}", addr.port()))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::RANGE, "bytes=0-9")
            .body(())
            .unwrap();
        let mut stream = send.send_request(req).await.ok()?;
        stream.finish().await.ok()?;
        let resp = stream.recv_response().await.ok()?;
        Some(resp.status())
    };
    let status = tokio::time::timeout(Duration::from_secs(10), asked)
        .await
        .expect("an HTTP/3 answer or close within 10 s");
    match status {
        Some(StatusCode::PARTIAL_CONTENT) => (true, Some((endpoint, conn))),
        Some(other) => panic!("HTTP/3 answered {other}"),
        None => {
            println!("HTTP/3 closed: {:?}", conn.close_reason());
            (false, None)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_at_most_its_share_of_the_edges_connections() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let id = put(&stack, dir.path(), bytes(12, 64 * 1024)).await;
    let token = token(dir.path(), &id);
    let join = join_info(dir.path()).unwrap();
    let data = edge_dir.path().join("edge");
    let mut child = Reaped(
        edge_command(dir.path(), &data)
            .args(["--cleartext-listen", "127.0.0.1:0"])
            .args(["--max-connections-per-client", "2"])
            .args(["--proxy-protocol", "tls", "--trusted-proxy", "127.0.0.3"])
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut child, &data).await;
    let main = about["edge"].as_str().unwrap()["https://".len()..].to_owned();
    let clear = about["edge_cleartext"].as_str().unwrap()["http://".len()..].to_owned();
    let udp: std::net::SocketAddr = main.parse().unwrap();
    let roots = std::fs::read_to_string(dir.path().join("tls/cert.pem")).unwrap();
    let tls = Some(roots.as_str());
    let path = format!("/a/{id}");
    let (me, neighbour, balancer) = ("127.0.0.1", "127.0.0.2", "127.0.0.3");

    // Two connections, one per listener: the client's share, counted across both.
    let first = held_open((me, &main), b"", tls, &path, &token).await;
    let second = held_open((me, &clear), b"", None, &path, &token).await;
    // A third is closed unanswered on either listener, and refused over HTTP/3.
    for (listener, roots) in [(&main, tls), (&clear, None)] {
        let status = status_after((me, listener), b"", roots, &path, &token, "").await;
        assert_eq!(status, None, "a third connection to {listener}");
    }
    assert!(
        !h3_let_in(&join, udp, &path, &token).await.0,
        "a third over HTTP/3"
    );
    // Another client is not held back by it.
    let status = status_after((neighbour, &main), b"", tls, &path, &token, "").await;
    assert_eq!(status, Some(206), "another client");

    // One closed gives its place back; HTTP/3 then takes it, and TCP is full again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Refusals while the closed connection's place is on its way back are counted too.
    let mut h3_refused = 1;
    let quic = loop {
        if let (true, conn) = h3_let_in(&join, udp, &path, &token).await {
            break conn;
        }
        h3_refused += 1;
        assert!(
            Instant::now() < deadline,
            "the closed connection's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = status_after((me, &clear), b"", None, &path, &token, "").await;
    assert_eq!(status, None, "full again with the HTTP/3 connection");
    drop((quic, second));

    // Behind a balancer, the clients its PROXY headers name are counted, not the balancer.
    let named = Some("192.0.2.9");
    let _a = held_open((balancer, &main), &proxy_v2(named), tls, &path, &token).await;
    let _b = held_open((balancer, &main), &proxy_v2(named), tls, &path, &token).await;
    let status = status_after((balancer, &main), &proxy_v2(named), tls, &path, &token, "").await;
    assert_eq!(status, None, "a third connection for the same client");
    let other = proxy_v2(Some("192.0.2.10"));
    let status = status_after((balancer, &main), &other, tls, &path, &token, "").await;
    assert_eq!(status, Some(206), "another client of the balancer");
    // The balancer's own connections (LOCAL) are its, and it is not counted.
    let mut own = Vec::new();
    for _ in 0..3 {
        own.push(held_open((balancer, &main), &proxy_v2(None), tls, &path, &token).await);
    }

    // Counted per listener: TLS closed two (one directly, one behind the balancer), the
    // cleartext listener two, HTTP/3 refused one (and any while a place came back).
    let client = stack.client().unwrap();
    let metrics = format!("{}/metrics", about["edge_admin"].as_str().unwrap());
    let (status, text) = get(&client, &metrics, about["admin_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&text);
    // 192.0.2.9 holds its two; others may still be closing.
    let gauge = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..].trim().parse().unwrap()
    };
    assert!(gauge("cadenza_edge_clients_at_cap ") >= 1, "{text}");
    assert!(gauge("cadenza_edge_clients ") >= gauge("cadenza_edge_clients_at_cap "));
    for (listener, count) in [("tls", 2), ("cleartext", 2), ("quic", h3_refused)] {
        let line =
            format!("cadenza_edge_client_cap_refused_total{{listener=\"{listener}\"}} {count}");
        assert!(text.contains(&line), "no {line} in\n{text}");
    }
    drop(child);
    stack.shutdown().await;
}

/// `edge` (an [`edge_command`]) run by systemd's `systemd-socket-activate`, which holds
/// `ports` (TCP on 127.0.0.1) and starts the edge, handing them over, once the first client
/// connects; what the two have written to stderr so far, returned once the ports are held;
/// and the thread reading it, which ends when the edge does.
async fn socket_activated(
    edge: std::process::Command,
    ports: &[u16],
) -> (
    Reaped,
    std::sync::Arc<std::sync::Mutex<String>>,
    std::thread::JoinHandle<()>,
) {
    let mut command = std::process::Command::new("systemd-socket-activate");
    for port in ports {
        command.arg(format!("--listen=127.0.0.1:{port}"));
    }
    command
        .arg(edge.get_program())
        .args(edge.get_args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = Reaped(command.spawn().unwrap());
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let into = said.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut buf) {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // Connecting to see would start the edge: the manager says when it holds each port.
    let held = || said.lock().unwrap().matches("Listening on").count() == ports.len();
    eventually("systemd-socket-activate holds the ports", held).await;
    (child, said, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_manager_holds_the_edges_port_and_hands_it_over() {
    if std::process::Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        peers::skip_or_fail("systemd-socket-activate");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let id = put(&stack, dir.path(), bytes(13, 64 * 1024)).await;
    let token = token(dir.path(), &id);
    let roots = std::fs::read_to_string(dir.path().join("tls/cert.pem")).unwrap();
    let path = format!("/a/{id}");

    // The manager holds the port; no edge runs until a client connects. The client's
    // connection waits in the port's queue while the edge starts, takes the port over, and
    // answers it (a restart under systemd looks the same to clients: queued, not refused).
    let port = free_port();
    let main = format!("127.0.0.1:{port}");
    let data = edge_dir.path().join("edge");
    let edge = edge_command_on(dir.path(), &data, &main);
    let (mut child, ..) = socket_activated(edge, &[port]).await;
    assert!(
        !data.join("edge.json").exists(),
        "the edge started before a client came"
    );
    let status = status_after(("127.0.0.1", &main), b"", Some(&roots), &path, &token, "").await;
    assert_eq!(status, Some(206));
    let about = edge_started(&mut child, &data).await;
    assert_eq!(about["edge"], format!("https://{main}"));
    // The edge bound HTTP/3 on the same port itself.
    let join = join_info(dir.path()).unwrap();
    let (mut send, drive) = h3_client(&join, main.parse().unwrap()).await;
    let url = format!("https://localhost:{port}{path}");
    assert!(h3_read(&mut send, &url, &token, Duration::ZERO).await.1);
    drive.abort();
    drop(child);

    // A socket passed for no listener of the edge's is a mistake in the units: it stops at
    // start, naming the address.
    let stray = free_port();
    let data = edge_dir.path().join("stray");
    let (mut child, said, reader) =
        socket_activated(edge_command(dir.path(), &data), &[stray]).await;
    let at = format!("127.0.0.1:{stray}");
    let _starts_it = std::net::TcpStream::connect(&at).unwrap();
    let status = exit_status(&mut child, Instant::now()).await;
    assert!(!status.success(), "the edge ran with a stray socket");
    reader.join().unwrap();
    let said = said.lock().unwrap().clone();
    assert!(
        said.contains("passed sockets no listener takes") && said.contains(&at),
        "{said}"
    );
    stack.shutdown().await;
}

/// Sends SIGTERM to `child`.
fn term(child: &Reaped) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// `cadenza up --access-log-file` writes its edge's requests to the file within a second,
/// and the last ones at exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cadenza_up_writes_its_edges_access_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let access = dir.path().join("access.log");
    let mut child = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_cadenza"))
            .args(["up", "--port-base", "0", "--workers", "0", "--data"])
            .arg(&data)
            .arg("--access-log-file")
            .arg(&access)
            .arg("--log-json")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        if let Ok(info) = cadenza::stack::ClusterInfo::load(&data) {
            break info;
        }
        assert!(Instant::now() < deadline, "cadenza up did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let client = info.client().unwrap();
    let object = bytes(17, 64 * 1024);
    let digest = ring::digest::digest(&ring::digest::SHA256, &object);
    let id: FileId = hex_encode(digest.as_ref())[..40].parse().unwrap();
    let url = format!("{}/internal/v1/objects/{id}", info.origin);
    let service = cadenza::stack::service_token(&data).unwrap();
    let req = client::request(Method::PUT, &url, Some(&service), full(object)).unwrap();
    assert!(client.request(req).await.unwrap().status().is_success());
    let url = format!("{}/a/{id}", info.edge);
    // The rendition requests' lines (the control plane's health checks of the edge are
    // logged too).
    let statuses = || -> Vec<u64> {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["fields"]["path"].as_str().unwrap().starts_with("/a/"))
            .map(|event| event["fields"]["status"].as_u64().unwrap())
            .collect()
    };
    let (status, _) = get(&client, &url, &token(&data, &id)).await;
    assert_eq!(status, StatusCode::OK);
    eventually("the line written within a second or so", || {
        statuses() == [200]
    })
    .await;
    // The last request's line is written at exit at the latest.
    let (status, _) = get(&client, &url, "not a token").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    term(&child);
    exited(&mut child, Instant::now()).await;
    assert_eq!(statuses(), [200, 403]);
}

/// Waits until 20 s after `since` for `child` to exit; how it did.
async fn exit_status(child: &mut Reaped, since: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(since.elapsed() < Duration::from_secs(20), "no exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until 20 s after `since` for `child` to exit, successfully; how long after `since`
/// it did.
async fn exited(child: &mut Reaped, since: Instant) -> Duration {
    let status = exit_status(child, since).await;
    assert!(status.success(), "{status}");
    since.elapsed()
}

/// Waits up to 2 s for the edge whose `/readyz` is `ready` to say 503 `draining`.
async fn out_of_rotation(client: &HttpClient, ready: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let (status, body) = loop {
        let (status, body) = get(client, ready, "").await;
        if status != StatusCode::OK {
            break (status, body);
        }
        assert!(Instant::now() < deadline, "/readyz still 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("draining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_edge_leaves_rotation_before_it_closes_its_ports() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let id = put(&stack, dir.path(), bytes(14, 64 * 1024)).await;
    let token = token(dir.path(), &id);
    let client = stack.client().unwrap();
    let data = edge_dir.path().join("edge");
    let mut child = Reaped(
        edge_command(dir.path(), &data)
            .args(["--drain-delay", "2s"])
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut child, &data).await;
    let ready = format!("{}/readyz", about["edge_admin"].as_str().unwrap());
    let file = format!("{}/a/{id}", about["edge"].as_str().unwrap());
    assert_eq!(get(&client, &ready, "").await.0, StatusCode::OK);

    // Told to stop, it says so to health checks at once, and serves on (new connections
    // included) until the delay is over; then it drains and exits.
    let asked = Instant::now();
    term(&child);
    out_of_rotation(&client, &ready).await;
    let fresh = stack.client().unwrap();
    assert_eq!(get(&fresh, &file, &token).await.0, StatusCode::OK);
    let took = exited(&mut child, asked).await;
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(15),
        "exited {took:?} after SIGTERM"
    );

    // A second signal cuts a long delay short.
    let data = edge_dir.path().join("impatient");
    let mut child = Reaped(
        edge_command(dir.path(), &data)
            .args(["--drain-delay", "1h"])
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut child, &data).await;
    let ready = format!("{}/readyz", about["edge_admin"].as_str().unwrap());
    term(&child);
    out_of_rotation(&client, &ready).await;
    let asked = Instant::now();
    term(&child);
    assert!(exited(&mut child, asked).await < Duration::from_secs(15));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_file_is_written_each_second_and_reopened_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let id = put(&stack, dir.path(), bytes(15, 64 * 1024)).await;
    let token = token(dir.path(), &id);
    let client = stack.client().unwrap();
    let data = edge_dir.path().join("edge");
    let access = edge_dir.path().join("access.log");
    let stderr = edge_dir.path().join("stderr.log");
    let mut child = Reaped(
        edge_command(dir.path(), &data)
            .arg("--access-log-file")
            .arg(&access)
            .arg("--log-json")
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let about = edge_started(&mut child, &data).await;
    let file = format!("{}/a/{id}", about["edge"].as_str().unwrap());
    let statuses = |path: &Path| -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .map(|event| event["fields"]["status"].as_u64().unwrap())
            .collect()
    };

    // Two answers reach the file within a second or so of each other.
    assert_eq!(get(&client, &file, &token).await.0, StatusCode::OK);
    assert_eq!(
        get(&client, &file, "v1.k1.bad.token").await.0,
        StatusCode::FORBIDDEN
    );
    eventually("the two lines in the file", || {
        statuses(&access) == [200, 403]
    })
    .await;
    // logrotate moves it and signals: a new file takes the next lines.
    let rotated = edge_dir.path().join("access.log.1");
    std::fs::rename(&access, &rotated).unwrap();
    hup(child.id());
    eventually("a new access log file after SIGHUP", || access.exists()).await;
    let ranged = get_range(&client, &file, &token, "bytes=0-9").await;
    assert_eq!(ranged.len(), 10);
    // The last lines are written out at exit (the test fails without that write: the
    // second's tick seldom comes between the request and the exit).
    term(&child);
    exited(&mut child, Instant::now()).await;
    assert_eq!(statuses(&rotated), [200, 403]);
    assert_eq!(statuses(&access), [206]);
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        !said.contains("\"target\":\"access\""),
        "access lines on stderr: {said}"
    );
    stack.shutdown().await;
}

/// The slice files under each of `disks`.
fn slices_on(disks: &[PathBuf]) -> Vec<usize> {
    disks
        .iter()
        .map(|disk| {
            std::fs::read_dir(disk)
                .map(|files| {
                    files
                        .flatten()
                        .filter_map(|file| std::fs::read_dir(file.path()).ok())
                        .map(|slices| {
                            slices
                                .flatten()
                                .filter(|s| {
                                    s.file_name()
                                        .to_str()
                                        .is_some_and(|n| n.parse::<u32>().is_ok())
                                })
                                .count()
                        })
                        .sum()
                })
                .unwrap_or(0)
        })
        .collect()
}

/// An edge given a disk tier per device (`--disk DIR:GIB`, twice) spreads its files over
/// both, serves them from disk after a restart, and counts both disks in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_two_disks_spreads_files_over_them_and_serves_them_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path()).await;
    let client = stack.client().unwrap();
    // Each file's disk hangs on the (temporary) directories' names: with 20 files, both
    // get at least one but once in about 500,000 runs.
    let mut files = Vec::new();
    for n in 0..20 {
        let data = bytes(300 + n, 300 * 1024);
        files.push((put(&stack, dir.path(), data.clone()).await, data));
    }
    let disks = [edge_dir.path().join("nvme0"), edge_dir.path().join("nvme1")];
    let state = edge_dir.path().join("state");
    let start = || {
        let mut command = edge_command_with_disks(dir.path(), &state, "127.0.0.1:0");
        for disk in &disks {
            command.arg("--disk").arg(format!("{}:1", disk.display()));
        }
        Reaped(command.spawn().unwrap())
    };
    let mut child = start();
    let about = edge_started(&mut child, &state).await;
    for (id, data) in &files {
        let url = format!("{}/a/{id}", about["edge"].as_str().unwrap());
        let (status, body) = get(&client, &url, &token(dir.path(), id)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body == *data, "the edge served other bytes");
    }
    // Two slices a file, written in the background.
    eventually("every slice on a disk", || {
        slices_on(&disks).iter().sum::<usize>() == 40
    })
    .await;
    let spread = slices_on(&disks);
    assert!(
        spread.iter().all(|&n| n >= 2),
        "one disk took every file: {spread:?}"
    );
    assert!(
        !state.join("cache").exists(),
        "--disk replaces the directory under --data"
    );
    term(&child);
    exited(&mut child, Instant::now()).await;

    std::fs::remove_file(state.join("edge.json")).unwrap();
    let mut child = start();
    let about = edge_started(&mut child, &state).await;
    for (id, data) in &files {
        let url = format!("{}/a/{id}", about["edge"].as_str().unwrap());
        let (status, headers, body) = get_headed(&client, &url, &token(dir.path(), id), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body == *data, "the restarted edge served other bytes");
        assert_eq!(headers["cache-status"], "cadenza; hit; detail=disk");
    }
    let metrics = format!("{}/metrics", about["edge_admin"].as_str().unwrap());
    let (_, text) = get(&client, &metrics, about["admin_token"].as_str().unwrap()).await;
    let text = String::from_utf8_lossy(&text);
    for line in [
        "cadenza_edge_disks 2",
        "cadenza_edge_disks_in_service 2",
        "cadenza_edge_disk_slices 40",
        "cadenza_edge_disk_hits_total 40",
        "cadenza_edge_disk_read_errors_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in /metrics");
    }
    // The same in the admin stats.
    let stats = format!("{}/admin/v1/stats", about["edge_admin"].as_str().unwrap());
    let (_, stats) = get(&client, &stats, about["admin_token"].as_str().unwrap()).await;
    let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    let listed: Vec<(String, bool)> = stats["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dir"].as_str().unwrap().to_owned(),
                d["in_service"] == true,
            )
        })
        .collect();
    let want: Vec<(String, bool)> = disks
        .iter()
        .map(|d| (d.display().to_string(), true))
        .collect();
    assert_eq!(listed, want, "{stats:#}");
    assert_eq!(stats["disk_read_errors"], 0);
    // Each disk by its directory: in service, and the bytes of the slices it holds.
    for (disk, slices) in disks.iter().zip(&spread) {
        let up = format!(
            "cadenza_edge_disk_dir_in_service{{dir=\"{}\"}} 1",
            disk.display()
        );
        assert!(text.lines().any(|l| l == up), "no {up:?} in /metrics");
        let held = format!("cadenza_edge_disk_dir_bytes{{dir=\"{}\"}} ", disk.display());
        let bytes: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(held.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {held:?} in /metrics"));
        assert!(
            bytes >= *slices as u64 * 40 * 1024,
            "{} holds {slices} slices in {bytes} bytes",
            disk.display()
        );
    }
    term(&child);
    exited(&mut child, Instant::now()).await;
    stack.shutdown().await;
}

/// An edge with a cleartext listener (so its memory tier keeps slices in memory files, for
/// `sendfile`), set up further by `configure`; its URL is the cleartext listener's.
async fn cleartext_edge(
    join: &JoinInfo,
    configure: impl FnOnce(&mut EdgeNodeConfig),
) -> RegionEdge {
    let mut config = EdgeNodeConfig::joining(join);
    // Few enough connections that this machine's descriptor limit leaves room for slices.
    config.limits.max_connections = 1000;
    configure(&mut config);
    let cleartext = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", cleartext.local_addr().unwrap());
    let (trigger, shutdown) = Shutdown::new();
    let listeners = EdgeListeners {
        main: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        cleartext: Some(cleartext),
        udp: None,
    };
    let node = edge_node::start(config, listeners, shutdown).await.unwrap();
    RegionEdge { url, node, trigger }
}

/// A slice fetched from the origin goes into a memory file (for sendfile) at once; one read
/// back from disk only once twice as many bytes as it holds are served from memory (a memory
/// tier far smaller than its disk would otherwise fill and punch memory files for slices that
/// leave at once, or that one player reads through once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_from_disk_goes_into_a_memory_file_once_it_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let disk = tempfile::tempdir().unwrap();
    let (stack, data, id) = stack_with_file(dir.path(), 41, 600_000).await;
    let join = join_info(dir.path()).unwrap();
    let mapped = |b: &bytes::Bytes| cadenza_common::mapped::file_of(b).is_some();

    let with_disk = |c: &mut EdgeNodeConfig| c.disk = vec![(disk.path().to_path_buf(), 1 << 30)];
    let edge = cleartext_edge(&join, with_disk).await;
    let cache = edge.node.edge.cache().clone();
    let fetched = cache.slice(&id, 0).await.unwrap();
    assert!(fetched[..] == data[..fetched.len()]);
    assert!(
        mapped(&fetched),
        "a slice from the origin is in a memory file"
    );
    drop(fetched);
    eventually_async(|| async { cache.disk_usage().await.map(|u| u.1) == Some(1) }).await;
    drop(cache);
    edge.stop().await;

    let edge = cleartext_edge(&join, with_disk).await;
    let cache = edge.node.edge.cache().clone();
    let first = cache.slice(&id, 0).await.unwrap();
    assert!(first[..] == data[..first.len()]);
    assert!(!mapped(&first), "a slice from disk waits to be read again");
    let len = first.len();
    let part = |skip: usize, take: usize| cadenza_edge::SlicePart {
        index: 0,
        skip,
        take,
    };
    let half = cache.part(&id, part(0, len / 2), true).await.unwrap();
    assert!(half[..] == data[..len / 2]);
    assert!(
        !mapped(&half),
        "half of it served from memory: not worth a memory file yet"
    );
    let rest = cache
        .part(&id, part(len / 2, len - len / 2), true)
        .await
        .unwrap();
    assert!(rest[..] == data[len / 2..len]);
    assert!(
        !mapped(&rest),
        "one pass over it from memory (a player's): not worth a memory file either"
    );
    let again = cache.slice(&id, 0).await.unwrap();
    assert!(again[..] == data[..len]);
    assert!(
        mapped(&again),
        "twice its length served from memory, it goes into a memory file"
    );
    let third = cache.slice(&id, 0).await.unwrap();
    assert!(mapped(&third));
    assert_eq!(cache.metrics().disk_hits.get(), 1);
    drop(cache);
    edge.stop().await;
    stack.shutdown().await;
}

/// Slice 1 is other bytes of a file at another slice size: an edge restarted on its disk
/// directory with another `--slice-kib` must not serve what the directory holds as its own
/// slices (it did, until the directory said its slice size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_at_another_slice_size_serves_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = tempfile::tempdir().unwrap();
    let (stack, data, id) = stack_with_file(dir.path(), 43, 600_000).await;
    let join = join_info(dir.path()).unwrap();
    let at = |kib: u64| {
        let disk = disk.path().to_path_buf();
        move |c: &mut EdgeNodeConfig| {
            c.disk = vec![(disk, 1 << 30)];
            c.slice_bytes = kib * 1024;
        }
    };

    let edge = cleartext_edge(&join, at(256)).await;
    let cache = edge.node.edge.cache().clone();
    for index in 0..3 {
        cache.slice(&id, index).await.unwrap();
    }
    eventually_async(|| async { cache.disk_usage().await.map(|u| u.1) == Some(3) }).await;
    drop(cache);
    edge.stop().await;

    // Slice 1 is bytes 262,144.. at 256 KiB, 524,288.. at 512 KiB.
    let edge = cleartext_edge(&join, at(512)).await;
    let cache = edge.node.edge.cache().clone();
    let second = cache.slice(&id, 1).await.unwrap();
    assert!(second[..] == data[512 * 1024..], "other bytes served");
    let first = cache.slice(&id, 0).await.unwrap();
    assert!(first[..] == data[..512 * 1024], "other bytes served");
    assert_eq!(cache.metrics().disk_hits.get(), 0);
    drop(cache);
    edge.stop().await;
    stack.shutdown().await;
}

/// Waits (at most 10 s) until `f` says so.
async fn eventually_async<F: std::future::Future<Output = bool>>(f: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "never came true");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
