//! h3's QUIC traits over the edge's own QUIC endpoint ([`super::quic`]), written for a
//! server that sends cached bytes.
//!
//! `h3-quinn` hands every frame to quinn as a slice, so quinn copies each response body into
//! a fresh allocation before it copies it again into packets: 6 % of the edge's samples
//! under HTTP/3 load went to that first copy alone. Here a body chunk reaches the QUIC
//! stream as the [`Bytes`] the cache holds, by reference count ([`send_body`]), and the only
//! copy is the one into the packet being encrypted.
//!
//! h3 wraps a body chunk in its own `WriteBuf`, which does not give the chunk back, so
//! [`send_body`] lends the chunk to [`SendStream::send_data`] through a thread-local for the
//! duration of one poll: h3 calls `send_data` synchronously from the first poll of its
//! `send_data` future. The stream takes the lent chunk only when it is, byte for byte, the
//! same memory as the frame's payload; anything else (headers, h3's own frames, a chunk
//! that was not lent) is copied once, as `h3-quinn` would.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::quic::{self as h3q, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn_proto::{ConnectionError, Dir, StreamId as QuicStreamId, VarInt};

use super::bounds::{CONTROL_FRAME_MAX, EXCESSIVE_LOAD, FrameWatch};
use super::quic;

thread_local! {
    /// The body chunk [`send_body`] lends to the `send_data` call it is polling.
    static LENT: Cell<Option<Bytes>> = const { Cell::new(None) };
}

/// Response body bytes handed to quinn by reference, since start.
static BODY_LENT: AtomicU64 = AtomicU64::new(0);
/// Response body bytes that had to be copied because h3 framed them where the lent chunk
/// could not be recognised (a change in h3's `send_data` would show here first).
static BODY_COPIED: AtomicU64 = AtomicU64::new(0);

/// Body bytes this process's HTTP/3 responses handed to quinn without a copy, and those it
/// copied, since start.
pub fn body_bytes() -> (u64, u64) {
    (
        BODY_LENT.load(Ordering::Relaxed),
        BODY_COPIED.load(Ordering::Relaxed),
    )
}

/// Sends `chunk` as one DATA frame, its bytes handed to quinn without a copy.
pub async fn send_body(
    stream: &mut h3::server::RequestStream<BidiStream, Bytes>,
    chunk: Bytes,
) -> Result<(), h3::error::StreamError> {
    let mut lend = Some(chunk.clone());
    let mut sending = pin!(stream.send_data(chunk));
    poll_fn(|cx| {
        LENT.set(lend.take());
        let polled = sending.as_mut().poll(cx);
        LENT.set(None);
        polled
    })
    .await
}

/// Waits until the client has acknowledged every byte of `stream`'s response (call it after
/// `finish`), or stopped the stream, or the connection is gone.
pub async fn delivered(
    stream: &h3::server::RequestStream<BidiStream, Bytes>,
    conn: &quic::Connection,
) {
    let Ok(id) = VarInt::from_u64(stream.id().into_inner()) else {
        return;
    };
    let id = QuicStreamId::from(id);
    poll_fn(|cx| conn.poll_delivered(cx, id)).await;
}

/// A connection as h3 sees it.
pub struct Connection {
    conn: quic::Connection,
    /// Bytes each request stream may deliver ([`super::bounds::request_budget`]).
    budget: u64,
}

impl Connection {
    /// `conn` for h3, each request stream of its peer held to `budget` bytes and its control
    /// stream to frames of [`CONTROL_FRAME_MAX`].
    pub fn new(conn: quic::Connection, budget: u64) -> Self {
        Self { conn, budget }
    }
}

