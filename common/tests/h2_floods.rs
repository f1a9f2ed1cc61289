//! HTTP/2 floods against the shared server, spoken frame by frame on a cleartext (h2c, prior
//! knowledge) connection: rapid reset (CVE-2023-44487), an endless CONTINUATION header
//! (CVE-2024-27316), oversized headers, and more streams than allowed. Each must end with
//! the server refusing or closing, while a well-behaved client on another connection is still
//! answered promptly.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cadenza_common::http::{Body, ConnInfo, Handler, ServerLimits, ShutdownTrigger, full};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Small;

impl Handler for Small {
    async fn handle(self: Arc<Self>, _req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        Response::new(full(vec![7u8; 100]))
    }
}

async fn server() -> (SocketAddr, ShutdownTrigger) {
    let server = support::start(Small, ServerLimits::default(), false).await;
    (server.addr, server.stop)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://x/` from the static table, plus `extra` as one literal header
/// (name `x-pad`) when given.
fn get_block(extra: Option<&[u8]>) -> Vec<u8> {
    // :method GET, :scheme http, :path /, :authority "x" (literal, indexed name 1).
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
    if let Some(value) = extra {
        block.push(0x00); // literal without indexing, new name
        block.push(5);
        block.extend_from_slice(b"x-pad");
        push_length(&mut block, value.len());
        block.extend_from_slice(value);
    }
    block
}

/// An HPACK string length (7-bit prefix, no Huffman).
fn push_length(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(u8::try_from(n).unwrap());
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push(u8::try_from(n % 128).unwrap() | 0x80);
        n /= 128;
    }
    out.push(u8::try_from(n).unwrap());
}

/// What the server did with a flood connection.
#[derive(Debug, Default)]
struct Seen {
    /// The GOAWAY error code, if one came.
    goaway: Option<u32>,
    /// Whether the server closed the connection.
    closed: bool,
    /// HEADERS frames (responses) received.
    responses: usize,
    /// RST_STREAM frames received.
    resets: usize,
}

/// Reads the server's frames until it closes the connection or `within` passes.
async fn watch(mut rd: tokio::net::tcp::OwnedReadHalf, within: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(n)) => n,
            Err(_) => return seen,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            match buf[3] {
                GOAWAY if len >= 8 => {
                    seen.goaway = Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
                }
                HEADERS => seen.responses += 1,
                RST_STREAM => seen.resets += 1,
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
}

/// Opens an h2c connection: preface and empty SETTINGS sent.
async fn open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// Time for one GET over a fresh HTTP/1.1 connection: the server still serves others.
async fn other_client_latency(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("another client waited over 10 s during a flood")
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_bounded_and_others_are_still_served() {
    let (addr, trigger) = server().await;
    let (rd, mut wr) = open(addr).await.into_split();
    let watcher = tokio::spawn(watch(rd, Duration::from_secs(30)));
    // 100,000 requests, each cancelled at once: the concurrency limit never applies, since
    // no stream stays open.
    let block = get_block(None);
    let mut sent = 0u32;
    let started = Instant::now();
    'flood: for batch in 0..1000u32 {
        let mut out = Vec::new();
        for i in 0..100u32 {
            let stream = 2 * (batch * 100 + i) + 1;
            out.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
            out.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
        }
        if wr.write_all(&out).await.is_err() {
            break 'flood;
        }
        sent += 100;
        if batch == 500 {
            let latency = other_client_latency(addr).await;
            assert!(
                latency < Duration::from_secs(1),
                "another client waited {latency:?}"
            );
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    drop(wr);
    let seen = watcher.await.unwrap();
    println!("rapid reset: {sent} cancelled requests sent in {flood_secs:.2} s; server: {seen:?}");
    // Either the server called it abuse, or it answered or reset every stream as it came;
    // it never fell behind holding state for all of them.
    assert!(
        seen.goaway == Some(ENHANCE_YOUR_CALM) || seen.responses + seen.resets > 0,
        "{seen:?}"
    );
    let latency = other_client_latency(addr).await;
    assert!(
        latency < Duration::from_secs(1),
        "after the flood another client waited {latency:?}"
    );
    trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_continuation_header_is_cut_off() {
    let (addr, trigger) = server().await;
    let (rd, mut wr) = open(addr).await.into_split();
    let watcher = tokio::spawn(watch(rd, Duration::from_secs(20)));
    // A HEADERS frame that never ends: CONTINUATION frames of 16 KiB of header bytes, up to
    // 64 MiB. The server allows 16 KiB of headers in all.
    wr.write_all(&frame(HEADERS, END_STREAM, 1, &get_block(None)))
        .await
        .unwrap();
    let pad = vec![0x40u8; 16 * 1024];
    let mut sent = 0usize;
    while sent < 64 << 20 {
        let piece = frame(CONTINUATION, 0, 1, &pad);
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&piece)).await {
            Ok(Ok(())) => sent += pad.len(),
            // The server closed, or stopped reading: either way it is not buffering it.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    drop(wr);
    let seen = watcher.await.unwrap();
    println!("CONTINUATION flood: {sent} header bytes accepted by the socket; server: {seen:?}");
    assert!(seen.closed || seen.goaway.is_some(), "{seen:?}");
    assert!(
        sent < 16 << 20,
        "the server read {sent} bytes of one header block"
    );
    assert_eq!(
        seen.responses, 0,
        "a response to an unfinished header block"
    );
    assert!(other_client_latency(addr).await < Duration::from_secs(1));
    trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_and_the_connection_lives_on() {
    let (addr, trigger) = server().await;
    let (rd, mut wr) = open(addr).await.into_split();
    let watcher = tokio::spawn(watch(rd, Duration::from_secs(3)));
    // 32 KiB of headers on stream 1 (over the 16 KiB limit), then a normal request on 3.
    let big = get_block(Some(&vec![b'a'; 32 * 1024]));
    let mut out = Vec::new();
    let (first, rest) = big.split_at(16 * 1024);
    out.extend(frame(HEADERS, END_STREAM, 1, first));
    for (i, piece) in rest.chunks(16 * 1024).enumerate() {
        let last = (i + 1) * 16 * 1024 >= rest.len();
        out.extend(frame(
            CONTINUATION,
            if last { END_HEADERS } else { 0 },
            1,
            piece,
        ));
    }
    out.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &get_block(None),
    ));
    wr.write_all(&out).await.unwrap();
    let seen = watcher.await.unwrap();
    println!("oversized headers: {seen:?}");
    // Stream 1 gets 431 (a HEADERS frame) or a reset; stream 3 is answered.
    assert!(seen.responses >= 1, "{seen:?}");
    assert!(seen.responses + seen.resets >= 2, "{seen:?}");
    assert_eq!(seen.goaway, None, "{seen:?}");
    trigger.trigger();
}
