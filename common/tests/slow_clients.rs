//! Clients that stop reading, read a trickle, or stay connected doing nothing, are cut off by
//! the server's send timeout, minimum send rate and idle timeout, while a client that reads
//! gets every byte; connections past the limit are closed at accept, unless an idle one can
//! make room.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cadenza_common::http::{Body, ConnInfo, Handler, MinRate, ServerLimits, ShutdownTrigger, full};
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BIG: usize = 64 * 1024 * 1024;

/// Served through hyper, or with `LEAN` through Cadenza's own HTTP/1.1 loop: both must hold
/// the same limits.
struct Big<const LEAN: bool>;

fn answer(path: &str) -> Response<Body> {
    let len = if path == "/small" { 10 } else { BIG };
    Response::new(full(vec![7u8; len]))
}

impl<const LEAN: bool> Handler for Big<LEAN> {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        answer(req.uri().path())
    }

    const BODYLESS: bool = LEAN;

    async fn handle_parts(self: Arc<Self>, req: Parts, _conn: ConnInfo) -> Response<Body> {
        answer(req.uri.path())
    }
}

async fn server(
    send: Duration,
    idle: Duration,
    lean: bool,
) -> (std::net::SocketAddr, ShutdownTrigger) {
    let limits = ServerLimits {
        send_timeout: send,
        idle_timeout: idle,
        ..ServerLimits::default()
    };
    serve(limits, lean).await
}

/// `Big` on its own HTTP/1.1 loop (`lean`) or through hyper.
async fn serve(limits: ServerLimits, lean: bool) -> (std::net::SocketAddr, ShutdownTrigger) {
    let server = serve_counted(limits, lean).await;
    (server.addr, server.stop)
}

async fn serve_counted(limits: ServerLimits, lean: bool) -> support::Server {
    if lean {
        support::start(Big::<true>, limits, false).await
    } else {
        support::start(Big::<false>, limits, false).await
    }
}

/// Reads until EOF or an error, bounded in time; returns the bytes read.
async fn drain(stream: &mut TcpStream, within: Duration) -> usize {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the connection was still open after {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_one_that_reads_is_not() {
    for lean in [false, true] {
        stops_reading(lean).await;
    }
}

async fn stops_reading(lean: bool) {
    let (addr, trigger) = server(Duration::from_millis(500), Duration::from_secs(30), lean).await;
    let request = b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    // Reads everything promptly: the whole body arrives.
    let mut reader = TcpStream::connect(addr).await.unwrap();
    reader.write_all(request).await.unwrap();
    let got = drain(&mut reader, Duration::from_secs(30)).await;
    assert!(got > BIG, "a reading client got only {got} bytes");

    // Asks, then reads nothing for 2 s: the server gives up on it after 0.5 s of stalled
    // writes, so what is left to read is only what the socket buffers held.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(request).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = drain(&mut stalled, Duration::from_secs(10)).await;
    assert!(
        got < BIG / 2,
        "a client that stopped reading still got {got} bytes"
    );
    trigger.trigger();
}

/// Reads `chunk` bytes every `every` for `within`, then reads the rest as fast as it can;
/// returns the bytes read in all. A server that cut the connection off sent only what the
/// socket buffers held by then.
async fn trickle_then_drain(
    stream: &mut TcpStream,
    chunk: usize,
    every: Duration,
    within: Duration,
) -> usize {
    let mut buf = vec![0u8; chunk];
    let mut total = 0;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("nothing to read for 5 s"),
        }
        tokio::time::sleep(every).await;
    }
    total + drain(stream, Duration::from_secs(30)).await
}

