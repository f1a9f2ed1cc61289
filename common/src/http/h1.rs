//! Cadenza's own HTTP/1.1 connection loop, for handlers that never read a request body (the
//! edge's GET and HEAD).
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for every connection for as
//! long as it lives. An edge holds tens of thousands of kept-alive players that are idle
//! most of the time, so this loop holds no buffer between requests: it waits for the next
//! request's first bytes with a per-thread scratch buffer and copies out only what arrived.
//! Response bodies are written straight from their `Bytes`, the head in the same `writev`
//! as the first chunk.
//!
//! What it accepts: `GET`, `HEAD` and any other method without a body; `HTTP/1.0` and
//! `HTTP/1.1`; pipelined requests. A request with a body (`Content-Length` above zero or any
//! `Transfer-Encoding`) is answered 413 and the connection closed, since its body is not read.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

use super::idle::IdleQueue;
use super::server::{ConnInfo, Handler, ServerLimits};
use super::{ApiError, Body, Shutdown};

/// Most header fields in a request head.
pub const MAX_HEADERS: usize = 64;

/// The HTTP/2 connection preface a cleartext client with prior knowledge opens with.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request head, parsed.
#[derive(Debug)]
pub struct Head {
    pub parts: Parts,
    /// Bytes of the buffer the head took, its blank line included.
    pub len: usize,
    /// Whether the client lets the connection be kept after the response.
    pub keep_alive: bool,
}

/// Why a request head was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the request has a body, which this endpoint does not take")]
    HasBody,
}

impl HeadError {
    fn status(&self) -> StatusCode {
        match self {
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::HasBody => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            HeadError::Malformed(_) => "bad_request",
            HeadError::TooManyHeaders => "headers_too_large",
            HeadError::HasBody => "body_not_accepted",
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete. Pure and
/// bounded (at most [`MAX_HEADERS`] fields; the caller bounds the buffer), so it can be fuzzed
/// on its own.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(malformed(e))),
    };
    let method = req.method.ok_or(HeadError::Malformed("no method"))?;
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("bad method"))?;
    let target = req.path.ok_or(HeadError::Malformed("no target"))?;
    let uri: http::Uri = target
        .parse()
        .map_err(|_| HeadError::Malformed("bad target"))?;
    // A path, or the absolute form a server must also take (RFC 9112 §3.2.2); not the
    // authority form of CONNECT, nor `*`.
    if !target.starts_with('/') && uri.scheme().is_none() {
        return Err(HeadError::Malformed(
            "the target must be a path or an absolute URI",
        ));
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Malformed("unsupported version")),
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError::Malformed("bad header name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| HeadError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(HeadError::HasBody);
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let parse = |v: &HeaderValue| {
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
        };
        let n = parse(first).ok_or(HeadError::Malformed("bad content-length"))?;
        if lengths.any(|v| parse(v) != Some(n)) {
            return Err(HeadError::Malformed("conflicting content-lengths"));
        }
        if n > 0 {
            return Err(HeadError::HasBody);
        }
    }
    if version == Version::HTTP_11 && !headers.contains_key(http::header::HOST) {
        return Err(HeadError::Malformed("HTTP/1.1 needs a Host header"));
    }
    let connection = |token: &str| {
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let keep_alive = match version {
        Version::HTTP_10 => connection("keep-alive"),
        _ => !connection("close"),
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    Ok(Some(Head {
        parts,
        len,
        keep_alive,
    }))
}

fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "bad header name",
        httparse::Error::HeaderValue => "bad header value",
        httparse::Error::NewLine => "bad line ending",
        httparse::Error::Status => "bad status",
        httparse::Error::Token => "bad token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "bad version",
    }
}

/// How a connection's first bytes turned out.
pub enum Served {
    /// The connection was served to its end.
    Done,
    /// The connection was idle and chosen to make room for a new client: it is closed, and
    /// nothing of its peer's is left to read, so its slot can go at once.
    Reclaimed,
    /// The client opened with the HTTP/2 preface (cleartext, prior knowledge): these bytes
    /// were read, and the connection is the caller's to serve as HTTP/2.
    Http2(BytesMut),
}

thread_local! {
    /// Where idle connections read their next request's first bytes. Borrowed only within
    /// one poll, so one per thread serves every connection.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
}

