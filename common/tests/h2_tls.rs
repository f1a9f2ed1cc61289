//! HTTP/2 over TLS (and in the clear, with prior knowledge), whose writes the server holds
//! back within a poll of the connection and sends together after it: every response still
//! leaves promptly and whole, a client that stops reading or reads a trickle is still cut off,
//! and shutdown still lets a response in flight finish.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "../../tests/support/h2_credit.rs"]
mod h2_credit;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cadenza_common::http::{Body, BoxError, ConnInfo, Handler, MinRate, ServerLimits, full};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use support::Server;

/// `len` bytes that differ from position to position, so a misplaced record shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// `/bytes/N` answers N pattern bytes, `/fill/N` N copies of one byte (cheap to make).
/// `LEAN`: it reads no request body (HTTP/1.1 goes to the server's own loop, which hands a
/// cleartext HTTP/2 preface on); otherwise hyper's auto builder serves the cleartext port.
struct Patterns<const LEAN: bool>;

impl<const LEAN: bool> Handler for Patterns<LEAN> {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        let path = req.uri().path();
        let (make, n): (fn(usize) -> Vec<u8>, _) = if let Some(n) = path.strip_prefix("/bytes/") {
            (pattern, n)
        } else {
            (
                |len| vec![7; len],
                path.strip_prefix("/fill/").unwrap_or("0"),
            )
        };
        if let Some(n) = path.strip_prefix("/chunks/") {
            // N chunks of 16 KiB, each made when asked for, as the edge streams its slices.
            let chunks = (0..n.parse().unwrap_or(0usize))
                .map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![7u8; 16 << 10]))));
            return Response::new(
                StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync(),
            );
        }
        Response::new(full(make(n.parse().unwrap_or(0))))
    }

    const BODYLESS: bool = LEAN;
}

async fn start(limits: ServerLimits) -> Server {
    start_on(limits, true).await
}

async fn start_on(limits: ServerLimits, tls: bool) -> Server {
    support::start(Patterns::<true>, limits, tls).await
}

/// A TLS connection that agreed on h2, from a socket with `recv_buffer` bytes of receive
/// buffer when given.
async fn connect(server: &Server, recv_buffer: Option<u32>) -> TlsStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = socket.connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let config = server.client.clone().expect("a TLS server");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    tls
}

/// hyper's HTTP/2 client on one connection, over TLS or in the clear as the server speaks.
async fn h2_client(server: &Server) -> SendRequest<Empty<Bytes>> {
    if server.client.is_some() {
        h2_on(connect(server, None).await).await
    } else {
        h2_on(TcpStream::connect(server.addr).await.unwrap()).await
    }
}

async fn h2_on<IO>(io: IO) -> SendRequest<Empty<Bytes>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("https://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_leave_promptly_and_whole_on_one_connection() {
    for tls in [true, false] {
        responses_leave_promptly_and_whole(tls).await;
    }
}

async fn responses_leave_promptly_and_whole(tls: bool) {
    let over = if tls { "over TLS" } else { "in the clear" };
    // A long idle timeout: a response whose last bytes stayed held would wait for it.
    let server = start_on(ServerLimits::default(), tls).await;
    let mut client = h2_client(&server).await;
    for size in [3, 5_000_000, 0, 100, 1_000_000, 70_000] {
        let started = Instant::now();
        let exchange = async {
            let response = client.send_request(get(&format!("/bytes/{size}"))).await?;
            response.into_body().collect().await.map(|b| b.to_bytes())
        };
        let body = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .unwrap_or_else(|_| panic!("{size} bytes {over}: no whole answer in 5 s"))
            .unwrap();
        assert_eq!(body.len(), size);
        assert!(
            body == pattern(size),
            "{size} bytes {over}: the body differs"
        );
        if size <= 100 {
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(500),
                "{size} bytes {over} took {took:?}"
            );
        }
    }
    server.stop.trigger();
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Asks for `path` on a raw h2 connection that lets the server send as much as it likes
/// (largest stream and connection windows), so only the reading paces it.
async fn ask_unbounded(io: &mut (impl tokio::io::AsyncWrite + Unpin), path: &str) {
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const HEADERS: u8 = 0x1;
    let mut out = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 2^31 - 1.
    out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(frame(
        WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffff - 65_535u32).to_be_bytes(),
    ));
    // HPACK: :method GET, :scheme https, :authority x, :path literal (no indexing).
    let mut block = vec![0x82, 0x87, 0x01, 0x01, b'x', 0x04];
    block.push(u8::try_from(path.len()).unwrap());
    block.extend_from_slice(path.as_bytes());
    out.extend(frame(HEADERS, 0x4 | 0x1, 1, &block));
    io.write_all(&out).await.unwrap();
}