impl h3q::Connection<Bytes> for Connection {
    type RecvStream = RecvStream;
    type OpenStreams = Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionErrorIncoming>> {
        let id = ready!(self.conn.poll_accept(cx, Dir::Uni)).map_err(connection_error)?;
        let watch = FrameWatch::new(CONTROL_FRAME_MAX);
        Poll::Ready(Ok(RecvStream::lasting(self.conn.clone(), id, watch)))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, ConnectionErrorIncoming>> {
        let id = ready!(self.conn.poll_accept(cx, Dir::Bi)).map_err(connection_error)?;
        Poll::Ready(Ok(BidiStream::new(&self.conn, id, self.budget)))
    }

    fn opener(&self) -> Opener {
        Opener {
            conn: self.conn.clone(),
            budget: self.budget,
        }
    }
}

impl h3q::OpenStreams<Bytes> for Connection {
    type BidiStream = BidiStream;
    type SendStream = SendStream;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, StreamErrorIncoming>> {
        open_bidi(&self.conn, self.budget, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream, StreamErrorIncoming>> {
        open_send(&self.conn, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.conn.close(varint(code.value()), reason);
    }
}

fn open_bidi(
    conn: &quic::Connection,
    budget: u64,
    cx: &mut Context<'_>,
) -> Poll<Result<BidiStream, StreamErrorIncoming>> {
    let id = ready!(conn.poll_open(cx, Dir::Bi)).map_err(lost)?;
    Poll::Ready(Ok(BidiStream::new(conn, id, budget)))
}

fn open_send(
    conn: &quic::Connection,
    cx: &mut Context<'_>,
) -> Poll<Result<SendStream, StreamErrorIncoming>> {
    let id = ready!(conn.poll_open(cx, Dir::Uni)).map_err(lost)?;
    Poll::Ready(Ok(SendStream::new(conn.clone(), id)))
}

/// Opens streams on a connection (h3 opens its control and QPACK streams with one).
#[derive(Clone)]
pub struct Opener {
    conn: quic::Connection,
    budget: u64,
}

impl h3q::OpenStreams<Bytes> for Opener {
    type BidiStream = BidiStream;
    type SendStream = SendStream;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, StreamErrorIncoming>> {
        open_bidi(&self.conn, self.budget, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream, StreamErrorIncoming>> {
        open_send(&self.conn, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.conn.close(varint(code.value()), reason);
    }
}

/// A request stream: both halves.
pub struct BidiStream {
    send: SendStream,
    recv: RecvStream,
}

impl BidiStream {
    /// Both halves of stream `id`, whose peer may send `budget` bytes in all.
    fn new(conn: &quic::Connection, id: QuicStreamId, budget: u64) -> Self {
        Self {
            send: SendStream::new(conn.clone(), id),
            recv: RecvStream::new(conn.clone(), id, Guard::Budget(budget)),
        }
    }
}

impl h3q::BidiStream<Bytes> for BidiStream {
    type SendStream = SendStream;
    type RecvStream = RecvStream;

    fn split(self) -> (SendStream, RecvStream) {
        (self.send, self.recv)
    }
}

impl h3q::SendStream<Bytes> for BidiStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl h3q::RecvStream for BidiStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

/// The sending half of a stream, holding at most one frame not yet taken by QUIC.
///
/// Dropped before it was finished or reset, it resets the stream with
/// `H3_REQUEST_CANCELLED`, so a response cut short never looks complete to the client.
pub struct SendStream {
    conn: quic::Connection,
    id: QuicStreamId,
    /// The frame in flight: its header and its payload, each possibly empty.
    frame: [Bytes; 2],
    closed: bool,
}

impl SendStream {
    fn new(conn: quic::Connection, id: QuicStreamId) -> Self {
        Self {
            conn,
            id,
            frame: [Bytes::new(), Bytes::new()],
            closed: false,
        }
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        if !self.closed {
            self.conn
                .reset(self.id, varint(Code::H3_REQUEST_CANCELLED.value()));
        }
    }
}

/// Splits a frame (h3's `WriteBuf`: its header, then its payload) into header and payload,
/// taking the payload from `lent` (without a copy) when `lent` is exactly the payload's
/// memory; whatever is not lent is copied.
fn frame_parts(mut buf: impl Buf, lent: Option<Bytes>) -> [Bytes; 2] {
    let total = buf.remaining();
    if let Some(body) = lent.filter(|body| !body.is_empty() && body.len() <= total) {
        let head = buf.copy_to_bytes(total - body.len());
        let rest = buf.chunk();
        if rest.as_ptr() == body.as_ptr() && rest.len() == body.len() {
            BODY_LENT.fetch_add(body.len() as u64, Ordering::Relaxed);
            return [head, body];
        }
        let rest = buf.copy_to_bytes(buf.remaining());
        BODY_COPIED.fetch_add(body.len() as u64, Ordering::Relaxed);
        return [head, rest];
    }
    [buf.copy_to_bytes(total), Bytes::new()]
}

impl h3q::SendStream<Bytes> for SendStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        loop {
            let Some(first) = self.frame.iter().position(|part| !part.is_empty()) else {
                return Poll::Ready(Ok(()));
            };
            ready!(self.conn.poll_write(cx, self.id, &mut self.frame[first..]))
                .map_err(stream_error)?;
        }
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.frame.iter().any(|part| !part.is_empty()) {
            // h3 waits for poll_ready before its next frame; anything else is a bug here.
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "a frame was sent before the previous one was taken".into(),
                ),
            });
        }
        self.frame = frame_parts(data.into(), LENT.take());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.closed = true;
        Poll::Ready(self.conn.finish(self.id).map_err(stream_error))
    }

    fn reset(&mut self, reset_code: u64) {
        self.closed = true;
        self.conn.reset(self.id, varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.id)
    }
}

/// The receiving half of a stream. Dropped before its end, it asks the peer to stop sending
/// with `H3_NO_ERROR` (RFC 9114 §4.1: the response does not need the rest of the request).
pub struct RecvStream {
    conn: quic::Connection,
    id: QuicStreamId,
    closed: bool,
    /// Whether each chunk read is copied out of the datagram it arrived in (see
    /// [`RecvStream::lasting`]).
    copy: bool,
    guard: Guard,
}

/// What a stream may still deliver ([`super::bounds`]).
enum Guard {
    /// This many bytes more (a request stream).
    Budget(u64),
    /// Frames no longer than the watch allows (the peer's control stream).
    Frames(Box<FrameWatch>),
}

impl RecvStream {
    fn new(conn: quic::Connection, id: QuicStreamId, guard: Guard) -> Self {
        Self {
            conn,
            id,
            closed: false,
            copy: false,
            guard,
        }
    }

