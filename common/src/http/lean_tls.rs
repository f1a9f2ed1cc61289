//! Server-side TLS that holds no buffer while a connection waits.
//!
//! tokio-rustls drives rustls's buffered connection, whose record reader keeps a 4 KiB
//! buffer for as long as the connection lives: 40 MiB for 10,000 idle keep-alive
//! connections. [`LeanTls`] drives rustls's unbuffered API instead and owns every buffer:
//!
//! - A read first lands in a buffer on the stack. Whole records are decrypted from there
//!   straight into the caller's buffer; only a record cut off by the read is copied to the
//!   heap, and that copy is freed once the record is complete.
//! - Writes are encrypted into one outgoing buffer, written as the socket takes them, and the
//!   buffer is freed once it is empty and the connection waits to read.
//! - Decrypted bytes the caller had no room for wait in a buffer freed once they are taken.
//!
//! So a connection idling between requests holds rustls's connection state and nothing else.
//!
//! The server (`server.rs`) gives it to clients that do not offer HTTP/2. rustls 0.23's
//! unbuffered `encrypt` builds each record in a `Vec` and copies it into the caller's buffer,
//! one copy more than the buffered connection makes, which costs HTTP/2's bulk writes 15-21 %
//! more CPU per byte; so HTTP/2 clients stay on tokio-rustls.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest TLS record a peer may send: 16 KiB of plaintext plus the expansion TLS
/// allows (RFC 8446 5.2, RFC 5246 6.2.3) and the header.
const MAX_RECORD: usize = 16_384 + 2_048 + 5;

/// The heap buffer for records cut off by a read; two records, so a read always has room.
const INCOMING: usize = 2 * MAX_RECORD;

/// Plaintext taken by one write: four full records.
const MAX_PLAIN_PER_WRITE: usize = 64 * 1024;

/// Encrypted bytes queued before a write waits for the socket.
const OUTGOING_HIGH: usize = 64 * 1024;

/// The most the outgoing buffer grows to: a write's records on top of a full queue.
const OUTGOING: usize = OUTGOING_HIGH + MAX_PLAIN_PER_WRITE + 4 * 1024;

/// Buffers a thread keeps for its connections' next bursts, and the largest it keeps. An
/// HTTP/1.1 connection gives its buffers back once per response, when it waits for the next
/// request; each pooled buffer is resident, so the pool stays small.
const SPARE_PER_THREAD: usize = 8;
const SPARE_MAX_BYTES: usize = 2 * OUTGOING;

thread_local! {
    /// Buffers given back by connections that went idle. A busy thread reuses them rather
    /// than allocate and zero one per response; an idle connection holds none.
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A zeroed-once buffer of at least `len` bytes.
fn take_buffer(len: usize) -> Vec<u8> {
    let mut buf = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf
}

fn give_buffer(buf: Vec<u8>) {
    if buf.is_empty() || buf.len() > SPARE_MAX_BYTES {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_PER_THREAD {
            spare.push(buf);
        }
    });
}

/// A TLS server connection over `S`, after its handshake ([`accept`]).
pub struct LeanTls<S> {
    conn: UnbufferedServerConnection,
    io: S,
    /// Received TLS bytes not yet processed (part of a record): `incoming[start..end]`.
    incoming: Vec<u8>,
    in_start: usize,
    in_end: usize,
    /// Encrypted bytes not yet written.
    out: Outgoing,
    /// Decrypted bytes the reader has not taken.
    plain: Plain,
    /// The peer sent close_notify or closed its side.
    read_done: bool,
    /// close_notify has been queued.
    write_done: bool,
}

impl<S> std::fmt::Debug for LeanTls<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanTls")
            .field("buffered_in", &(self.in_end - self.in_start))
            .field("buffered_out", &self.out.len())
            .field("read_done", &self.read_done)
            .finish_non_exhaustive()
    }
}