/// Reads `chunk` bytes every `every` for `within`; the bytes read, or `None` if the server
/// closed meanwhile.
async fn trickle(
    tls: &mut TlsStream<TcpStream>,
    chunk: usize,
    every: Duration,
    within: Duration,
) -> Option<usize> {
    let mut buf = vec![0u8; chunk];
    let mut total = 0;
    let until = Instant::now() + within;
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("nothing to read for 5 s"),
        }
        tokio::time::sleep(every).await;
    }
    Some(total)
}

/// Reads as fast as it can until the server closes or more than `enough` bytes came; the
/// bytes read.
async fn read_up_to(tls: &mut TlsStream<TcpStream>, enough: usize) -> usize {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    while total <= enough {
        match tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("nothing to read for 30 s after {total} bytes"),
        }
    }
    total
}

const BIG: usize = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off() {
    let server = start(ServerLimits {
        send_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    })
    .await;
    // Reads nothing for 2 s: cut off after 0.5 s of stalled writes, so what is left to
    // read is what the buffers on the way held.
    let mut stalled = connect(&server, None).await;
    ask_unbounded(&mut stalled, &format!("/fill/{BIG}")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = read_up_to(&mut stalled, BIG).await;
    assert!(
        got < BIG / 2,
        "a client that stopped reading still got {got} bytes"
    );

    // One that reads gets it all.
    let mut reader = connect(&server, None).await;
    ask_unbounded(&mut reader, &format!("/fill/{BIG}")).await;
    let got = read_up_to(&mut reader, BIG).await;
    assert!(got > BIG, "a reading client got only {got} bytes");
    server.stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_reader_is_cut_off_below_the_minimum_rate_and_kept_above_it() {
    // Minimum 64 KiB/s over 1 s; the send timeout (30 s) never fires for either reader.
    let server = start(ServerLimits {
        min_send_rate: MinRate {
            bytes_per_sec: 64 * 1024,
            window: Duration::from_secs(1),
        },
        ..ServerLimits::default()
    })
    .await;
    let ms = Duration::from_millis;
    // 1 KiB per 50 ms is 20 KiB/s for 4 s: cut off.
    let mut slow = connect(&server, Some(16 * 1024)).await;
    ask_unbounded(&mut slow, &format!("/fill/{BIG}")).await;
    let got = match trickle(&mut slow, 1024, ms(50), Duration::from_secs(4)).await {
        Some(got) => got + read_up_to(&mut slow, BIG - got).await,
        None => 0,
    };
    assert!(got < BIG / 2, "a 20 KiB/s reader still got {got} bytes");

    // 16 KiB per 50 ms is about 320 KiB/s: served to the end.
    let mut fast_enough = connect(&server, Some(16 * 1024)).await;
    ask_unbounded(&mut fast_enough, &format!("/fill/{BIG}")).await;
    let got = trickle(&mut fast_enough, 16 * 1024, ms(50), Duration::from_secs(4))
        .await
        .expect("a reader above the minimum was cut off");
    let got = got + read_up_to(&mut fast_enough, BIG - got).await;
    assert!(got > BIG, "a reader above the minimum got only {got} bytes");
    server.stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_response_in_flight_finish() {
    for tls in [true, false] {
        shutdown_lets_a_response_finish(tls).await;
    }
}

/// The server closes the connection once the response has left, while the client is still
/// reading it and telling the server so (WINDOW_UPDATE): closed with those unread, the socket
/// would reset, and the client lose the response's tail.
async fn shutdown_lets_a_response_finish(tls: bool) {
    let server = start_on(ServerLimits::default(), tls).await;
    let mut client = h2_client(&server).await;
    let size = 20_000_000;
    let response = client
        .send_request(get(&format!("/bytes/{size}")))
        .await
        .unwrap();
    server.stop.trigger();
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(
        body == pattern(size),
        "the body in flight was cut or changed"
    );
    // The server said goodbye: no new stream on this connection, and the listener's task
    // ends once the connection has.
    let refused =
        tokio::time::timeout(Duration::from_secs(5), client.send_request(get("/bytes/1")))
            .await
            .unwrap();
    assert!(refused.is_err(), "a new request was served after shutdown");
    assert!(
        server.drained_within(Duration::from_secs(5)).await,
        "the server did not finish draining"
    );
}

/// At the cap, the HTTP/2 connection idle longest (no stream open) is told to go away and
/// closes at once, and its slot goes to a new client; one whose response is still being read
/// is not, nor a newer idle one. With every connection busy, the next client is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_idle_http2_connection_makes_room() {
    for tls in [true, false] {
        idle_http2_makes_room(tls).await;
    }
}

async fn idle_http2_makes_room(tls: bool) {
    let over = if tls { "over TLS" } else { "in the clear" };
    let limits = ServerLimits {
        max_connections: 3,
        ..ServerLimits::default()
    };
    let server = start_on(limits, tls).await;
    let slots = server.connections.clone();
    async fn fetch(client: &mut SendRequest<Empty<Bytes>>) -> Result<(), hyper::Error> {
        let response = client.send_request(get("/bytes/10")).await?;
        response.into_body().collect().await.map(|_| ())
    }
    // Busy while it holds a 32 MiB response it does not read: flow control stops the server
    // from taking more of the response's chunks.
    async fn hold(client: &mut SendRequest<Empty<Bytes>>) -> Response<Incoming> {
        client.send_request(get("/chunks/2048")).await.unwrap()
    }
    let mut oldest = h2_client(&server).await;
    fetch(&mut oldest).await.unwrap();
    let mut busy = h2_client(&server).await;
    let _held = hold(&mut busy).await;
    let mut newer = h2_client(&server).await;
    fetch(&mut newer).await.unwrap();
    assert_eq!(slots.count(), 3);

    let asked = Instant::now();
    let mut newcomer = h2_client(&server).await;
    fetch(&mut newcomer).await.unwrap();
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_millis(900),
        "{over}: answered after {waited:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !oldest.is_closed() {
        assert!(
            Instant::now() < deadline,
            "{over}: the idle connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!busy.is_closed(), "{over}: the busy connection was closed");
    fetch(&mut newer)
        .await
        .expect("the newer idle connection was closed");
    assert_eq!((slots.reclaimed(), slots.refused()), (1, 0), "{over}");

    // All three busy now: nobody gives way, and the next client is turned away.
    let _held = (hold(&mut newer).await, hold(&mut newcomer).await);
    let turned_away = async {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let Some(config) = server.client.clone() else {
            return fetch(&mut h2_on(tcp).await).await.is_err();
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(tls) => fetch(&mut h2_on(tls).await).await.is_err(),
            Err(_) => true,
        }
    };
    let turned_away = tokio::time::timeout(Duration::from_secs(5), turned_away).await;
    assert!(turned_away.unwrap(), "{over}: a fourth client was served");
    assert_eq!((slots.reclaimed(), slots.refused()), (1, 1), "{over}");
    server.stop.trigger();
}

/// An HTTP/2 connection with no request open for the keep-alive time is told to go away,
/// however often its client PINGs; one asking every so often, and one with a response open,
/// stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_with_no_request_for_the_keepalive_time_goes_pings_or_not() {
    let limits = ServerLimits {
        idle_timeout: Duration::from_millis(800),
        ..ServerLimits::default()
    };
    let server = start(limits).await;
    let pinging = || async {
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(connect(&server, None).await))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    };
    async fn fetch(client: &mut SendRequest<Empty<Bytes>>) -> Result<(), hyper::Error> {
        let response = client.send_request(get("/bytes/10")).await?;
        response.into_body().collect().await.map(|_| ())
    }
    let (mut idle, mut busy, mut asking) = (pinging().await, pinging().await, pinging().await);
    fetch(&mut idle).await.unwrap();
    // A 32 MiB response left unread holds its stream open.
    let _held = busy.send_request(get("/chunks/2048")).await.unwrap();
    let began = Instant::now();
    let asker = tokio::spawn(async move {
        for _ in 0..10 {
            fetch(&mut asking).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        asking
    });
    while !idle.is_closed() {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "a connection with no request stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        began.elapsed() >= Duration::from_millis(600),
        "{:?}",
        began.elapsed()
    );
    let asking = asker.await.unwrap();
    assert!(!asking.is_closed(), "a connection in use was closed");
    assert!(
        !busy.is_closed(),
        "a connection with a response open was closed"
    );
    assert_eq!(server.connections.kept_alive_out(), 1);
    server.stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_still_writing_after_the_goodbye_reads_the_whole_response() {
    let size = 8 * 1024 * 1024;
    // The lean handler's port and one whose handler reads bodies (the origin's, the control
    // plane's), where HTTP/2 in the clear is told from HTTP/1.1 before hyper sees it.
    for lean in [true, false] {
        let server = if lean {
            start_on(ServerLimits::default(), false).await
        } else {
            support::start(Patterns::<false>, ServerLimits::default(), false).await
        };
        let (mut tcp, mut frames) = goodbye_mid_response(&server, 16 * 1024, size).await;
        // The server closes once the response is all in its socket; the client goes on
        // reading the rest and, as clients do, says how much it read (WINDOW_UPDATE) and
        // answers the server's PINGs.
        read_frames(&mut tcp, &mut frames, usize::MAX, true).await;
        assert_eq!(
            frames.data, size,
            "lean {lean}: the response's bytes that came"
        );
        drop(tcp);
        assert!(
            server.drained_within(Duration::from_secs(5)).await,
            "the server did not finish draining"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_quiet_after_the_goodbye_still_reads_the_whole_response() {
    // A client with large windows (a browser's) that reads most of a response quickly, then
    // pauses for 3 s, writing nothing after the goodbye (whose PING it answered early on),
    // then writes once (a WINDOW_UPDATE) and reads the rest. The server's connection ends
    // about when the pause starts, with the tail still in its socket: if lingering counted
    // the pause as quiet and closed, the late write would reset the connection and lose the
    // tail. (Without the check of the socket's send queue this failed 1 run in 3; how much
    // is still queued when the server goes quiet depends on the kernel's buffer sizing.)
    let (fast, tail) = (8 << 20, 512 << 10);
    let size = fast + tail;
    let server = start_on(ServerLimits::default(), false).await;
    let (mut tcp, mut frames) = goodbye_mid_response(&server, 256 * 1024, size).await;
    read_frames(&mut tcp, &mut frames, fast, false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let update = frame(0x8, 0, 0, &1024u32.to_be_bytes());
    if let Err(e) = tcp.write_all(&update).await {
        panic!("a write failed ({e}) after {} of {size} bytes", frames.data);
    }
    read_frames(&mut tcp, &mut frames, usize::MAX, false).await;
    assert_eq!(frames.data, size, "the response's bytes that came");
}

/// A raw HTTP/2 client of cleartext `server` (so the client reads the very bytes the server's
/// socket holds) with `recv_buffer` bytes of receive buffer and unbounded windows that asked
/// for `size` bytes, once the response is under way and the server has been told to shut
/// down (a goodbye during the handshake would end the connection at once: hyper serves
/// nothing the client sent).
async fn goodbye_mid_response(
    server: &Server,
    recv_buffer: u32,
    size: usize,
) -> (TcpStream, Frames) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(recv_buffer).unwrap();
    let mut tcp = socket.connect(server.addr).await.unwrap();
    ask_unbounded(&mut tcp, &format!("/fill/{size}")).await;
    let mut frames = Frames::default();
    read_frames(&mut tcp, &mut frames, 1, false).await;
    server.stop.trigger();
    (tcp, frames)
}

/// Reads a raw HTTP/2 client's frames until `until` DATA bytes have come or the server
/// closes, answering PINGs and, with `update`, saying after every read how much it read
/// (WINDOW_UPDATE). Panics on an error, or on 10 s without a byte.
async fn read_frames(tcp: &mut TcpStream, frames: &mut Frames, until: usize, update: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    while frames.data < until {
        let n = match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("{e} after {} bytes", frames.data),
            Err(_) => panic!("nothing to read for 10 s after {} bytes", frames.data),
        };
        let mut reply = frames.take(&buf[..n]);
        if update {
            let read = u32::try_from(n).unwrap();
            reply.extend(frame(0x8, 0, 0, &read.to_be_bytes()));
        }
        if let Err(e) = tcp.write_all(&reply).await {
            panic!("a write failed ({e}) after {} bytes", frames.data);
        }
    }
}

/// The frames a raw client has read: DATA payload bytes counted, PINGs answered.
#[derive(Default)]
struct Frames {
    pending: Vec<u8>,
    data: usize,
}

impl Frames {
    /// Takes bytes read; returns the PING acks to send.
    fn take(&mut self, read: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(read);
        let mut reply = Vec::new();
        let mut at = 0;
        while self.pending.len() - at >= 9 {
            let head = &self.pending[at..at + 9];
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            if self.pending.len() - at < 9 + len {
                break;
            }
            let payload = &self.pending[at + 9..at + 9 + len];
            match (head[3], head[4] & 0x1) {
                (0x0, _) => self.data += len,
                (0x6, 0) => reply.extend(frame(0x6, 0x1, 0, payload)),
                _ => {}
            }
            at += 9 + len;
        }
        self.pending.drain(..at);
        reply
    }
}

/// A server with `h2_receive_window` lets an HTTP/2 client send no more than that ahead of
/// its reading, on a stream and on the connection: a request body behind a response in
/// progress (the handler reads none) waits in that much memory, not hyper's 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_request_body_is_held_to_the_receive_window() {
    for (window, tls) in [
        (Some(64 * 1024), true),
        (Some(64 * 1024), false),
        (None, true),
    ] {
        let server = start_on(
            ServerLimits {
                h2_receive_window: window,
                ..ServerLimits::default()
            },
            tls,
        )
        .await;
        let granted = body_credit(&server).await;
        server.stop.trigger();
        match window {
            // 65,535: the connection's window stays HTTP/2's initial one.
            Some(w) => assert!(
                (60_000..=w as usize).contains(&granted),
                "tls {tls}: {granted}"
            ),
            // hyper's 1 MiB, of which h2's client lets itself buffer 400 KiB.
            None => assert!(granted >= 400 << 10, "hyper's default: {granted}"),
        }
    }
}

/// How much request body an h2 client may send on a stream whose response (endless chunks)
/// it does not read, once the server's SETTINGS are in: the credit it is given, asking for
/// 4 MiB, after a second of no change.
async fn body_credit(server: &Server) -> usize {
    async fn credit<IO>(io: IO) -> usize
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (client, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        // A first exchange, so the server's SETTINGS and window updates have come.
        let (first, _) = client.send_request(get_h2("/bytes/10"), true).unwrap();
        first.await.unwrap().into_body().data().await;
        let (_response, mut body) = client
            .send_request(get_h2("/chunks/100000"), false)
            .unwrap();
        h2_credit::settled(&mut body).await
    }
    if server.client.is_some() {
        credit(connect(server, None).await).await
    } else {
        credit(TcpStream::connect(server.addr).await.unwrap()).await
    }
}

fn get_h2(path: &str) -> Request<()> {
    Request::get(format!("https://localhost{path}"))
        .body(())
        .unwrap()
}