/// Waits for bytes without holding a buffer while it waits, and returns what arrived (empty
/// at end of stream).
async fn first_bytes<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<BytesMut> {
    poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(BytesMut::from(buf.filled()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

/// Serves HTTP/1.1 on `io` until the client closes, asks to close, errs, or `shutdown` fires
/// (a request in progress is answered first). With `detect_h2`, a connection opening with
/// the HTTP/2 preface is handed back instead. While it waits for a request the connection
/// stands in `idle`, and closes if chosen there to make room.
pub async fn serve<IO, H>(
    mut io: IO,
    conn: ConnInfo,
    handler: Arc<H>,
    limits: &ServerLimits,
    mut shutdown: Shutdown,
    detect_h2: bool,
    idle: Option<&IdleQueue>,
) -> io::Result<Served>
where
    IO: AsyncRead + AsyncWrite + SendFile + Unpin,
    H: Handler,
{
    let mut buf = BytesMut::new();
    let mut first = true;
    // Rung if the connection, waiting, is chosen to make room.
    let bell = idle.map(|_| Arc::new(Notify::new()));
    // Chosen as a request began: that request is answered, then the connection closes.
    let mut chosen = false;
    loop {
        if buf.is_empty() {
            let place = idle
                .zip(bell.as_ref())
                .map(|(queue, bell)| queue.join(bell));
            buf = tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(Served::Done),
                bytes = first_bytes(&mut io) => bytes?,
                () = rung(bell.as_deref()) => {
                    io.shutdown().await.ok();
                    return Ok(Served::Reclaimed);
                }
            };
            chosen = place.is_some_and(|place| !place.leave());
            if buf.is_empty() {
                return Ok(Served::Done);
            }
        }
        if first && detect_h2 {
            // Enough of the preface to tell (a request line cannot start with "PRI * ").
            while buf.len() < 6 && H2_PREFACE.starts_with(&buf) {
                if read_more(&mut io, &mut buf, limits).await? == 0 {
                    return Ok(Served::Done);
                }
            }
            if H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
                return Ok(Served::Http2(buf));
            }
        }
        first = false;
        // Boxed, like the handler and the write: only what waits between requests is
        // held inline, so an idle connection's task stays small.
        let Some(head) = Box::pin(read_head(&mut io, &mut buf, limits)).await? else {
            return Ok(Served::Done);
        };
        buf.advance(head.len);
        let Head {
            parts, keep_alive, ..
        } = head;
        let method = parts.method.clone();
        let version = parts.version;
        // Boxed, so the connection's task stays small while it idles.
        let resp = Box::pin(handler.clone().handle_parts(parts, conn)).await;
        let keep_alive = keep_alive && !shutdown.is_triggered() && !chosen;
        let kept = Box::pin(write_response(&mut io, resp, &method, version, keep_alive)).await?;
        if !kept {
            io.shutdown().await.ok();
            return Ok(Served::Done);
        }
        if buf.is_empty() {
            // Give the allocation back; the next request starts in the scratch buffer.
            buf = BytesMut::new();
        }
    }
}

/// Resolves when `bell` rings; never without one.
async fn rung(bell: Option<&Notify>) {
    match bell {
        Some(bell) => bell.notified().await,
        None => std::future::pending().await,
    }
}

/// Reads the rest of a request head into `buf`: `None` when the client went away, or its
/// head was refused (and answered).
async fn read_head<IO: AsyncRead + AsyncWrite + SendFile + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    limits: &ServerLimits,
) -> io::Result<Option<Head>> {
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    loop {
        let parsed = parse_head(buf);
        let too_long = match &parsed {
            Ok(Some(head)) => head.len > limits.max_header_bytes,
            Ok(None) => buf.len() >= limits.max_header_bytes,
            Err(_) => false,
        };
        match parsed {
            _ if too_long => {
                let too_large = ApiError::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                    format!("the request head is over {} bytes", limits.max_header_bytes),
                );
                refuse(io, too_large).await?;
                return Ok(None);
            }
            Ok(Some(head)) => return Ok(Some(head)),
            Ok(None) => {}
            Err(e) => {
                let refused = ApiError::new(e.status(), e.code(), e.to_string());
                refuse(io, refused).await?;
                return Ok(None);
            }
        }
        match tokio::time::timeout_at(deadline, read_more(io, buf, limits)).await {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let slow = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "header_timeout",
                    "the request head did not arrive in time",
                );
                refuse(io, slow).await?;
                return Ok(None);
            }
        }
    }
}

/// Reads more of a head into `buf`, at most up to the head limit.
async fn read_more<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    limits: &ServerLimits,
) -> io::Result<usize> {
    let room = limits.max_header_bytes.saturating_sub(buf.len()).max(1);
    buf.reserve(room.min(4096));
    let mut limited = (&mut *io).take(room as u64);
    limited.read_buf(buf).await
}