/// A socket with a small receive buffer, so the reader's pace reaches the server quickly.
async fn small_window(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_reader_is_cut_off_below_the_minimum_rate_and_kept_above_it() {
    for lean in [false, true] {
        trickling(lean).await;
    }
}

async fn trickling(lean: bool) {
    // Minimum 64 KiB/s over 1 s; the send timeout (30 s) never fires for either reader,
    // because both take bytes every 50 ms.
    let (addr, trigger) = serve(
        ServerLimits {
            min_send_rate: MinRate {
                bytes_per_sec: 64 * 1024,
                window: Duration::from_secs(1),
            },
            ..ServerLimits::default()
        },
        lean,
    )
    .await;
    let request = b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    // 1 KiB per 50 ms is 20 KiB/s for 4 s: cut off, so the fast reading after it finds
    // only what the socket buffers held.
    let mut slow = small_window(addr).await;
    slow.write_all(request).await.unwrap();
    let ms = Duration::from_millis;
    let got = trickle_then_drain(&mut slow, 1024, ms(50), Duration::from_secs(4)).await;
    assert!(got < BIG / 2, "a 20 KiB/s reader still got {got} bytes");

    // 16 KiB per 50 ms is about 320 KiB/s: served to the end.
    let mut fast_enough = small_window(addr).await;
    fast_enough.write_all(request).await.unwrap();
    let got = trickle_then_drain(&mut fast_enough, 16 * 1024, ms(50), Duration::from_secs(4)).await;
    assert!(got > BIG, "a reader above the minimum got only {got} bytes");
    trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    for lean in [false, true] {
        idle(lean).await;
    }
}

async fn idle(lean: bool) {
    let (addr, trigger) = server(Duration::from_secs(30), Duration::from_millis(700), lean).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // The answer arrives, then the connection sits idle until the server closes it.
    let got = drain(&mut client, Duration::from_secs(10)).await;
    assert!(got > 10, "no response");
    let open_for = started.elapsed();
    assert!(
        open_for >= Duration::from_millis(600) && open_for < Duration::from_secs(5),
        "closed after {open_for:?}"
    );
    trigger.trigger();
}

/// Connections through hyper (handlers that read bodies) are not asked to make room: past the
/// cap a new one is closed at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_accept() {
    let limits = ServerLimits {
        max_connections: 2,
        ..ServerLimits::default()
    };
    let server = serve_counted(limits, false).await;
    let (addr, trigger, slots) = (server.addr, server.stop, server.connections);
    let ask = b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(answered(&mut first, ask).await.is_some());
    assert!(answered(&mut second, ask).await.is_some());
    // Both slots are held by open keep-alive connections: a third is closed unanswered.
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert_eq!(answered(&mut third, ask).await, None);
    assert_eq!((slots.count(), slots.refused()), (2, 1));
    // A slot frees when a connection ends, and the next client is served.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = TcpStream::connect(addr).await.unwrap();
        if answered(&mut next, ask).await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trigger.trigger();
}

/// An answered request on a kept-alive connection, or None when the server hung up.
async fn answered<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, ask: &[u8]) -> Option<usize> {
    stream.write_all(ask).await.ok()?;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(n),
        Ok(_) => None,
        Err(_) => panic!("no answer and no close within 5 s"),
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// A connection to `server`, over TLS (HTTP/1.1) when it speaks TLS; `None` when it is closed
/// before the handshake ends.
async fn connect(server: &support::Server) -> Option<Box<dyn Stream>> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let Some(client) = &server.client else {
        return Some(Box::new(tcp));
    };
    let mut config = (**client).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    Some(Box::new(tls))
}

/// Reads an answer's status line (and no more), so the server is known to be answering.
async fn answer_began(s: &mut Box<dyn Stream>) {
    let mut line = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut line))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    assert_eq!(&line, b"HTTP/1.1 200");
}

/// At the cap, Cadenza's own HTTP/1.1 loop (in the clear and over TLS) gives a new client the
/// slot of the kept-alive connection idle longest, as nginx does: the newcomer is answered
/// at once, the idle one is closed, a busy one and a newer idle one are not. With every
/// connection busy, the next is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_connection_idle_longest_makes_room() {
    for tls in [false, true] {
        makes_room(tls).await;
    }
}

async fn makes_room(tls: bool) {
    let limits = ServerLimits {
        max_connections: 3,
        ..ServerLimits::default()
    };
    let server = support::start(Big::<true>, limits, tls).await;
    let slots = server.connections.clone();
    let small = b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n";
    let big = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    // Idle longest; the client neither reads nor closes, so a server that lingered on its
    // close (waiting for the client's end) would hold the slot past the newcomer's wait.
    let mut oldest = connect(&server).await.unwrap();
    assert!(answered(&mut oldest, small).await.is_some());
    // Busy: a 64 MiB answer it does not read (past its status line, which shows the server
    // has taken the request).
    let mut busy = connect(&server).await.unwrap();
    busy.write_all(big).await.unwrap();
    answer_began(&mut busy).await;
    let mut newer = connect(&server).await.unwrap();
    assert!(answered(&mut newer, small).await.is_some());
    assert_eq!(slots.count(), 3);

    let asked = Instant::now();
    let mut newcomer = connect(&server).await.expect("refused at the cap");
    assert!(answered(&mut newcomer, small).await.is_some());
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_millis(900),
        "answered after {waited:?}"
    );
    let mut end = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), oldest.read(&mut end)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the idle connection stayed open: {read:?}"
    );
    assert!(
        answered(&mut newer, small).await.is_some(),
        "the newer idle one was closed"
    );
    assert_eq!((slots.reclaimed(), slots.refused()), (1, 0));

    // Now all three are busy: nobody gives way, and the next client is turned away.
    newer.write_all(big).await.unwrap();
    newcomer.write_all(big).await.unwrap();
    answer_began(&mut newer).await;
    answer_began(&mut newcomer).await;
    let last = connect(&server).await;
    if let Some(mut last) = last {
        assert_eq!(answered(&mut last, small).await, None);
    }
    assert_eq!((slots.reclaimed(), slots.refused()), (1, 1));
    drop((busy, newer, newcomer));
    server.stop.trigger();
}
