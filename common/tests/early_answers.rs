//! A server that answers before it has read a request's body (a refused upload: a bad key,
//! too large) closes the connection with care: the client, still sending the body, finishes
//! sending it and reads the answer, instead of having its writes fail on a reset. And the
//! care is bounded: a client that goes quiet gives the connection's slot back. A server told to
//! stop waits for such a connection, but not for one whose client never sent a byte.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cadenza_common::http::{Body, ConnInfo, Handler, ServerLimits, full};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use support::Server;

/// Answers 401 to everything without reading the body, as the origin does to a bad key.
struct Refuse;

impl Handler for Refuse {
    async fn handle(self: Arc<Self>, _req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        let mut resp = Response::new(full(b"{\"error\":\"unauthorized\"}".to_vec()));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp
    }
}

/// `Refuse` served over TLS or in the clear; over TLS the client asks for HTTP/1.1 only.
async fn start(tls: bool, limits: ServerLimits) -> Server {
    let mut server = support::start(Refuse, limits, tls).await;
    server.client = server.client.map(|config| {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    });
    server
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(server: &Server) -> Box<dyn Io> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    match &server.client {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .unwrap();
            Box::new(tls)
        }
    }
}

const BODY: usize = 16 << 20;

fn upload_head(len: usize) -> String {
    format!("POST /v1/uploads HTTP/1.1\r\nhost: localhost\r\ncontent-length: {len}\r\n\r\n")
}

/// A client that announced a `len`-byte upload, sent its first 512 KiB and read the start of
/// the refusal; the connection is left open.
async fn refused_mid_upload(server: &Server, len: usize) -> Box<dyn Io> {
    let mut client = connect(server).await;
    client.write_all(upload_head(len).as_bytes()).await.unwrap();
    client.write_all(&vec![1; 512 << 10]).await.unwrap();
    let mut answer = [0u8; 12];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_a_refused_body_finishes_and_reads_the_answer() {
    for tls in [false, true] {
        let over = if tls { "over TLS" } else { "in the clear" };
        let server = start(tls, ServerLimits::default()).await;
        // Like a client library that writes the whole body before it reads (Python's
        // urllib): it only sees the answer if every write succeeds.
        let mut conn = connect(&server).await;
        conn.write_all(upload_head(BODY).as_bytes()).await.unwrap();
        let chunk = vec![0x5a; 64 << 10];
        for sent in (0..BODY).step_by(chunk.len()) {
            if let Err(e) = conn.write_all(&chunk).await {
                panic!("{over}: writing the body failed after {sent} of {BODY} bytes: {e}");
            }
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer));
        // Over TLS the server's close_notify ends the stream; a reset after it is no loss.
        let _ = read.await.expect("the answer ends");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "{over}: the client read {answer:?}"
        );
        assert!(answer.contains("unauthorized"), "{over}: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_client_gives_its_slot_back_after_the_answer() {
    let limits = ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    };
    let server = start(false, limits).await;
    // Sends half of a body, reads the answer, then neither sends nor closes.
    let quiet = refused_mid_upload(&server, 1 << 20).await;
    let answered = Instant::now();

    // While the first connection lingers, it holds the only slot; once it has been quiet
    // long enough, a new client is served.
    let mut served_after = None;
    while answered.elapsed() < Duration::from_secs(10) {
        let mut next = connect(&server).await;
        next.write_all(upload_head(0).as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        let read = tokio::time::timeout(Duration::from_secs(1), next.read_exact(&mut head)).await;
        if let Ok(Ok(_)) = read
            && &head == b"HTTP/1.1 401"
        {
            served_after = Some(answered.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let served_after = served_after.expect("a new client is served once the quiet one is let go");
    assert!(
        served_after >= Duration::from_millis(1500),
        "the lingering connection gave its slot back too soon ({served_after:?}): it was not held"
    );
    drop(quiet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_waits_for_a_connection_still_lingering() {
    let server = start(false, ServerLimits::default()).await;
    let mut client = refused_mid_upload(&server, 64 << 20).await;

    // Told to stop while the client is still sending the refused body: the server lingers
    // on, and so does its drain (a SIGTERM'd process exits when the drain ends, and would
    // reset the client).
    server.stop.trigger();
    let stopped = Instant::now();
    let chunk = vec![3; 16 << 10];
    while stopped.elapsed() < Duration::from_millis(1500) {
        client.write_all(&chunk).await.unwrap();
        assert!(
            !server.task.is_finished(),
            "the drain ended {:?} after the stop while a connection still lingered",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the client goes quiet, the lingering ends and the drain with it.
    assert!(
        server.drained_within(Duration::from_secs(5)).await,
        "the drain did not end once the lingering connection was let go"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_does_not_wait_for_a_client_that_sent_nothing() {
    for tls in [false, true] {
        let over = if tls { "over TLS" } else { "in the clear" };
        let server = start(tls, ServerLimits::default()).await;
        // Connected (a client's pool opening ahead), not a byte sent, not even a ClientHello.
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.stop.trigger();
        assert!(
            server.drained_within(Duration::from_secs(3)).await,
            "{over}: the drain waited for a client that sent nothing"
        );
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), silent.read_to_end(&mut rest));
        assert!(
            matches!(read.await, Ok(Ok(0))),
            "{over}: the silent connection is closed"
        );
    }
}
