//! The checks behind Cadenza's fuzz targets: each takes any bytes, hands them to a parser of
//! what arrives from outside (a client's request, a label's master, an operator's GeoIP
//! database) and panics only when a promise is broken, so a crash is a finding.
//!
//! `fuzz/run.sh` runs them under libFuzzer (`cargo fuzz`, nightly); `tests/replay.rs` runs
//! each over its seeds and saved findings with the ordinary tests, on stable.
//!
//! | target | what it feeds | what must hold |
//! |---|---|---|
//! | `h1_head` | one HTTP/1.1 request head | no panic; an accepted head lies within the bytes, no shorter prefix is one |
//! | `h1_conn` | a whole connection's bytes, in pieces | the loop ends; what it writes is a well-framed response per request, in order |
//! | `ranges` | `Range`, `If-Range`, `If-None-Match` and an object length | the answer never reaches past the object |
//! | `client_fields` | a token, territories, `X-Forwarded-For`, a trusted network | no panic; no made-up token opens; the client is the peer or a listed hop |
//! | `geoip` | a GeoIP database file | refused with a reason, or loaded and answering lookups |
//! | `master` | an uploaded master | refused with a reason, or decoded within the limits |
//! | `tls_hello` | a TLS client's first flight, to the edge's HTTP/1.1 TLS layer | the ALPN peek reads only what is there; the handshake ends, refused or waiting |
//! | `tls_conn` | a whole connection's requests over TLS, in records and segments of any size, to the lean TLS layer and the HTTP/1.1 loop | as `h1_conn`, through the TLS layer's buffering |
//! | `h3_request` | one HTTP/3 request stream's bytes (frames, QPACK) to a running edge over QUIC | the edge answers or resets the stream and keeps serving; it never panics |
//! | `h3_control` | a client's HTTP/3 control stream, in pieces of any size, to the edge's frame watch | it refuses exactly the first frame declared longer than the bound, from its header, however the bytes are split |
//! | `proxy_header` | the first bytes of a connection on a PROXY protocol listener, to the header parser | bytes past its bound change nothing; a full bound of bytes is always decided; a decision, once reached, stays as more bytes come; a header lies within the bytes and reads the same alone |
//! | `coalesce` | a script of writes, flushes and sends, over a socket taking what it likes | the bytes leave whole and in order, and all of them by the end |
//! | `tus_headers` | a label's tus upload headers, to the origin | no panic; what parses stays in bounds and its metadata reads back the same |

#![allow(clippy::unwrap_used)] // a panic is how a fuzz target reports

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cadenza_common::http::h1::{self, SendFile, parse_head};
use cadenza_common::http::proxy_protocol;
use cadenza_common::http::{
    Body, ConnInfo, Handler, ServerLimits, Shutdown, full, plan_span, range_plan, ranged_response,
};
use cadenza_common::{FileId, RangeRequest, SigningKey, Territories, VerifyingKeys, parse_range};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// One request head: parsed as the edge's HTTP/1.1 loop parses each request.
/// Returns whether the head was accepted.
pub fn h1_head(data: &[u8]) -> bool {
    let Ok(Some(head)) = parse_head(data) else {
        return false;
    };
    assert!(
        head.len > 0 && head.len <= data.len(),
        "head length {}",
        head.len
    );
    // The head is whole within what it took, and nothing shorter was a head.
    let again = parse_head(&data[..head.len]);
    assert!(matches!(again, Ok(Some(ref h)) if h.len == head.len));
    assert!(!matches!(parse_head(&data[..head.len - 1]), Ok(Some(_))));
    true
}

/// The object `h1_conn`'s handler serves: 10,000 bytes, each its offset's low byte, so a
/// byte from the wrong place shows.
const OBJECT_LEN: usize = 10_000;
const ETAG: &str = "f0";

/// Answers every request with the object's bytes, through the edge's range planning.
struct Object(Bytes);

impl Handler for Object {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        let (parts, _) = req.into_parts();
        self.answer(&parts)
    }

    const BODYLESS: bool = true;

    async fn handle_parts(self: Arc<Self>, req: Parts, _conn: ConnInfo) -> Response<Body> {
        self.answer(&req)
    }
}

