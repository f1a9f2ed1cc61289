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
pub struct Deadlines<S> {
    inner: S,
    send: Duration,
    idle: Duration,
    /// Armed while a write waits on the peer.
    stall: Option<Pin<Box<Sleep>>>,
    /// Reset on every byte moved.
    quiet: Pin<Box<Sleep>>,
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
        Self {
            inner,
            send,
            idle,
            stall: None,
            quiet: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn moved(&mut self) {
        self.quiet.as_mut().reset(Instant::now() + self.idle);
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
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // hyper always has a read outstanding, so this is where idleness is noticed.
                if self.quiet.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out("connection idle too long")));
                }
                Poll::Pending
            }
        }
    }
}

impl<S> Deadlines<S> {
    /// What a write attempt means for the deadlines: progress disarms the stall timer; a
    /// write the peer will not take arms it, and fails once it runs out.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match attempt {
            Poll::Ready(Ok(n)) => {
                self.stall = None;
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let send = self.send;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
                if stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out("the peer stopped reading")));
                }
                Poll::Pending
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
