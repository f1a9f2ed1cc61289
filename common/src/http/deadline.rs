//! Deadlines on a connection's byte stream, for clients that stop reading or never leave.
//!
//! - **Send timeout** (nginx's `send_timeout`): a write the peer is not draining may wait at
//!   most this long for the socket to take any byte. A slow reader that keeps taking bytes
//!   is served; one that stopped reading is cut off instead of pinning a response's memory.
//! - **Idle timeout** (nginx's `keepalive_timeout`): a connection that moves no byte either
//!   way for this long is closed.
//!
//! The wrapper sits under TLS and hyper, so it covers HTTP/1.1 and HTTP/2 alike.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream whose writes must progress within `send` and which closes after `idle` without
/// traffic.
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
    /// Never later than the earliest deadline that can apply (`last + min(send, idle)`).
    timer: Pin<Box<Sleep>>,
}

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
    pub fn new(inner: S, send: Duration, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            send,
            idle,
            last: now,
            stalled_since: None,
            timer: Box::pin(tokio::time::sleep_until(now + send.min(idle))),
        }
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
            // Fired early (bytes moved since it was set): wait for the nearest deadline, and
            // no longer than a stall starting now could last, so one cannot be missed.
            let idle = self.last + self.idle;
            let next = self
                .stalled_since
                .map_or(idle, |s| idle.min(s + self.send))
                .min(now + self.send.min(self.idle));
            self.timer.as_mut().reset(next);
        }
        None
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
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
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
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.stalled_since.is_none() {
                    self.stalled_since = Some(Instant::now());
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
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