impl Object {
    fn answer(&self, req: &Parts) -> Response<Body> {
        let len = self.0.len() as u64;
        let plan = range_plan(&req.headers, len, ETAG);
        ranged_response(&req.method, plan, len, ETAG, |at, n| {
            full(self.0.slice(at as usize..(at + n) as usize))
        })
    }
}

/// One end of an in-memory pipe, as the loop wants its connection (no `sendfile`).
struct Pipe(DuplexStream);

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl SendFile for Pipe {}

/// What the requests in `data` are, as the loop will read them: each complete head's method
/// while the connection is kept, and whether a refused head follows (answered, then closed).
fn requests_in(data: &[u8], max_header_bytes: usize) -> (Vec<Method>, bool) {
    let mut methods = Vec::new();
    let mut at = 0;
    while at < data.len() {
        match parse_head(&data[at..]) {
            Ok(Some(head)) if head.len <= max_header_bytes => {
                methods.push(head.parts.method.clone());
                at += head.len;
                if !head.keep_alive {
                    return (methods, false);
                }
            }
            Ok(Some(_)) => return (methods, true),
            // The loop refuses a head still incomplete at the limit (431).
            Ok(None) => return (methods, data.len() - at >= max_header_bytes),
            Err(_) => return (methods, true),
        }
    }
    (methods, false)
}

/// Walks `out` as HTTP/1.1 responses to `methods` (then at most one more, to a refused head),
/// panicking where the framing is wrong; returns how many there were.
fn walk_responses(mut out: &[u8], methods: &[Method]) -> usize {
    let mut count = 0;
    while !out.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let head_len = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("response {count} is not a whole head: {other:?}"),
        };
        let status = resp.code.unwrap_or(0);
        assert!((200..600).contains(&status), "status {status}");
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap().trim())
        };
        let head_request = methods.get(count) == Some(&Method::HEAD);
        let body_len = if head_request || status == 304 || status == 204 {
            0
        } else if let Some(n) = header("content-length") {
            n.parse::<usize>().unwrap()
        } else {
            panic!("response {count} ({status}) has no Content-Length")
        };
        out = &out[head_len..];
        assert!(out.len() >= body_len, "response {count} is cut short");
        let body = &out[..body_len];
        // Every byte served is the object's, from where the response says.
        let object = |at: usize| (at % 256) as u8;
        match status {
            200 if !head_request => {
                assert_eq!(body.len(), OBJECT_LEN, "a 200 carries the whole object");
                assert!(body.iter().enumerate().all(|(i, b)| *b == object(i)));
            }
            206 if !head_request => {
                let range = header("content-range").expect("a 206 has Content-Range");
                let (span, len) = cadenza_common::ByteRange::from_content_range(range)
                    .unwrap_or_else(|| panic!("{range}: not bytes a-b/len with a ≤ b < len"));
                assert_eq!(len, OBJECT_LEN as u64, "{range}");
                let (start, end) = (span.start as usize, span.end as usize);
                assert_eq!(body.len(), end - start + 1, "{range}");
                assert!(
                    body.iter()
                        .enumerate()
                        .all(|(i, b)| *b == object(start + i))
                );
            }
            _ => {}
        }
        out = &out[body_len..];
        count += 1;
    }
    assert!(
        count <= methods.len() + 1,
        "{count} responses to {} requests",
        methods.len()
    );
    count
}

/// The responses in `out` to `methods` (checked by [`walk_responses`]): one for each request,
/// and none more unless a head was refused (its answer closes the connection). How many.
fn answered_all(out: &[u8], methods: &[Method], refused: bool) -> usize {
    let count = walk_responses(out, methods);
    assert!(
        count >= methods.len(),
        "{count} responses to {} requests",
        methods.len()
    );
    if !refused {
        assert_eq!(count, methods.len(), "a response to no request");
    }
    count
}

/// The client's side of a connection: writes `data` to `stream` in writes of `piece` bytes,
/// then shuts its write half, while reading everything until the other end closes (or the
/// read fails: what came before counts). What was read.
async fn converse<S: AsyncRead + AsyncWrite>(stream: S, data: &[u8], piece: usize) -> Vec<u8> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async move {
        for chunk in data.chunks(piece) {
            if writer.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out).await;
        out
    };
    tokio::join!(write, read).1
}

