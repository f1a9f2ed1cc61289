//! TLS served by `http::lean_tls` (rustls's unbuffered API), spoken to by curl, a client not
//! written here: TLS 1.2 and 1.3, HTTP/1.1 (Cadenza's own loop for a body-less handler,
//! hyper for one that reads bodies) and HTTP/2, large bodies both ways, and several requests
//! on one kept-alive connection; and a returning client resumes its session with a ticket.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "../../tests/support/peers.rs"]
mod peers;
mod support;

use std::process::Command;
use std::sync::Arc;

use cadenza_common::http::{
    Body, ConnInfo, Handler, ServerLimits, ShutdownTrigger, full, read_body,
};
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;

/// `len` bytes that differ from position to position, so a misplaced record shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// `/bytes/N` answers N pattern bytes.
fn answer(path: &str) -> Response<Body> {
    let len = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Response::new(full(pattern(len)))
}

struct Lean;

impl Handler for Lean {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        answer(req.uri().path())
    }

    const BODYLESS: bool = true;

    async fn handle_parts(self: Arc<Self>, req: Parts, _conn: ConnInfo) -> Response<Body> {
        answer(req.uri.path())
    }
}

/// Reads request bodies, so HTTP/1.1 goes through hyper; a POST is answered with its body's
/// length and byte sum.
struct Reading;

impl Handler for Reading {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        if req.method() == http::Method::POST {
            let body = read_body(req.into_body(), 64 << 20).await.unwrap();
            let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
            return Response::new(full(format!("{} {sum}", body.len())));
        }
        answer(req.uri().path())
    }
}

struct Server {
    port: u16,
    ca: tempfile::NamedTempFile,
    _stop: ShutdownTrigger,
}

async fn start<H: Handler>(handler: H) -> Server {
    let server = support::start(handler, ServerLimits::default(), true).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), server.cert.unwrap()).unwrap();
    Server {
        port: server.addr.port(),
        ca,
        _stop: server.stop,
    }
}

/// Whether curl is here (`peers::skip_or_fail` says so when it is not).
fn have_curl() -> bool {
    let found = Command::new("curl").arg("--version").output().is_ok();
    if !found {
        peers::skip_or_fail("curl");
    }
    found
}

/// Runs curl with `args` against the server, off the runtime's threads.
async fn curl(server: &Server, args: Vec<String>) -> std::process::Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "30", "--cacert"])
        .arg(server.ca.path())
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", server.port)])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn url(server: &Server, path: &str) -> String {
    format!("https://localhost:{}{path}", server.port)
}