/// Completes a server handshake on `io`. Time it out at the call site.
pub async fn accept<S>(io: S, config: Arc<ServerConfig>) -> io::Result<LeanTls<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut tls = LeanTls {
        conn,
        io,
        incoming: Vec::new(),
        in_start: 0,
        in_end: 0,
        out: Outgoing::default(),
        plain: Plain::default(),
        read_done: false,
        write_done: false,
    };
    poll_fn(|cx| tls.poll_handshake(cx)).await?;
    Ok(tls)
}

/// Bytes that hold any first TLS record whole: enough to see a ClientHello's ALPN offer.
pub const FIRST_RECORD: usize = MAX_RECORD;

/// Whether the ClientHello at the start of `hello` (TLS records as read) offers `protocol` by
/// ALPN: `None` while its first record is incomplete, `Some(false)` for anything that does not
/// parse as one (the handshake itself will say what is wrong). Only the first record is read:
/// a ClientHello split across records counts as not offering, which costs speed, never
/// correctness.
pub fn offers_alpn(hello: &[u8], protocol: &[u8]) -> Option<bool> {
    let mut record = Reader(hello);
    let (Some(content_type), Some(_version), Some(len)) = (record.u8(), record.u16(), record.u16())
    else {
        return None;
    };
    if content_type != 22 || 5 + usize::from(len) > MAX_RECORD {
        return Some(false);
    }
    let body = record.take(usize::from(len))?;
    Some(alpn_in_client_hello(body, protocol).unwrap_or(false))
}

/// `Some(offered)` when `message` starts with a whole ClientHello; `None` when it does not.
fn alpn_in_client_hello(message: &[u8], protocol: &[u8]) -> Option<bool> {
    let mut m = Reader(message);
    if m.u8()? != 1 {
        return None;
    }
    let len = (usize::from(m.u8()?) << 16) | usize::from(m.u16()?);
    let mut hello = Reader(m.take(len)?);
    hello.take(2 + 32)?; // version, random
    hello.vec8()?; // session id
    hello.vec16()?; // cipher suites
    hello.vec8()?; // compression methods
    if hello.0.is_empty() {
        return Some(false); // no extensions
    }
    let mut extensions = Reader(hello.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == 16 {
            let mut names = Reader(Reader(data).vec16()?);
            while !names.0.is_empty() {
                if names.vec8()? == protocol {
                    return Some(true);
                }
            }
            return Some(false);
        }
    }
    Some(false)
}

/// A cursor over bytes whose reads fail, rather than panic, past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Where [`LeanTls::process`] left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The handshake needs more bytes from the peer.
    Handshaking,
    /// Application data may flow; every whole record received has been processed.
    Open,
    /// Both sides have sent close_notify.
    Closed,
}

/// What [`LeanTls::process`] should encrypt once the connection is open.
enum Encrypt<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