/// A whole connection: `data` arrives at the edge's HTTP/1.1 loop in pieces (the first byte
/// sets their size), then the client half-closes, reading everything the loop writes.
/// Returns how many responses it wrote.
pub fn h1_conn(data: &[u8]) -> usize {
    let Some((&piece, data)) = data.split_first() else {
        return 0;
    };
    let piece = usize::from(piece).max(1);
    let limits = ServerLimits {
        max_header_bytes: 4096,
        ..ServerLimits::default()
    };
    let (methods, refused) = requests_in(data, limits.max_header_bytes);
    let object = Bytes::from((0..OBJECT_LEN).map(|i| i as u8).collect::<Vec<u8>>());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let out = runtime.block_on(async {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (_trigger, shutdown) = Shutdown::new();
        let conn = ConnInfo {
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000)),
            tls: false,
        };
        let serve = h1::serve(
            Pipe(server),
            conn,
            Arc::new(Object(object.clone())),
            &limits,
            shutdown,
            false,
            None,
        );
        let all = async { tokio::join!(serve, converse(client, data, piece)) };
        match tokio::time::timeout(Duration::from_secs(5), all).await {
            Ok((_, out)) => out,
            Err(_) => panic!("the connection did not end within 5 s"),
        }
    });
    answered_all(&out, &methods, refused)
}

/// Splits `data` at `0xff` bytes into at most `n` fields.
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0xff).collect()
}

/// `Range`, `If-Range` and `If-None-Match` (any of them absent) for an object whose length
/// comes from the first eight bytes.
pub fn ranges(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (len, rest) = data.split_at(8);
    let mut len = u64::from_le_bytes(len.try_into().unwrap());
    // Small lengths, where ends and overflows meet, most of the time.
    if len & 1 == 0 {
        len >>= 48;
    }
    let parts = fields(rest, 3);
    let range = parts.first().copied();
    match parse_range(range, len) {
        RangeRequest::Partial(r) => {
            assert!(r.start <= r.end && r.end < len, "{r:?} of {len}");
        }
        RangeRequest::Full | RangeRequest::Unsatisfiable => {}
    }
    let mut headers = HeaderMap::new();
    let names = [
        http::header::RANGE,
        http::header::IF_RANGE,
        http::header::IF_NONE_MATCH,
    ];
    for (name, value) in names.into_iter().zip(&parts) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    if let Some((start, count)) = plan_span(range_plan(&headers, len, ETAG), len) {
        assert!(
            start.checked_add(count).is_some_and(|end| end <= len),
            "span {start}+{count} of {len}"
        );
    }
}

/// The first bytes of a connection on a PROXY protocol listener, as a load balancer (or
/// anyone) sends them: the parser looks at no more than its bound, decides once it has that
/// many bytes (so the listener's peek never waits on a full buffer), and what it decides from
/// a prefix stays decided as more bytes come, whatever they are. Returns what all the bytes
/// said.
pub fn proxy_header(
    data: &[u8],
) -> Result<Option<proxy_protocol::ProxyHeader>, proxy_protocol::ProxyHeaderError> {
    use proxy_protocol::{MAX_HEADER, parse};
    let whole = parse(data);
    let bound = data.len().min(MAX_HEADER);
    assert_eq!(
        parse(&data[..bound]),
        whole,
        "looked past {MAX_HEADER} bytes"
    );
    if data.len() >= MAX_HEADER {
        assert_ne!(whole, Ok(None), "{MAX_HEADER} bytes and still undecided");
    }
    if let Ok(Some(header)) = whole {
        assert!(header.len <= bound, "a header longer than the bytes");
        assert_eq!(
            parse(&data[..header.len]),
            whole,
            "the header alone reads otherwise"
        );
    }
    // Every prefix up to 128 bytes, then every 61st: undecided until a decision, which holds.
    let mut before = Ok(None);
    for n in (0..=bound.min(128)).chain((129..=bound).step_by(61)) {
        let now = parse(&data[..n]);
        if before != Ok(None) {
            assert_eq!(
                now,
                before,
                "{n} bytes changed what {} bytes decided",
                n - 1
            );
        }
        before = now;
    }
    whole
}