/// Answers a request that could not be read with `error`, and closes.
async fn refuse<IO: AsyncRead + AsyncWrite + SendFile + Unpin>(
    io: &mut IO,
    error: ApiError,
) -> io::Result<()> {
    let resp = error.into_response();
    write_response(io, resp, &Method::GET, Version::HTTP_11, false).await?;
    io.shutdown().await.ok();
    linger(io).await;
    Ok(())
}

/// Reads and drops what the client is still sending, for a moment, before the socket is
/// closed: closing with unread bytes makes the kernel reset the connection, and a reset can
/// destroy the answer before the client reads it (nginx's `lingering_close`).
async fn linger<IO: AsyncRead + Unpin>(io: &mut IO) {
    const LINGER: Duration = Duration::from_secs(2);
    const MOST: u64 = 256 * 1024;
    let mut sink = tokio::io::sink();
    let mut rest = (&mut *io).take(MOST);
    let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut rest, &mut sink)).await;
}

/// Writes `resp`; says whether the connection may carry another request.
async fn write_response<IO: AsyncWrite + SendFile + Unpin>(
    io: &mut IO,
    resp: Response<Body>,
    method: &Method,
    version: Version,
    mut keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // The length the handler declared, else the body's own; HEAD (and a declared 304) keep
    // the length the GET would have had.
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .or_else(|| (!no_body || *method == Method::HEAD).then(|| body.size_hint().exact())?);
    // How the body is delimited: by a length, by chunks, or by closing.
    let framing = match length {
        _ if no_body => Framing::None,
        Some(n) => Framing::Length(n),
        None if version == Version::HTTP_11 => Framing::Chunked,
        None => {
            keep_alive = false;
            Framing::Close
        }
    };
    let mut head = Vec::with_capacity(256);
    let line = if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let reason = status.canonical_reason().unwrap_or("");
    write!(head, "{line} {} {reason}\r\n", status.as_str())?;
    for (name, value) in &parts.headers {
        use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
        if name != CONNECTION && name != TRANSFER_ENCODING && name != CONTENT_LENGTH {
            field(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !parts.headers.contains_key(http::header::DATE) {
        put_date(&mut head);
    }
    if let Some(n) = length {
        write!(head, "content-length: {n}\r\n")?;
    }
    if matches!(framing, Framing::Chunked) {
        field(&mut head, b"transfer-encoding", b"chunked");
    }
    if !keep_alive {
        field(&mut head, b"connection", b"close");
    } else if version == Version::HTTP_10 {
        field(&mut head, b"connection", b"keep-alive");
    }
    head.extend_from_slice(b"\r\n");

    // The head goes out with the first chunk, in one `writev` (tokio's `write_all_buf`
    // writes a chain of buffers vectored when the stream can).
    let mut sent = 0u64;
    if !matches!(framing, Framing::None) {
        let mut frames = Frames {
            body: &mut body,
            ended: false,
            next: None,
        };
        let grew = |sent: &mut u64, len: usize| {
            *sent += len as u64;
            match framing {
                Framing::Length(n) if *sent > n => {
                    Err(io::Error::other("the body is longer than its length"))
                }
                _ => Ok(()),
            }
        };
        while let Some(data) = frames.next().await? {
            grew(&mut sent, data.len())?;
            if let Framing::Length(_) = framing
                && let Some((file, offset)) = sendable(io, &data)
            {
                // Chunks ready now that continue the same file join this `sendfile` (a
                // range across two slices of one memory file), held until it is done.
                let mut len = data.len();
                let mut joined = Vec::new();
                while let Some(more) = frames.ready()? {
                    match crate::mapped::file_of(&more) {
                        Some((next_file, at))
                            if Arc::ptr_eq(&next_file, &file) && at == offset + len as u64 =>
                        {
                            grew(&mut sent, more.len())?;
                            len += more.len();
                            joined.push(more);
                        }
                        _ => {
                            frames.next = Some(more);
                            break;
                        }
                    }
                }
                send_file(io, &head, &file, offset, len).await?;
                drop(joined);
            } else if matches!(framing, Framing::Chunked) {
                write!(head, "{:x}\r\n", data.len())?;
                let mut out = Buf::chain(Buf::chain(head.as_slice(), data), &b"\r\n"[..]);
                io.write_all_buf(&mut out).await?;
            } else {
                io.write_all_buf(&mut Buf::chain(head.as_slice(), data))
                    .await?;
            }
            head.clear();
        }
    }
    if let Framing::Length(n) = framing
        && sent != n
    {
        return Err(io::Error::other("the body is shorter than its length"));
    }
    if matches!(framing, Framing::Chunked) {
        head.extend_from_slice(b"0\r\n\r\n");
    }
    io.write_all(&head).await?;
    io.flush().await?;
    Ok(keep_alive && !matches!(framing, Framing::Close))
}

/// A response body's data chunks (trailers and empty chunks skipped), with a look at the
/// next chunk when it is ready without waiting.
struct Frames<'a> {
    body: &'a mut Body,
    /// The body said it has no more frames (it must not be polled again).
    ended: bool,
    /// A chunk taken by [`Frames::ready`] and not used, to come next.
    next: Option<bytes::Bytes>,
}

impl Frames<'_> {
    /// The next chunk, waiting for it; `None` at the end.
    async fn next(&mut self) -> io::Result<Option<bytes::Bytes>> {
        if let Some(data) = self.next.take() {
            return Ok(Some(data));
        }
        poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// The next chunk if the body has it ready now.
    fn ready(&mut self) -> io::Result<Option<bytes::Bytes>> {
        if let Some(data) = self.next.take() {
            return Ok(Some(data));
        }
        let waker = std::task::Waker::noop();
        match self.poll_chunk(&mut std::task::Context::from_waker(waker)) {
            Poll::Ready(chunk) => chunk,
            Poll::Pending => Ok(None),
        }
    }

    fn poll_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<Option<bytes::Bytes>>> {
        loop {
            if self.ended {
                return Poll::Ready(Ok(None));
            }
            let frame = match Pin::new(&mut *self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.ended = true;
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Some(frame)) => frame.map_err(io::Error::other)?,
            };
            // Trailers are not sent over HTTP/1.1 here.
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Poll::Ready(Ok(Some(data)));
            }
        }
    }
}

