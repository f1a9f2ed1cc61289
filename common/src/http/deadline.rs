//! Deadlines on a connection's byte stream, for clients that stop reading or never leave.
//!
//! - **Send timeout** (nginx's `send_timeout`): a write the peer is not draining may wait at
//!   most this long for the socket to take any byte. A slow reader that keeps taking bytes
//!   is served; one that stopped reading is cut off instead of pinning a response's memory.
//! - **Idle timeout** (nginx's `keepalive_timeout`): a connection that moves no byte either
//!   way for this long is closed.
//! - **Minimum send rate** (Kestrel's `MinResponseDataRate`, Apache's `MinRate`): while the
//!   server has bytes the peer is not taking as fast as they are offered, the peer must take
//!   at least `rate` bytes per `window`. A reader that trickles a byte now and then defeats
//!   the send timeout but not this, so it cannot hold a response's memory for hours.
//!
//! The wrapper sits under TLS and hyper, so it covers HTTP/1.1 and HTTP/2 alike.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The slowest a peer may read while the server waits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per second; 0 turns the check off.
    pub bytes_per_sec: u64,
    /// The span the rate is measured over (a grace period for slow starts and short stalls).
    pub window: Duration,
}

impl MinRate {
    /// No minimum.
    pub const OFF: Self = Self {
        bytes_per_sec: 0,
        window: Duration::from_secs(1),
    };

    fn bytes_per_window(&self) -> u64 {
        let per_window = self.bytes_per_sec as f64 * self.window.as_secs_f64();
        per_window as u64
    }
}

/// A stream whose writes must progress within `send`, whose reader must keep up a minimum
/// rate while writes wait on it, and which closes after `idle` without traffic.
///
/// Moving bytes only records the time; the one timer is re-armed when it fires early, so the
/// serve path pays a clock read per read or write, not a timer update.
pub struct Deadlines<S> {
    inner: S,
    send: Duration,
    idle: Duration,
    /// When a byte last moved either way.
    last: Instant,
    /// Since when a write has been waiting on the peer.
    stalled_since: Option<Instant>,
    min_rate: MinRate,
    /// While writes are backed up: when the current rate window began, and the bytes the
    /// peer has taken since. Ends when a flush completes (nothing left waiting).
    backlog: Option<(Instant, u64)>,
    /// Never later than the earliest deadline that can apply (`last + min(send, idle)`).
    timer: Pin<Box<Sleep>>,
    /// Set once a read saw the peer's end of the stream, or failed: nothing more will come.
    peer_done: bool,
    /// Whether [`Deadlines::on_close`]'s hook runs ([`Deadlines::close_with_care`]).
    care: bool,
    /// Run on drop if `care` is set and the peer may still be sending.
    on_close: Option<OnClose<S>>,
}

/// What [`Deadlines::on_close`] runs.
pub type OnClose<S> = Box<dyn FnOnce(&S) + Send + Sync>;

impl<S> std::fmt::Debug for Deadlines<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("send", &self.send)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl<S> Deadlines<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, send: Duration, idle: Duration, min_rate: MinRate) -> Self {
        let now = Instant::now();
        Self {
            inner,
            send,
            idle,
            last: now,
            stalled_since: None,
            min_rate,
            backlog: None,
            timer: Box::pin(tokio::time::sleep_until(now + send.min(idle))),
            peer_done: false,
            care: false,
            on_close: None,
        }
    }

    /// Gives the stream a hook for its close: dropped with [`Deadlines::close_with_care`] on
    /// and before the peer ended its side (no read saw its end, none failed), the stream
    /// runs `f` on itself first, as the peer may still be writing and is about to be reset.
    /// Otherwise `f` is only dropped, with whatever it holds.
    pub fn on_close(mut self, f: impl FnOnce(&S) + Send + Sync + 'static) -> Self {
        self.on_close = Some(Box::new(f));
        self
    }

    /// Whether the close hook runs. Off at first: the server turns it on for a protocol
    /// whose peer may be sending when the server closes (HTTP/1.1: the rest of a body it
    /// answered without reading), not for one that closes for a broken protocol.
    pub fn close_with_care(&mut self, care: bool) {
        self.care = care;
    }

    /// Takes back what [`Deadlines::on_close`] set, for a caller that closes the stream
    /// itself (dropping it releases whatever it holds).
    pub fn take_on_close(&mut self) -> Option<OnClose<S>> {
        self.on_close.take()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Called where the connection waits: registers for the timer, and says which deadline
    /// has passed, if one has.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some(since) = self.stalled_since
                && now >= since + self.send
            {
                return Some(timed_out("the peer stopped reading"));
            }
            if now >= self.last + self.idle {
                return Some(timed_out("connection idle too long"));
            }
            if let Some((since, taken)) = self.backlog
                && now >= since + self.min_rate.window
            {
                if taken < self.min_rate.bytes_per_window() {
                    return Some(timed_out("the peer reads slower than the minimum rate"));
                }
                self.backlog = Some((now, 0));
            }
            // Fired early (bytes moved since it was set): wait for the nearest deadline, and
            // no longer than a stall starting now could last, so one cannot be missed.
            let idle = self.last + self.idle;
            let next = self
                .stalled_since
                .map_or(idle, |s| idle.min(s + self.send))
                .min(now + self.send.min(self.idle));
            let next = match self.backlog {
                Some((since, _)) => next.min(since + self.min_rate.window),
                None => next,
            };
            self.timer.as_mut().reset(next);
        }
        None
    }
}