/// What a player or a proxy in front of the edge writes into fields the edge reads: a token,
/// territories, an `X-Forwarded-For` list and a trusted network.
pub fn client_fields(data: &[u8]) {
    thread_local! {
        static KEYS: (SigningKey, VerifyingKeys) = {
            let (key, _) = SigningKey::generate("k1").unwrap();
            let mut keys = VerifyingKeys::default();
            keys.insert(key.kid(), key.public_key());
            (key, keys)
        };
    }
    let parts = fields(data, 4);
    let text = |i: usize| String::from_utf8_lossy(parts.get(i).copied().unwrap_or_default());
    let token = text(0);
    KEYS.with(|(_, keys)| {
        // Nothing made up opens: a signature needs the private key.
        assert!(keys.verify_signature(&token).is_err(), "forged: {token:?}");
        let id = FileId::random();
        assert!(
            keys.verify(&token, &id, SystemTime::now(), Duration::from_secs(30))
                .is_err()
        );
    });
    if let Ok(territories) = text(1).parse::<Territories>() {
        // What parses prints as something that parses to the same.
        let again: Territories = territories.to_string().parse().unwrap();
        assert_eq!(again, territories);
    }
    let forwarded = text(2);
    let trusted: Vec<cadenza_geo::Cidr> =
        text(3).split(' ').filter_map(|c| c.parse().ok()).collect();
    for peer in [
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let client = cadenza_geo::client_ip(peer, Some(&forwarded), &trusted);
        let listed = forwarded
            .split(',')
            .filter_map(|h| h.trim().parse::<IpAddr>().ok())
            .any(|ip| ip.to_canonical() == client);
        assert!(
            client == peer.to_canonical() || listed,
            "{client} from nowhere"
        );
    }
}

/// A GeoIP database as an operator might drop it in place, damaged or not. Returns how many
/// probes found a country (`None`: refused).
pub fn geoip(data: &[u8]) -> Option<usize> {
    let Ok(db) = cadenza_geo::GeoDb::from_bytes(data.to_vec(), "fuzz.mmdb") else {
        return None;
    };
    let mut probes = vec![
        IpAddr::V4(Ipv4Addr::new(81, 2, 69, 160)),
        IpAddr::V4(Ipv4Addr::new(2, 125, 160, 216)),
        IpAddr::V6("2001:218::1".parse().unwrap()),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ];
    // And addresses taken from the file, so lookups reach what it holds.
    for chunk in data.chunks_exact(16).take(8) {
        probes.push(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(chunk).unwrap(),
        )));
        probes.push(IpAddr::V4(Ipv4Addr::new(
            chunk[0], chunk[1], chunk[2], chunk[3],
        )));
    }
    let mut found = 0;
    for ip in probes {
        if let Some(code) = db.country(ip) {
            assert!(code.len() < 64, "country code {code:?}");
            found += 1;
        }
    }
    Some(found)
}

/// An uploaded master, decoded as the transcoder decodes one, with limits small enough that a
/// case takes milliseconds. Returns the frames decoded before the end or a refusal (`None`:
/// refused at open).
pub fn master(data: &[u8]) -> Option<u64> {
    // The transcoder turns a panic inside symphonia into a refusal (`catch_unwind`), as it
    // must for an upload; libFuzzer's panic hook would abort at the panic itself, before that.
    // The default hook only prints: a panic that escapes still ends the run (libfuzzer-sys
    // aborts on one), and a caught one is a refusal like any other.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
    let limits = cadenza_transcoder::DecodeLimits {
        max_duration_secs: 20,
        max_expansion: 100,
        expansion_floor_bytes: 4 << 20,
        ..Default::default()
    };
    let cap = (data.len() as u64 * limits.max_expansion).max(limits.expansion_floor_bytes);
    let Ok(mut decoder) =
        cadenza_transcoder::MasterDecoder::open_bytes(data.to_vec(), None, &limits)
    else {
        return None;
    };
    let format = decoder.format();
    let mut planes = Vec::new();
    let mut decoded: u64 = 0;
    loop {
        match decoder.next_block(&mut planes) {
            Ok(0) | Err(_) => break,
            Ok(frames) => {
                assert_eq!(planes.len(), format.channels.count, "planes");
                assert!(planes.iter().all(|p| p.len() == frames), "plane length");
                decoded += frames as u64;
                assert!(
                    decoded * 4 * planes.len() as u64 <= cap,
                    "decoded past the expansion limit"
                );
                assert!(decoded <= 20 * u64::from(format.sample_rate), "past 20 s");
            }
        }
    }
    Some(decoded)
}