/// curl's lowest and highest TLS version, each pair pinning one.
const VERSIONS: [[&str; 3]; 2] = [
    ["--tlsv1.2", "--tls-max", "1.2"],
    ["--tlsv1.3", "--tls-max", "1.3"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_large_bodies_over_every_tls_version_and_protocol() {
    if !have_curl() {
        return;
    }
    let lean = start(Lean).await;
    let reading = start(Reading).await;
    for server in [&lean, &reading] {
        for version in VERSIONS {
            let min = version[0];
            for proto in ["--http1.1", "--http2"] {
                // Three requests on one connection: 5 MB, a few bytes, 1 MB.
                let sizes = [5_000_000, 3, 1_000_000];
                let mut args: Vec<String> = version
                    .into_iter()
                    .chain([proto, "-w", "%{num_connects} %{http_version}\\n"])
                    .map(String::from)
                    .collect();
                let dir = tempfile::tempdir().unwrap();
                for (i, size) in sizes.iter().enumerate() {
                    args.push(url(server, &format!("/bytes/{size}")));
                    args.push("-o".into());
                    args.push(dir.path().join(i.to_string()).display().to_string());
                }
                let out = curl(server, args).await;
                let report = String::from_utf8_lossy(&out.stdout);
                let lines: Vec<&str> = report.lines().collect();
                let expected_version = if proto == "--http2" { "2" } else { "1.1" };
                assert_eq!(
                    lines,
                    [
                        format!("1 {expected_version}"),
                        format!("0 {expected_version}"),
                        format!("0 {expected_version}"),
                    ],
                    "{min} {proto}: one connection for all three"
                );
                for (i, size) in sizes.iter().enumerate() {
                    let got = std::fs::read(dir.path().join(i.to_string())).unwrap();
                    assert!(got == pattern(*size), "{min} {proto}: body {i} differs");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uploads_large_bodies_over_tls() {
    if !have_curl() {
        return;
    }
    let server = start(Reading).await;
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload");
    let data = pattern(7_000_001);
    std::fs::write(&upload, &data).unwrap();
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    for version in VERSIONS {
        let min = version[0];
        for proto in ["--http1.1", "--http2"] {
            let args = version
                .into_iter()
                .chain([proto, "--data-binary"])
                .map(String::from)
                .chain([format!("@{}", upload.display()), url(&server, "/upload")])
                .collect();
            let out = curl(&server, args).await;
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{} {sum}", data.len()),
                "{min} {proto}"
            );
        }
    }
}

/// A handshake of `config` with `server`, then as much as brings the server's session tickets
/// in: an HTTP/1.1 answer read to its end, or the server's first HTTP/2 frame. Returns its
/// kind.
async fn handshake(
    server: &support::Server,
    config: Arc<rustls::ClientConfig>,
) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
        // The preface and an empty SETTINGS frame.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let mut settings = [0u8; 9];
        tls.read_exact(&mut settings).await.unwrap();
        assert_eq!(settings[3], 0x4, "the server's first frame is SETTINGS");
    } else {
        tls.write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    kind
}

/// A client resumes its TLS session with a ticket (no certificate, no signature), over
/// HTTP/1.1 (the lean stream) and HTTP/2 (rustls's buffered one), even after more clients
/// than rustls's default session cache holds (256) have come between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_its_session_after_many_others() {
    let server = support::start(Lean, ServerLimits::default(), true).await;
    let base = server.client.clone().unwrap();
    for alpn in [b"http/1.1".as_slice(), b"h2"] {
        let mut config = (*base).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        // Its own session store: what this client has kept.
        config.resumption = rustls::client::Resumption::in_memory_sessions(8);
        let returning = Arc::new(config.clone());
        config.resumption = rustls::client::Resumption::disabled();
        let others = Arc::new(config);
        let name = String::from_utf8_lossy(alpn);
        assert_eq!(
            handshake(&server, returning.clone()).await,
            rustls::HandshakeKind::Full,
            "{name}"
        );
        for _ in 0..300 {
            handshake(&server, others.clone()).await;
        }
        assert_eq!(
            handshake(&server, returning).await,
            rustls::HandshakeKind::Resumed,
            "{name}: the returning client was not resumed"
        );
    }
}

/// Servers sharing session-ticket keys (the edges of a region): a client resumes at one with
/// the ticket another gave it, and at one that has rotated to a new key while keeping the
/// old; at a server with keys of its own it makes a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_one_server_resumes_at_another_sharing_its_keys() {
    use cadenza_common::http::tls::{self, TicketKeys};
    let pem = tls::self_signed(&["localhost"]).unwrap();
    let (old, new) = (vec![3u8; 32], vec![4u8; 48]);
    let config = tls::server_config(&pem).unwrap();
    let sharing = |secrets: &[Vec<u8>]| {
        Some(tls::with_ticket_keys(
            &config,
            TicketKeys::new(secrets).unwrap(),
        ))
    };
    let limits = ServerLimits::default;
    let first = support::start_on(Lean, limits(), &pem, sharing(std::slice::from_ref(&old))).await;
    let second = support::start_on(Lean, limits(), &pem, sharing(std::slice::from_ref(&old))).await;
    let rotated = support::start_on(Lean, limits(), &pem, sharing(&[new, old])).await;
    let apart = support::start_on(Lean, limits(), &pem, Some(config.clone())).await;
    let mut client = (*first.client.clone().unwrap()).clone();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    client.resumption = rustls::client::Resumption::in_memory_sessions(8);
    let client = Arc::new(client);
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(handshake(&first, client.clone()).await, Full);
    assert_eq!(
        handshake(&second, client.clone()).await,
        Resumed,
        "sharing the key"
    );
    assert_eq!(
        handshake(&rotated, client.clone()).await,
        Resumed,
        "keeping the old key"
    );
    assert_eq!(handshake(&apart, client).await, Full, "keys of its own");
}