impl<S> Drop for Deadlines<S> {
    fn drop(&mut self) {
        if let Some(f) = self.on_close.take()
            && self.care
            && !self.peer_done
        {
            f(&self.inner);
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                } else if room {
                    self.peer_done = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                self.peer_done = true;
                Poll::Ready(Err(e))
            }
            // hyper always has a read outstanding, so this is where idleness is noticed.
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S> Deadlines<S> {
    /// What a write attempt means for the deadlines: progress ends a stall; a write the peer
    /// will not take starts one, and fails once it has lasted `send`.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match attempt {
            Poll::Ready(Ok(n)) => {
                self.stalled_since = None;
                if n > 0 {
                    self.last = Instant::now();
                }
                if let Some((_, taken)) = &mut self.backlog {
                    *taken += n as u64;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let now = Instant::now();
                if self.stalled_since.is_none() {
                    self.stalled_since = Some(now);
                }
                if self.backlog.is_none() && self.min_rate.bytes_per_sec > 0 {
                    self.backlog = Some((now, 0));
                    // The timer may be set later than this window's end.
                    let end = now + self.min_rate.window;
                    if self.timer.deadline() > end {
                        self.timer.as_mut().reset(end);
                    }
                }
                match self.expired(cx) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write(cx, data);
        self.after_write(cx, attempt)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        // Everything offered was taken: the peer kept up, whatever its rate.
        if let Poll::Ready(Ok(())) = flushed {
            self.backlog = None;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Cleartext TCP sends files straight from their pages; the deadlines see its progress as
/// they see a write's.
#[cfg(target_os = "linux")]
impl super::h1::SendFile for Deadlines<tokio::net::TcpStream> {
    fn can_send_file(&self) -> bool {
        true
    }

    fn poll_write_more(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let attempt = raw_write(&self.inner, cx, |stream| {
            let flags = rustix::net::SendFlags::MORE | rustix::net::SendFlags::NOSIGNAL;
            rustix::net::send(stream, data, flags)
        });
        self.after_write(cx, attempt)
    }

    fn poll_send_file(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let attempt = raw_write(&self.inner, cx, |stream| {
            let mut at = offset;
            rustix::fs::sendfile(stream, file, Some(&mut at), len)
        });
        self.after_write(cx, attempt)
    }
}

/// Runs a non-blocking write system call on `stream` when it is writable: how many bytes
/// went, or `Pending` (registered for readiness) when the socket is full.
#[cfg(target_os = "linux")]
fn raw_write(
    stream: &tokio::net::TcpStream,
    cx: &mut Context<'_>,
    mut call: impl FnMut(&tokio::net::TcpStream) -> rustix::io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        match stream.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let done = stream.try_io(tokio::io::Interest::WRITABLE, || {
            call(stream).map_err(io::Error::from)
        });
        match done {
            Ok(n) => return Poll::Ready(Ok(n)),
            // Readiness was cleared: the next poll registers for it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl super::h1::SendFile for Deadlines<tokio::net::TcpStream> {}