/// A TLS client's first bytes, as the edge reads them: its peek at the ClientHello's ALPN offer
/// (which picks HTTP/2 or the lean HTTP/1.1 path), then the lean path's handshake over rustls's
/// unbuffered API. Returns whether the peek saw `h2` offered.
pub fn tls_hello(data: &[u8]) -> Option<bool> {
    use cadenza_common::http::lean_tls;
    static CONFIG: std::sync::OnceLock<Arc<rustls::ServerConfig>> = std::sync::OnceLock::new();
    let offered = lean_tls::offers_alpn(data, b"h2");
    if offered == Some(true) {
        // An offer is only ever read from bytes that hold it.
        assert!(
            data.windows(3).any(|w| w == b"\x02h2"),
            "h2 offered out of nothing"
        );
    }
    let config = CONFIG.get_or_init(|| {
        let pem = cadenza_common::http::tls::self_signed(&["localhost"]).unwrap();
        cadenza_common::http::tls::server_config_with_alpn(&pem, &[b"http/1.1"]).unwrap()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut reader, mut writer) = tokio::io::split(client);
        let accept = lean_tls::accept(server, config.clone());
        let write = async move {
            let _ = writer.write_all(data).await;
            let _ = writer.shutdown().await;
        };
        let read = async move {
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out).await;
        };
        let all = async {
            // The handshake cannot finish (the client never answers the server's flight), so
            // it must end in an error, or wait with nothing more to read: either is fine.
            let (accepted, ()) = tokio::join!(accept, write);
            drop(accepted);
        };
        let both = async { tokio::join!(all, read) };
        if tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .is_err()
        {
            panic!("the handshake neither ended nor settled within 5 s");
        }
    });
    offered
}

/// The headers a label's uploader sends with a tus request (`Upload-Offset`, `Upload-Length`,
/// `Upload-Checksum`, `Upload-Metadata`, `Tus-Resumable`, `Content-Type`), one per `0xff`-
/// separated field. Returns whether the metadata parsed.
pub fn tus_headers(data: &[u8]) -> bool {
    use cadenza_origin::tus;
    let names = [
        "upload-offset",
        "upload-length",
        "upload-checksum",
        "upload-metadata",
        "tus-resumable",
        "content-type",
    ];
    let mut headers = HeaderMap::new();
    for (name, value) in names.iter().zip(fields(data, names.len())) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(*name, value);
        }
    }
    let _ = tus::upload_offset(&headers);
    const MAX: u64 = 1 << 40;
    if let Ok(len) = tus::upload_length(&headers, MAX) {
        assert!(len <= MAX, "length {len} past the bound");
    }
    let _ = tus::upload_checksum(&headers);
    let _ = tus::check_version(&headers);
    let _ = tus::check_patch_content_type(&headers);
    let Ok(meta) = tus::upload_metadata(&headers) else {
        return false;
    };
    if let Some(name) = &meta.filename {
        assert!(!name.is_empty() && name.chars().count() <= 255, "{name:?}");
        assert!(!name.contains(['/', '\\']) && !name.chars().any(char::is_control));
    }
    // What the origin keeps reads back as itself through the header it would send.
    if let Some(encoded) = tus::encode_metadata(&meta) {
        let mut again = HeaderMap::new();
        again.insert("upload-metadata", HeaderValue::from_str(&encoded).unwrap());
        assert_eq!(tus::upload_metadata(&again).unwrap(), meta);
    }
    true
}

/// A socket that takes what a script says: some bytes of each write, or none for now.
struct Stingy {
    taken: Vec<u8>,
    /// How much each coming write may take (0: not now); past the end, everything.
    allowances: std::collections::VecDeque<usize>,
}