    /// A stream that lives as long as its connection: the peer's control and QPACK streams,
    /// a few bytes each. h3 keeps what it has read of them buffered, and a chunk as read is
    /// a view of the whole received datagram (about 1.4 KB), so each idle connection would
    /// keep one alive; their chunks are copied instead.
    fn lasting(conn: quic::Connection, id: QuicStreamId, watch: FrameWatch) -> Self {
        let mut stream = Self::new(conn, id, Guard::Frames(Box::new(watch)));
        stream.copy = true;
        stream
    }

    /// Checks `chunk` against the stream's guard; past it, the stream (a request) or the
    /// connection (a control stream is critical) is closed with H3_EXCESSIVE_LOAD.
    fn guard(&mut self, chunk: &[u8]) -> Result<(), StreamErrorIncoming> {
        let refused = match &mut self.guard {
            Guard::Budget(left) => match left.checked_sub(chunk.len() as u64) {
                Some(rest) => {
                    *left = rest;
                    return Ok(());
                }
                None => {
                    self.conn.stop(self.id, varint(EXCESSIVE_LOAD));
                    "a request stream sent more than its head may take"
                }
            },
            Guard::Frames(watch) => match watch.feed(chunk) {
                Ok(()) => {
                    if !watch.watching() {
                        // A QPACK stream: nothing to follow, and the watch's memory goes.
                        self.guard = Guard::Budget(u64::MAX);
                    }
                    return Ok(());
                }
                Err(too_long) => {
                    tracing::debug!(
                        frame_type = too_long.frame_type,
                        length = too_long.length,
                        "HTTP/3 control frame too long; connection closed"
                    );
                    self.conn
                        .close(varint(EXCESSIVE_LOAD), b"control frame too long");
                    "a control frame longer than the edge takes"
                }
            },
        };
        self.closed = true;
        Err(StreamErrorIncoming::Unknown(refused.into()))
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if !self.closed {
            self.conn.stop(self.id, varint(Code::H3_NO_ERROR.value()));
        }
    }
}

impl h3q::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let read = ready!(self.conn.poll_read(cx, self.id));
        match read {
            Ok(Some(chunk)) => {
                self.guard(&chunk)?;
                let chunk = match self.copy {
                    true => Bytes::copy_from_slice(&chunk),
                    false => chunk,
                };
                Poll::Ready(Ok(Some(chunk)))
            }
            read => {
                self.closed = true;
                Poll::Ready(read.map_err(stream_error))
            }
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.closed = true;
        self.conn.stop(self.id, varint(error_code));
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.id)
    }
}

