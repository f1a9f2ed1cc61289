//! Cadenza's own HTTP/1.1 loop (`http::h1`), spoken to byte by byte: pipelining, HTTP/1.0,
//! HEAD, chunked bodies, refused heads and bodies, the header timeout, HTTP/2 with prior
//! knowledge on the same cleartext port, and shutdown of an idle connection.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cadenza_common::http::h1::{HeadError, parse_head};
use cadenza_common::http::{
    Body, BoxError, ConnInfo, Handler, ServerLimits, ShutdownTrigger, full,
};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Lean;

fn answer(req: &Parts) -> Response<Body> {
    match req.uri.path() {
        // A body of unknown length: chunked over HTTP/1.1.
        "/stream" => {
            let chunks = ["one,", "two,", "three"]
                .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c.as_bytes()))));
            Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync())
        }
        // Chunks in memory files (sent by sendfile) around one on the heap (written).
        "/mapped" => {
            let (data, body) = mapped_body();
            let chunks = body.map(|c| Ok::<_, BoxError>(Frame::data(c)));
            let mut resp =
                Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync());
            resp.headers_mut()
                .insert(http::header::CONTENT_LENGTH, data.len().into());
            resp
        }
        path => {
            let mut resp = Response::new(full(format!("{} {path}", req.method)));
            resp.headers_mut()
                .insert("x-version", format!("{:?}", req.version).parse().unwrap());
            resp
        }
    }
}

impl Handler for Lean {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        let (parts, _) = req.into_parts();
        let mut resp = answer(&parts);
        resp.headers_mut()
            .insert("x-served-by", "hyper".parse().unwrap());
        resp
    }

    const BODYLESS: bool = true;

    async fn handle_parts(self: Arc<Self>, req: Parts, _conn: ConnInfo) -> Response<Body> {
        answer(&req)
    }
}

/// The bytes `/mapped` answers with, and its chunks: a slice of one memory file, 100 heap
/// bytes, the end of one piece of an object's memory file and the start of the next piece
/// (5,000 bytes: too few for a `sendfile` of their own), and a second memory file.
fn mapped_body() -> (Vec<u8>, [Bytes; 5]) {
    cadenza_common::mapped::set_budget(1024);
    let pattern = |len: usize, seed: u32| -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
            .collect()
    };
    let first = cadenza_common::mapped::copy(&pattern(300_001, 1)).unwrap();
    let first = first.slice(1000..);
    let heap = Bytes::from(pattern(100, 2));
    let object = pattern(3 * 65_536, 4);
    let shelves = cadenza_common::mapped::Shelves::default();
    let len = object.len() as u64;
    let piece = shelves.put(&1, len, 0, &object[..65_536]).unwrap();
    let next = shelves
        .put(&1, len, 65_536, &object[65_536..131_072])
        .unwrap();
    let (piece, next) = (piece.slice(1000..), next.slice(..5000));
    let second = cadenza_common::mapped::copy(&pattern(20_000, 3)).unwrap();
    let data = [&first[..], &heap[..], &piece[..], &next[..], &second[..]].concat();
    (data, [first, heap, piece, next, second])
}

async fn server(limits: ServerLimits) -> (std::net::SocketAddr, ShutdownTrigger) {
    let server = support::start(Lean, limits, false).await;
    (server.addr, server.stop)
}