impl AsyncWrite for Stingy {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let allowed = self.allowances.pop_front().unwrap_or(usize::MAX);
        if allowed == 0 && !data.is_empty() {
            return Poll::Pending;
        }
        let n = allowed.min(data.len());
        self.taken.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// HTTP/2's write coalescing (`http::coalesce`), driven by a script: writes of any size (some
/// vectored), flushes, sends and the switch to deferring, over a socket that takes part of a
/// write or nothing at a time. What the socket ends up with is exactly what the writes were
/// told was taken, in order, once a last send has run. Returns how many bytes left.
pub fn coalesce(data: &[u8]) -> usize {
    use cadenza_common::http::coalesce::coalesce;
    let mut script = data.iter().copied();
    let mut next = move || script.next();
    // First the socket's allowances, then the operations.
    let count = usize::from(next().unwrap_or(0));
    let allowances = (0..count)
        .map_while(|_| next())
        .map(|b| match b % 4 {
            0 => 0,
            1 => usize::from(b),
            2 => usize::from(b) * 97,
            _ => usize::from(b) * 1024,
        })
        .collect();
    let (mut stream, outbox) = coalesce(Stingy {
        taken: Vec::new(),
        allowances,
    });
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut written: Vec<u8> = Vec::new();
    let mut counter: u8 = 0;
    let mut fill = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                counter = counter.wrapping_add(1);
                counter
            })
            .collect()
    };
    while let Some(op) = next() {
        let size = usize::from(next().unwrap_or(0));
        match op % 5 {
            0 | 1 => {
                // One slice or three, up to 96 KiB in all.
                let len = if op % 5 == 0 { size * 16 } else { size * 384 };
                let bytes = fill(len);
                let parts = [
                    &bytes[..len / 3],
                    &bytes[len / 3..len / 2],
                    &bytes[len / 2..],
                ];
                let slices: Vec<std::io::IoSlice<'_>> =
                    parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
                if let Poll::Ready(Ok(n)) =
                    Pin::new(&mut stream).poll_write_vectored(&mut cx, &slices)
                {
                    assert!(n <= len, "took {n} of {len}");
                    written.extend_from_slice(&bytes[..n]);
                }
            }
            2 => {
                let _ = Pin::new(&mut stream).poll_flush(&mut cx);
            }
            3 => {
                let _ = outbox.poll_send(&mut cx);
            }
            _ => outbox.defer(),
        }
    }
    // The socket takes everything from now on: one send leaves all that was written.
    stream.with_inner(|socket| socket.allowances.clear());
    match outbox.poll_send(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the last send gave {other:?}"),
    }
    let taken = stream.with_inner(|socket| std::mem::take(&mut socket.taken));
    assert_eq!(taken.len(), written.len(), "bytes lost or made up");
    assert!(taken == written, "bytes out of order");
    taken.len()
}

/// Splits every write into pieces of at most `piece` bytes: TCP segments of any size.
struct Segments {
    io: DuplexStream,
    piece: usize,
}