/// An h3 error code as a QUIC one; codes beyond QUIC's range (none h3 defines) saturate.
fn varint(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

fn stream_id(id: QuicStreamId) -> StreamId {
    // QUIC's stream ids are variable-length integers, which h3's ids accept by definition.
    StreamId::try_from(u64::from(id)).unwrap_or_else(|_| unreachable!("a QUIC stream id"))
}

fn connection_error(e: ConnectionError) -> ConnectionErrorIncoming {
    match e {
        ConnectionError::ApplicationClosed(close) => ConnectionErrorIncoming::ApplicationClose {
            error_code: close.error_code.into_inner(),
        },
        ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn lost(e: ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

fn stream_error(e: quic::StreamError) -> StreamErrorIncoming {
    match e {
        quic::StreamError::Lost(e) => lost(e),
        quic::StreamError::Stopped(code) | quic::StreamError::Reset(code) => {
            StreamErrorIncoming::StreamTerminated {
                error_code: code.into_inner(),
            }
        }
        closed @ quic::StreamError::Closed => StreamErrorIncoming::Unknown(Box::new(closed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &Bytes) -> impl Buf {
        Bytes::from_static(&[0x00, 0x44, 0x00]).chain(body.clone())
    }

    #[test]
    fn a_lent_payload_reaches_quinn_as_the_same_memory() {
        let body = Bytes::from(vec![7u8; 1024]);
        let [head, payload] = frame_parts(frame(&body), Some(body.clone()));
        assert_eq!(&head[..], &[0x00, 0x44, 0x00]);
        assert_eq!(payload.as_ptr(), body.as_ptr(), "the payload was copied");
        assert_eq!(payload.len(), body.len());
    }

    #[test]
    fn bytes_that_are_not_the_payload_are_never_taken_for_it() {
        let body = Bytes::from(vec![7u8; 1024]);
        // Equal bytes elsewhere in memory, a prefix of the payload, and a longer chunk.
        let twin = Bytes::from(vec![7u8; 1024]);
        for lent in [
            twin,
            body.slice(..1000),
            Bytes::from(vec![7u8; 2000]),
            Bytes::new(),
        ] {
            let [head, payload] = frame_parts(frame(&body), Some(lent.clone()));
            let mut whole = head.to_vec();
            whole.extend_from_slice(&payload);
            let mut expected = vec![0x00, 0x44, 0x00];
            expected.extend_from_slice(&body);
            assert_eq!(whole, expected, "lent {} bytes", lent.len());
            if !lent.is_empty() {
                assert_ne!(payload.as_ptr(), lent.as_ptr(), "lent {} bytes", lent.len());
            }
        }
    }

    #[test]
    fn a_frame_without_a_lent_payload_is_copied_whole() {
        let body = Bytes::from_static(b"headers");
        let [whole, rest] = frame_parts(frame(&body), None);
        assert_eq!(&whole[..], b"\x00\x44\x00headers");
        assert!(rest.is_empty());
    }
}