/// Chunks smaller than this are written: a `sendfile` call costs more than copying them.
const SEND_FILE_MIN: usize = 16 * 1024;

/// Body bytes this process has sent by `sendfile`.
static SENT_BY_FILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Body bytes this process's HTTP/1.1 connections have sent by `sendfile`, since start.
pub fn sent_by_file() -> u64 {
    SENT_BY_FILE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The memory file `data` lies in and its offset there, when `io` can send from files and
/// `data` is worth it.
fn sendable<IO: SendFile>(io: &IO, data: &[u8]) -> Option<(Arc<std::fs::File>, u64)> {
    if data.len() < SEND_FILE_MIN || !io.can_send_file() {
        return None;
    }
    crate::mapped::file_of(data)
}

/// Writes `head` (telling the kernel the body follows at once), then `len` bytes of `file`
/// from `offset` by `sendfile`.
async fn send_file<IO: SendFile + Unpin>(
    io: &mut IO,
    head: &[u8],
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> io::Result<()> {
    let mut written = 0;
    while written < head.len() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write_more(cx, &head[written..])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    let mut sent = 0;
    while sent < len {
        let at = offset + sent as u64;
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_send_file(cx, file, at, len - sent)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
        SENT_BY_FILE.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// A connection that can send a file's bytes without copying them through user space: a
/// cleartext TCP socket, not TLS. Responses whose chunks live in memory files
/// ([`crate::mapped`]) go out by `sendfile` where [`SendFile::can_send_file`] says so.
pub trait SendFile {
    /// Whether the other methods work on this connection.
    fn can_send_file(&self) -> bool {
        false
    }

    /// Writes some of `data`, telling the kernel more follows at once (`MSG_MORE`), so a
    /// head and its body leave in the same segments.
    fn poll_write_more(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let _ = (cx, data);
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }

    /// Sends up to `len` bytes of `file` from `offset`; how many went.
    fn poll_send_file(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let _ = (cx, file, offset, len);
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

/// `SendFile` through a pointer to a connection (`&mut` in the loop's helpers, `Box` where a
/// task holds it).
macro_rules! send_file_through {
    ($($pointer:ty),*) => {$(
        impl<T: SendFile + Unpin + ?Sized> SendFile for $pointer {
            fn can_send_file(&self) -> bool {
                (**self).can_send_file()
            }

            fn poll_write_more(
                mut self: Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut **self).poll_write_more(cx, data)
            }

            fn poll_send_file(
                mut self: Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                file: &std::fs::File,
                offset: u64,
                len: usize,
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut **self).poll_send_file(cx, file, offset, len)
            }
        }
    )*};
}

send_file_through!(&mut T, Box<T>);

/// TLS encrypts in user space: its bytes are always written.
impl<S> SendFile for super::lean_tls::LeanTls<S> {}

/// The same for rustls's buffered stream (clients that offer HTTP/2).
impl<S> SendFile for tokio_rustls::server::TlsStream<S> {}

#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

fn field(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Adds the `Date` header, formatted once a second per thread.
fn put_date(head: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| {
        if *at != secs {
            *at = secs;
            *value = httpdate::fmt_http_date(now).into_bytes();
        }
        field(head, b"date", value);
    });
}