impl AsyncRead for Segments {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Segments {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = data.len().min(self.piece);
        Pin::new(&mut self.io).poll_write(cx, &data[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `h1_conn` over TLS: a real rustls client sends the requests in `data` (after two bytes
/// setting the plaintext written per TLS record and the TCP segment size), and the edge's
/// lean TLS layer under its HTTP/1.1 loop answers. Exercises the layer's carrying of records
/// cut across reads and of plaintext across records. Returns how many responses came back.
pub fn tls_conn(data: &[u8]) -> usize {
    use cadenza_common::http::{lean_tls, tls};
    static CONFIGS: std::sync::OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> =
        std::sync::OnceLock::new();
    let [record, segment, data @ ..] = data else {
        return 0;
    };
    let record = usize::from(*record).max(1) * 7;
    let segment = usize::from(*segment).max(1) * 3;
    let (server_config, client_config) = CONFIGS.get_or_init(|| {
        let pem = tls::self_signed(&["localhost"]).unwrap();
        let server = tls::server_config_with_alpn(&pem, &[b"http/1.1"]).unwrap();
        let mut client = (*tls::client_config(pem.cert.as_bytes()).unwrap()).clone();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (server, Arc::new(client))
    });
    let limits = ServerLimits {
        max_header_bytes: 4096,
        ..ServerLimits::default()
    };
    let (methods, refused) = requests_in(data, limits.max_header_bytes);
    let object = Bytes::from((0..OBJECT_LEN).map(|i| i as u8).collect::<Vec<u8>>());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let out = runtime.block_on(async {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let serve = async {
            let Ok(tls) = lean_tls::accept(server, server_config.clone()).await else {
                return;
            };
            let (_trigger, shutdown) = Shutdown::new();
            let conn = ConnInfo {
                peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000)),
                tls: true,
            };
            let handler = Arc::new(Object(object.clone()));
            let _ = h1::serve(tls, conn, handler, &limits, shutdown, false, None).await;
        };
        let talk = async {
            let io = Segments {
                io: client,
                piece: segment,
            };
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let connector = tokio_rustls::TlsConnector::from(client_config.clone());
            let stream = connector.connect(name, io).await.unwrap();
            // The edge may close without close_notify once it has answered a refused head;
            // what was read before counts.
            converse(stream, data, record).await
        };
        let all = async { tokio::join!(serve, talk) };
        match tokio::time::timeout(Duration::from_secs(5), all).await {
            Ok(((), out)) => out,
            Err(_) => panic!("the TLS connection did not end within 5 s"),
        }
    });
    answered_all(&out, &methods, refused)
}

/// The public half of the key that signed the tokens in `seeds/h3_request` (its private half
/// was thrown away once they were made): the edge `h3_request` runs trusts it as kid `f1`.
const H3_TOKEN_KEY: &str = "112d20a7078b889de923dbd0b8ac3dca9915833a4402264b243bbb6338341ff5";

/// What `h3_request` keeps between inputs: a runtime whose worker runs an edge (HTTP/3 on
/// 127.0.0.1, its origin an in-process server of `Object`), and a QUIC client of it.
struct H3Harness {
    runtime: tokio::runtime::Runtime,
    edge: SocketAddr,
    client: quinn::Endpoint,
    /// The connection in use and its control stream, kept open as HTTP/3 requires.
    conn: std::sync::Mutex<Option<(quinn::Connection, quinn::SendStream)>>,
    _stop: cadenza_common::http::ShutdownTrigger,
}

fn h3_harness() -> &'static H3Harness {
    use cadenza_common::http::tls;
    static HARNESS: std::sync::OnceLock<H3Harness> = std::sync::OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (stop, shutdown) = Shutdown::new();
        let pem = tls::self_signed(&["localhost"]).unwrap();
        let (edge, client) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let object = Bytes::from((0..OBJECT_LEN).map(|i| i as u8).collect::<Vec<u8>>());
            let origin = cadenza_common::http::serve_on(
                listener,
                None,
                ServerLimits::default(),
                Arc::new(Object(object)),
                shutdown.clone(),
            )
            .unwrap();
            let mut keys = VerifyingKeys::default();
            let public: Vec<u8> = (0..H3_TOKEN_KEY.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&H3_TOKEN_KEY[i..i + 2], 16).unwrap())
                .collect();
            keys.insert("f1", public);
            let client_tls = tls::client_config(pem.cert.as_bytes()).unwrap();
            let cache = cadenza_edge::SliceCache::new(
                cadenza_edge::SliceMath::new(4096),
                1 << 20,
                cadenza_edge::UpstreamConfig {
                    origins: vec![format!("http://{}", origin.addr)],
                    edge_key: "fuzz".into(),
                    timeout: Duration::from_secs(2),
                    breaker_threshold: 1000,
                    breaker_cooldown: Duration::from_secs(1),
                },
                cadenza_common::http::client::https_client(client_tls.clone()),
                Arc::new(cadenza_edge::EdgeMetrics::new()),
                None,
            );
            let config = cadenza_edge::EdgeConfig {
                keys,
                token_leeway: Duration::from_secs(30),
                geo: None,
                trusted_proxies: Vec::new(),
                unknown_country: cadenza_edge::UnknownCountry::Allow,
                read_ahead_slices: 0,
                alt_svc: None,
                access_log: false,
                peer_key: None,
                cors: Default::default(),
            };
            let edge = Arc::new(cadenza_edge::Edge::new(config, Arc::new(cache)));
            let h3 = cadenza_edge::serve_h3(
                (SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), None),
                tls::quic_server_config(&pem).unwrap(),
                cadenza_edge::H3Limits {
                    drivers: 1,
                    ..Default::default()
                },
                edge,
                shutdown.clone(),
            )
            .unwrap();
            let mut quic_tls = (*client_tls).clone();
            quic_tls.alpn_protocols = vec![b"h3".to_vec()];
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(quic_tls).unwrap();
            let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            (h3.addr, client)
        });
        H3Harness {
            runtime,
            edge,
            client,
            conn: std::sync::Mutex::new(None),
            _stop: stop,
        }
    })
}