impl<S> LeanTls<S> {
    /// The protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The stream beneath.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LeanTls<S> {
    /// Runs rustls over `input` (TLS bytes, front first) until it waits for more input or
    /// lets data flow, encrypting `send` then. Decrypted data goes to `dest`, and what does
    /// not fit to `plain`; handshake and alert records to `out`. Returns how many bytes of
    /// `input` are done with, and where the connection is.
    fn process(
        &mut self,
        input: &mut [u8],
        mut dest: Option<&mut ReadBuf<'_>>,
        mut send: Encrypt<'_>,
    ) -> io::Result<(usize, Outcome)> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut input[used..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => return Err(self.fail(e, &mut input[used + discard..])),
            };
            let mut outcome = None;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                drop(records);
                                return Err(self.fail(e, &mut input[used + discard..]));
                            }
                        };
                        self.plain.deliver(record.payload, dest.as_deref_mut());
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => self.out.encode(&mut encode),
                // Queued bytes leave in order whenever the socket takes them.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::BlockedHandshake => outcome = Some(Outcome::Handshaking),
                ConnectionState::PeerClosed => self.read_done = true,
                ConnectionState::Closed => {
                    self.read_done = true;
                    outcome = Some(Outcome::Closed);
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut send, Encrypt::Nothing) {
                        Encrypt::Nothing => {}
                        Encrypt::Data(data) => {
                            self.out.encrypt(|spare| traffic.encrypt(data, spare))?;
                        }
                        Encrypt::CloseNotify => {
                            self.out
                                .encrypt(|spare| traffic.queue_close_notify(spare))?;
                        }
                    }
                    outcome = Some(Outcome::Open);
                }
                ConnectionState::ReadEarlyData(_) => {
                    return Err(invalid("early data arrived but none was offered"));
                }
                _ => return Err(invalid("an unknown rustls connection state")),
            }
            used += discard;
            if let Some(outcome) = outcome {
                return Ok((used, outcome));
            }
        }
    }

    /// Turns a rustls error into an I/O error, first queueing the alert rustls wants the
    /// peer to see and writing it if the socket takes it at once. rustls hands the alert out
    /// on the next call, before it looks at any input; that one call is all it gets, with
    /// `rest`, the input past what it said to discard, as its contract asks. A second call
    /// would read on: given an empty buffer where rustls had begun joining a handshake message
    /// in place, rustls 0.23.46 panics slicing past its end (the `tls_hello` fuzz target's
    /// first finding), and given more bad records it would raise a second fatal alert, which
    /// it asserts never happens.
    fn fail(&mut self, error: rustls::Error, rest: &mut [u8]) -> io::Error {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            self.out.encode(&mut encode);
        }
        self.write_done = true;
        let mut cx = Context::from_waker(Waker::noop());
        let _ = self.out.poll_send(&mut self.io, &mut cx);
        invalid(error)
    }

    /// Processes `input`, TLS bytes read while nothing was carried over, and keeps on the
    /// heap only what rustls could not use yet (a record cut off by the read).
    fn absorb(&mut self, input: &mut [u8], dest: Option<&mut ReadBuf<'_>>) -> io::Result<()> {
        let (used, _) = self.process(input, dest, Encrypt::Nothing)?;
        let rest = &input[used..];
        if !rest.is_empty() {
            // `input` is at most one read of MAX_RECORD, so INCOMING holds its rest and room
            // for the rest of the record.
            if self.incoming.len() < INCOMING {
                self.incoming = take_buffer(INCOMING);
            }
            self.incoming[..rest.len()].copy_from_slice(rest);
            self.in_start = 0;
            self.in_end = rest.len();
        }
        Ok(())
    }

    /// Processes the heap buffer's bytes.
    fn process_buffered(
        &mut self,
        dest: Option<&mut ReadBuf<'_>>,
        send: Encrypt<'_>,
    ) -> io::Result<Outcome> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let result = self.process(&mut incoming[self.in_start..self.in_end], dest, send);
        self.incoming = incoming;
        let (used, outcome) = result?;
        self.in_start += used;
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        }
        Ok(outcome)
    }

    /// Gives back every buffer that holds nothing: called when the connection waits.
    fn release(&mut self) {
        if self.in_start == self.in_end {
            give_buffer(std::mem::take(&mut self.incoming));
        }
        self.out.release();
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let outcome = self.process_buffered(None, Encrypt::Nothing)?;
            ready!(self.out.poll_send(&mut self.io, cx))?;
            match outcome {
                Outcome::Open => {
                    self.release();
                    return Poll::Ready(Ok(()));
                }
                Outcome::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed during the TLS handshake",
                    )));
                }
                Outcome::Handshaking => {
                    if ready!(self.poll_input(cx, None))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed during the TLS handshake",
                        )));
                    }
                }
            }
        }
    }

    /// Reads what the socket holds and processes it; decrypted data to `dest` first. Ready
    /// with the bytes read, 0 at the end of the stream.
    fn poll_input(
        &mut self,
        cx: &mut Context<'_>,
        mut dest: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<usize>> {
        if self.in_start == self.in_end {
            // Nothing carried over: read on the stack, and keep only a cut-off record.
            let mut stack = [MaybeUninit::<u8>::uninit(); MAX_RECORD];
            let mut raw = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut raw))?;
            let n = raw.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            self.absorb(raw.filled_mut(), dest.as_deref_mut())?;
            return Poll::Ready(Ok(n));
        }
        // Carried-over bytes live in a buffer of INCOMING bytes (`absorb`).
        if self.in_end == self.incoming.len() {
            self.incoming.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
            if self.in_end == self.incoming.len() {
                return Poll::Ready(Err(invalid("a TLS record larger than TLS allows")));
            }
        }
        let mut raw = ReadBuf::new(&mut self.incoming[self.in_end..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut raw))?;
        let n = raw.filled().len();
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed in the middle of a TLS record",
            )));
        }
        self.in_end += n;
        self.process_buffered(dest, Encrypt::Nothing)?;
        Poll::Ready(Ok(n))
    }

    /// Encrypts `data` into the outgoing buffer.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        match self.process_buffered(None, Encrypt::Data(data))? {
            Outcome::Open => Ok(()),
            Outcome::Handshaking => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "a write before the TLS handshake finished",
            )),
            Outcome::Closed => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Writes what is queued without waiting; an error only if the socket failed.
    fn send_now(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.out.poll_send(&mut self.io, cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for LeanTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.plain.take(buf) || this.read_done {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            match this.poll_input(cx, Some(buf)) {
                Poll::Pending => {
                    this.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // A peer that closes without close_notify ends the stream the same way:
                // HTTP frames its own messages.
                Poll::Ready(Ok(0)) => this.read_done = true,
                Poll::Ready(Ok(_)) => {}
            }
            // Answers rustls queued while reading (a key update) go out as they can.
            this.send_now(cx)?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LeanTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.out.len() >= OUTGOING_HIGH {
            match this.out.poll_send(&mut this.io, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.out.len() >= OUTGOING_HIGH => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        let mut taken = 0;
        for buf in bufs {
            let take = buf.len().min(MAX_PLAIN_PER_WRITE - taken);
            if take == 0 {
                continue;
            }
            this.encrypt(&buf[..take])?;
            taken += take;
            if taken == MAX_PLAIN_PER_WRITE {
                break;
            }
        }
        this.send_now(cx)?;
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.out.poll_send(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_done {
            this.write_done = true;
            this.process_buffered(None, Encrypt::CloseNotify)?;
        }
        ready!(this.out.poll_send(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Encrypted bytes waiting for the socket: `buf[start..end]`.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Outgoing {
    fn len(&self) -> usize {
        self.end - self.start
    }

    /// The room after the queued bytes.
    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    /// Makes room for `more` bytes after the queued ones.
    fn reserve(&mut self, more: usize) {
        if self.buf.is_empty() {
            // Sized to the first write, not the most a connection may queue: an answer of a
            // few hundred bytes should not make a pool buffer of 132 KiB resident.
            self.buf = take_buffer(more.max(MAX_RECORD));
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + more {
            self.buf.resize(self.end + more, 0);
        }
    }

    fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Queues what `write` encrypts into the room it is given.
    fn encrypt(
        &mut self,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
    ) -> io::Result<()> {
        loop {
            match write(self.spare()) {
                Ok(n) => {
                    self.filled(n);
                    return Ok(());
                }
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    self.reserve(required_size);
                }
                Err(EncryptError::EncryptExhausted) => {
                    return Err(io::Error::other("TLS record sequence exhausted"));
                }
            }
        }
    }

    /// Queues a handshake or alert record.
    fn encode<Data>(&mut self, record: &mut EncodeTlsData<'_, Data>) {
        loop {
            match record.encode(self.spare()) {
                Ok(n) => return self.filled(n),
                Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    self.reserve(required_size);
                }
                Err(EncodeError::AlreadyEncoded) => return,
            }
        }
    }

    fn release(&mut self) {
        if self.start == self.end {
            give_buffer(std::mem::take(&mut self.buf));
        }
    }

    /// Writes queued bytes until none are left or the socket is full.
    fn poll_send<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.start < self.end {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.start..self.end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
        }
        self.start = 0;
        self.end = 0;
        Poll::Ready(Ok(()))
    }
}

/// Decrypted bytes the reader had no room for: `buf[at..]`.
#[derive(Default)]
struct Plain {
    buf: Vec<u8>,
    at: usize,
}

impl Plain {
    /// Hands `data` to `dest` if nothing is waiting ahead of it, and keeps what does not fit.
    fn deliver(&mut self, data: &[u8], dest: Option<&mut ReadBuf<'_>>) {
        let mut data = data;
        if let Some(dest) = dest
            && self.at == self.buf.len()
        {
            let n = data.len().min(dest.remaining());
            dest.put_slice(&data[..n]);
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
    }

    /// Moves waiting bytes into `dest`; whether there were any.
    fn take(&mut self, dest: &mut ReadBuf<'_>) -> bool {
        if self.at == self.buf.len() {
            return false;
        }
        let n = (self.buf.len() - self.at).min(dest.remaining());
        dest.put_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        if self.at == self.buf.len() {
            *self = Self::default();
        }
        true
    }
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::time::Duration;

    use super::*;
    use crate::http::tls;
    use rustls::version::{TLS12, TLS13};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream as ClientTls;

    struct Pair {
        server: LeanTls<DuplexStream>,
        client: ClientTls<DuplexStream>,
    }

    /// A client trusting `pem`'s certificate, speaking `versions` and offering `alpn`
    /// (`tls::client_config` offers both versions and a fixed ALPN list).
    fn client_config(
        pem: &tls::CertPem,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.cert.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A handshake over an in-memory pipe of `pipe` bytes (a small pipe cuts records across
    /// reads), the client offering only `version`.
    async fn pair(pipe: usize, version: &'static rustls::SupportedProtocolVersion) -> Pair {
        let pem = tls::self_signed(&["localhost"]).unwrap();
        let server_config = tls::server_config(&pem).unwrap();
        let (c, s) = tokio::io::duplex(pipe);
        let connector = TlsConnector::from(client_config(&pem, &[version], &[b"http/1.1"]));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(accept(s, server_config), connector.connect(name, c));
        Pair {
            server: server.unwrap(),
            client: client.unwrap(),
        }
    }

    /// A xorshift generator: reproducible noise for the tests.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut next = xorshift(seed);
        (0..len).map(|_| next() as u8).collect()
    }

    /// The server echoes what it reads through a small buffer until the client closes.
    async fn echo(mut server: LeanTls<DuplexStream>, read_size: usize) -> LeanTls<DuplexStream> {
        let mut buf = vec![0; read_size];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                server.shutdown().await.unwrap();
                return server;
            }
            server.write_all(&buf[..n]).await.unwrap();
            server.flush().await.unwrap();
        }
    }

    /// Sends `data` in uneven pieces and reads the echo back whole.
    async fn round_trip(client: &mut ClientTls<DuplexStream>, data: &[u8]) -> Vec<u8> {
        let (mut read, mut write) = tokio::io::split(client);
        let sender = async {
            let mut at = 0;
            let mut step = 1;
            while at < data.len() {
                let end = (at + step).min(data.len());
                write.write_all(&data[at..end]).await.unwrap();
                write.flush().await.unwrap();
                at = end;
                step = step * 7 % 40_000 + 1;
            }
        };
        let receiver = async {
            let mut back = vec![0; data.len()];
            read.read_exact(&mut back).await.unwrap();
            back
        };
        tokio::join!(sender, receiver).1
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_intact_over_tls_1_3_and_1_2() {
        for (version, pipe, read_size) in [
            (&TLS13, 64 * 1024, 16 * 1024),
            (&TLS13, 700, 100),
            (&TLS12, 64 * 1024, 16 * 1024),
            (&TLS12, 1_000, 3),
        ] {
            let Pair { server, mut client } = pair(pipe, version).await;
            assert_eq!(server.alpn_protocol(), Some(b"http/1.1".as_slice()));
            let echoing = tokio::spawn(echo(server, read_size));
            let data = random(300_000, pipe as u64);
            let back = round_trip(&mut client, &data).await;
            assert!(back == data, "{version:?}, pipe {pipe}: the echo differs");
            client.shutdown().await.unwrap();
            // The server's close_notify ends the client's stream cleanly.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            echoing.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let Pair { server, mut client } = pair(4096, &TLS13).await;
        let echoing = tokio::spawn(echo(server, 8192));
        let first = random(100_000, 1);
        assert!(round_trip(&mut client, &first).await == first);
        client.get_mut().1.refresh_traffic_keys().unwrap();
        let second = random(100_000, 2);
        assert!(round_trip(&mut client, &second).await == second);
        client.shutdown().await.unwrap();
        echoing.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiting_connection_holds_no_buffer() {
        let Pair {
            mut server,
            mut client,
        } = pair(64 * 1024, &TLS13).await;
        // A request, answered with more than one record, then nothing.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        client.flush().await.unwrap();
        let mut request = [0; 18];
        server.read_exact(&mut request).await.unwrap();
        let answer = random(50_000, 3);
        server.write_all(&answer).await.unwrap();
        server.flush().await.unwrap();
        let mut got = vec![0; answer.len()];
        client.read_exact(&mut got).await.unwrap();
        assert!(got == answer);
        // The server waits for the next request.
        let mut next = [0; 16];
        let waiting = tokio::time::timeout(Duration::from_millis(50), server.read(&mut next));
        assert!(waiting.await.is_err(), "nothing was sent");
        assert_eq!(server.incoming.capacity(), 0);
        assert_eq!(server.out.buf.capacity(), 0);
        assert_eq!(server.plain.buf.capacity(), 0);
        // Having given its buffers back, it reads the next request as before.
        client
            .write_all(b"GET /two HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        client.flush().await.unwrap();
        let mut two = [0; 21];
        server.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"GET /two HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_record_cut_across_reads_is_kept_until_whole() {
        let Pair { mut server, client } = pair(64 * 1024, &TLS13).await;
        // Encrypt a request on the client side, and deliver its record a byte at a time.
        let (mut pipe, client_tls) = client.into_inner();
        let mut record = Vec::new();
        let mut client_tls = client_tls;
        std::io::Write::write_all(&mut client_tls.writer(), b"hello over a slow link").unwrap();
        client_tls.write_tls(&mut record).unwrap();
        let reading = tokio::spawn(async move {
            let mut got = [0; 22];
            server.read_exact(&mut got).await.unwrap();
            (got, server)
        });
        for byte in &record {
            pipe.write_all(std::slice::from_ref(byte)).await.unwrap();
            tokio::task::yield_now().await;
        }
        let (got, mut server) = reading.await.unwrap();
        assert_eq!(&got, b"hello over a slow link");
        let mut next = [0; 16];
        let waiting = tokio::time::timeout(Duration::from_millis(50), server.read(&mut next));
        assert!(waiting.await.is_err(), "nothing more was sent");
        assert_eq!(
            server.incoming.capacity(),
            0,
            "released once the record was whole"
        );
    }

    #[tokio::test]
    async fn a_damaged_record_is_refused_and_the_client_told() {
        let Pair { mut server, client } = pair(64 * 1024, &TLS13).await;
        let (mut pipe, mut client_tls) = client.into_inner();
        let mut record = Vec::new();
        std::io::Write::write_all(&mut client_tls.writer(), b"GET / HTTP/1.1\r\n\r\n").unwrap();
        client_tls.write_tls(&mut record).unwrap();
        let last = record.len() - 1;
        record[last] ^= 0x40;
        pipe.write_all(&record).await.unwrap();
        let mut buf = [0; 64];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // The alert reached the client: bad_record_mac.
        // (after the session tickets the server sent when the handshake ended)
        drop(server);
        let mut sent = Vec::new();
        pipe.read_to_end(&mut sent).await.unwrap();
        let mut sent = &sent[..];
        let refused = loop {
            assert!(!sent.is_empty(), "no alert came");
            client_tls.read_tls(&mut sent).unwrap();
            if let Err(e) = client_tls.process_new_packets() {
                break e;
            }
        };
        assert!(
            matches!(
                refused,
                rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
            ),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_that_closes_mid_handshake_is_an_error() {
        let pem = tls::self_signed(&["localhost"]).unwrap();
        let config = tls::server_config(&pem).unwrap();
        let (mut c, s) = tokio::io::duplex(4096);
        // The start of a ClientHello, then the end of the stream.
        c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        drop(c);
        let err = accept(s, config.clone()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        // Not TLS at all.
        let (mut c, s) = tokio::io::duplex(4096);
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = accept(s, config).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// A ClientHello as rustls's client sends it, offering `alpn`.
    pub(crate) fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let pem = tls::self_signed(&["localhost"]).unwrap();
        let config = client_config(&pem, &[&TLS13, &TLS12], alpn);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(config, name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        hello
    }

    #[test]
    fn the_alpn_offer_is_read_from_a_client_hello() {
        let both = client_hello(&[b"h2", b"http/1.1"]);
        assert_eq!(offers_alpn(&both, b"h2"), Some(true));
        assert_eq!(offers_alpn(&both, b"http/1.1"), Some(true));
        assert_eq!(offers_alpn(&both, b"h3"), Some(false));
        let one = client_hello(&[b"http/1.1"]);
        assert_eq!(offers_alpn(&one, b"h2"), Some(false));
        assert_eq!(offers_alpn(&client_hello(&[]), b"h2"), Some(false));
        // Until its record is whole, the answer waits; then it no longer depends on what
        // follows.
        for cut in 0..both.len() {
            assert_eq!(offers_alpn(&both[..cut], b"h2"), None, "cut at {cut}");
        }
        let mut more = both.clone();
        more.extend_from_slice(b"anything after");
        assert_eq!(offers_alpn(&more, b"h2"), Some(true));
        // Not TLS, or not a handshake.
        assert_eq!(offers_alpn(b"GET / HTTP/1.1\r\n\r\n", b"h2"), Some(false));
        assert_eq!(offers_alpn(&[21, 3, 3, 0, 2, 2, 40], b"h2"), Some(false));
    }

    /// A ClientHello whose handshake header claims more than its record holds (131,317
    /// bytes): rustls starts joining the message in place, then refuses it. Handing rustls an
    /// empty buffer after that error panicked inside rustls (the `tls_hello` fuzz target's
    /// first finding, kept in fuzz/regressions/tls_hello).
    #[tokio::test]
    async fn a_client_hello_refused_mid_message_fails_the_handshake_without_panicking() {
        let mut hello = client_hello(&[b"http/1.1"]);
        hello[6..9].copy_from_slice(&[0x02, 0x00, 0xf5]);
        let pem = tls::self_signed(&["localhost"]).unwrap();
        let config = tls::server_config(&pem).unwrap();
        let (mut c, s) = tokio::io::duplex(4096);
        c.write_all(&hello).await.unwrap();
        let accepted = tokio::spawn(accept(s, config)).await;
        let err = accepted.expect("the handshake task panicked").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn damaged_client_hellos_are_answered_without_panicking() {
        let hello = client_hello(&[b"h2", b"http/1.1"]);
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut damaged = hello.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % damaged.len();
                damaged[at] = next() as u8;
            }
            let cut = (next() as usize) % (damaged.len() + 1);
            let _ = offers_alpn(&damaged[..cut], b"h2");
            let noise: Vec<u8> = (0..next() % 600).map(|_| next() as u8).collect();
            let _ = offers_alpn(&noise, b"h2");
        }
    }
}