/// Everything the server sends until it closes, bounded in time.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `want` occurrences of `marker` arrived.
async fn until_seen(stream: &mut TcpStream, marker: &str, want: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&out).matches(marker).count() < want {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("no answer in 10 s")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (addr, trigger) = server(ServerLimits::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nHEAD /second HTTP/1.1\r\nHost: x\r\n\r\nGET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let all = until_closed(&mut c).await;
    let first = all.find("GET /first").unwrap();
    let third = all.find("GET /third").unwrap();
    assert!(first < third, "{all}");
    assert_eq!(all.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{all}");
    // HEAD keeps the length the GET would have had, and sends no body.
    assert!(all.contains("content-length: 12\r\n"), "{all}");
    assert!(!all.contains("HEAD /second"), "{all}");
    assert!(all.contains("connection: close\r\n"), "{all}");
    assert!(all.contains("date: "), "{all}");
    assert!(!all.contains("x-served-by"), "{all}");
    trigger.trigger();
}

#[tokio::test]
async fn http_1_0_closes_unless_kept_alive_and_unknown_lengths_are_chunked() {
    let (addr, trigger) = server(ServerLimits::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let all = until_closed(&mut c).await;
    assert!(all.starts_with("HTTP/1.0 200 OK\r\n"), "{all}");
    assert!(all.ends_with("GET /old"), "{all}");

    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let first = until_seen(&mut c, "GET /kept", 1).await;
    assert!(first.contains("connection: keep-alive\r\n"), "{first}");
    c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let chunked = until_seen(&mut c, "0\r\n\r\n", 1).await;
    assert!(
        chunked.contains("transfer-encoding: chunked\r\n"),
        "{chunked}"
    );
    assert!(
        chunked.ends_with("\r\n\r\n4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"),
        "{chunked:?}"
    );
    trigger.trigger();
}

#[tokio::test]
async fn bodies_oversized_heads_and_garbage_are_refused_and_the_connection_closed() {
    let (addr, trigger) = server(ServerLimits {
        max_header_bytes: 4096,
        ..ServerLimits::default()
    })
    .await;
    let cases: [(Vec<u8>, &str); 5] = [
        (
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            "HTTP/1.1 413 ",
        ),
        (
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "HTTP/1.1 413 ",
        ),
        (
            format!(
                "GET /a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(5000)
            )
            .into_bytes(),
            "HTTP/1.1 431 ",
        ),
        (b"GET /a HTTP/1.1\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            "HTTP/1.1 400 ",
        ),
    ];
    for (ask, status) in cases {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&ask).await.unwrap();
        let all = until_closed(&mut c).await;
        assert!(all.starts_with(status), "{status}: {all}");
        assert!(all.contains("application/json"), "{all}");
    }
    trigger.trigger();
}

#[tokio::test]
async fn a_head_that_dawdles_gets_408() {
    let (addr, trigger) = server(ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    })
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    c.write_all(b"GET /slow HTTP/1.1\r\nHo").await.unwrap();
    let all = until_closed(&mut c).await;
    assert!(all.starts_with("HTTP/1.1 408 "), "{all}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    trigger.trigger();
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_handed_to_hyper() {
    let (addr, trigger) = server(ServerLimits::default()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for path in ["/one", "/two"] {
        let req = Request::get(format!("http://x{path}"))
            .body(Empty::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-served-by"], "hyper");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("GET {path}").as_bytes());
    }
    trigger.trigger();
}

#[tokio::test]
async fn shutdown_closes_an_idle_kept_alive_connection() {
    let (addr, trigger) = server(ServerLimits::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    until_seen(&mut c, "GET /a", 1).await;
    trigger.trigger();
    let rest = until_closed(&mut c).await;
    assert_eq!(rest, "");
}

#[test]
fn heads_parse_or_are_refused_with_a_reason() {
    let ok = parse_head(b"GET /a/b?t=1 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\nrest")
        .unwrap()
        .unwrap();
    assert_eq!(ok.parts.uri.path(), "/a/b");
    assert_eq!(ok.parts.uri.query(), Some("t=1"));
    assert_eq!(ok.parts.headers["range"], "bytes=0-1");
    assert_eq!(ok.len, 52);
    assert!(ok.keep_alive);
    assert!(parse_head(b"GET /a HTTP/1.1\r\nHost:").unwrap().is_none());
    let refused = |head: &[u8]| parse_head(head).unwrap_err();
    assert_eq!(
        refused(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        HeadError::Malformed("conflicting content-lengths")
    );
    assert_eq!(
        refused(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n"),
        HeadError::Malformed("bad content-length")
    );
    assert_eq!(
        refused(b"CONNECT elsewhere:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
        HeadError::Malformed("the target must be a path or an absolute URI")
    );
    assert_eq!(
        refused(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
        HeadError::Malformed("the target must be a path or an absolute URI")
    );
    let absolute = parse_head(b"GET http://edge.example/a/b?t=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(absolute.parts.uri.path(), "/a/b");
    assert_eq!(absolute.parts.uri.query(), Some("t=1"));
    let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
    assert_eq!(
        refused(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()),
        HeadError::TooManyHeaders
    );
    assert!(
        parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .is_some_and(|h| !h.keep_alive)
    );
}

/// Every prefix and every one-byte corruption of a valid head parses, waits or is refused:
/// none panics.
#[test]
fn no_corruption_of_a_head_panics() {
    let head = b"GET /a/0123456789abcdef?t=abc.def HTTP/1.1\r\nHost: edge\r\nRange: bytes=0-1,5-\r\nIf-None-Match: \"x\"\r\nContent-Length: 0\r\n\r\n";
    for cut in 0..head.len() {
        let _ = parse_head(&head[..cut]);
    }
    for at in 0..head.len() {
        for byte in [0u8, b'\r', b'\n', b' ', b':', 0x7f, 0xff, b'/', b'0'] {
            let mut bad = head.to_vec();
            bad[at] = byte;
            let _ = parse_head(&bad);
        }
    }
}

#[tokio::test]
async fn memory_file_chunks_go_out_by_sendfile_byte_exact_to_a_slow_reader() {
    let (addr, trigger) = server(ServerLimits::default()).await;
    let before = cadenza_common::http::h1::sent_by_file();
    // A small receive window, so the server's sends fill the socket and wait for room.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket.connect(addr).await.unwrap();
    c.write_all(b"GET /mapped HTTP/1.1\r\nHost: x\r\n\r\nGET /mapped HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    let (data, _) = mapped_body();
    let mut rest = &got[..];
    for _ in 0..2 {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}\r\n", data.len())),
            "{head}"
        );
        assert!(rest[end..].len() >= data.len(), "short body");
        assert!(rest[end..end + data.len()] == data[..], "body bytes differ");
        rest = &rest[end + data.len()..];
    }
    assert!(rest.is_empty(), "{} bytes after the answers", rest.len());
    // Every memory-file chunk of both answers went by sendfile, the 5,000 bytes too, with
    // the piece before them in its file; the heap chunk did not.
    let by_file = cadenza_common::http::h1::sent_by_file() - before;
    assert!(
        by_file >= 2 * (299_001 + 64_536 + 5000 + 20_000),
        "{by_file} bytes by sendfile"
    );
    trigger.trigger();
}