impl H3Harness {
    /// The connection in use, or a new one (with the client's control stream and SETTINGS
    /// sent, as a real client's first stream).
    async fn connection(&self) -> quinn::Connection {
        if let Some((conn, _)) = self.conn.lock().unwrap().as_ref()
            && conn.close_reason().is_none()
        {
            return conn.clone();
        }
        let connecting = self.client.connect(self.edge, "localhost").unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .expect("the edge stopped answering QUIC handshakes")
            .expect("the edge refused a QUIC connection");
        let mut control = conn.open_uni().await.unwrap();
        // Stream type 0 (control), then an empty SETTINGS frame (type 4, length 0).
        control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
        *self.conn.lock().unwrap() = Some((conn.clone(), control));
        conn
    }
}

/// One HTTP/3 request stream: `data` is sent as the stream's bytes (HEADERS and DATA frames,
/// QPACK-encoded fields, or anything at all) to an edge serving the 10,000-byte object
/// through its real cache, token check and range planning, then the stream is finished. The
/// edge must answer or reset the stream, may close the connection for a malformed one, and
/// must go on accepting connections; a panic anywhere in it fails the target. Returns the
/// bytes of the answer (`None`: reset, closed or timed out).
pub fn h3_request(data: &[u8]) -> Option<usize> {
    let harness = h3_harness();
    harness.runtime.block_on(async {
        let conn = harness.connection().await;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            send.write_all(data).await.ok()?;
            send.finish().ok()?;
            recv.read_to_end(1 << 20).await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(2), exchange).await {
            Ok(answer) => answer.map(|a| a.len()),
            Err(_) => {
                // An edge may wait for what a request lacks until its own timeouts; this
                // client does not, and starts afresh.
                conn.close(0u32.into(), b"");
                *harness.conn.lock().unwrap() = None;
                None
            }
        }
    })
}

/// A client's HTTP/3 control stream, read in pieces, through the edge's [`FrameWatch`]: the
/// first byte picks the bound (0–255 bytes, so refusals are reached) and the size of the
/// pieces; the rest is the stream. The watch must refuse the stream exactly when a frame
/// declared longer than the bound is first reached, naming that frame, whatever the
/// pieces, as a whole-stream reading ([`control_stream_reading`]) says. Returns the refusal.
pub fn h3_control(data: &[u8]) -> Option<(u64, u64)> {
    let (&knobs, stream) = data.split_first()?;
    let max = u64::from(knobs);
    let expected = control_stream_reading(stream, max);
    let mut widths = [1, 2, 3, 5, 8, 13, 64, 4096]
        .into_iter()
        .cycle()
        .skip(usize::from(knobs % 8));
    let mut watch = cadenza_edge::FrameWatch::new(max);
    let mut rest = stream;
    let mut got = None;
    while !rest.is_empty() {
        let (piece, after) = rest.split_at(widths.next().unwrap().min(rest.len()));
        rest = after;
        if let Err(e) = watch.feed(piece) {
            got = Some((e.frame_type, e.length));
            break;
        }
    }
    assert_eq!(got, expected, "the watch and a whole reading disagree");
    got
}

/// The first frame of control stream `stream` declared longer than `max`, as (type, length),
/// read from the whole stream at once; `None` when no frame is (or it is not a control
/// stream, or the bytes end first).
fn control_stream_reading(stream: &[u8], max: u64) -> Option<(u64, u64)> {
    /// The varint at `at`, moving past it.
    fn varint(stream: &[u8], at: &mut usize) -> Option<u64> {
        let first = *stream.get(*at)?;
        let len = 1usize << (first >> 6);
        let bytes = stream.get(*at..at.checked_add(len)?)?;
        *at += len;
        Some(
            bytes[1..]
                .iter()
                .fold(u64::from(first & 0x3f), |v, b| v << 8 | u64::from(*b)),
        )
    }
    let mut at = 0;
    if varint(stream, &mut at)? != 0 {
        return None;
    }
    loop {
        let frame_type = varint(stream, &mut at)?;
        let length = varint(stream, &mut at)?;
        if length > max {
            return Some((frame_type, length));
        }
        at = at.checked_add(usize::try_from(length).ok()?)?;
    }
}
