//! What one poll of a connection writes leaves in one system call.
//!
//! h2 flushes after every frame it writes, and tokio-rustls writes each record through as
//! soon as rustls seals it, so an HTTP/2 response over TLS left one 16 KB record per `writev`
//! (65,700 calls a second at 873 MiB/s; the kernel took half of the serving core). [`coalesce`]
//! puts a buffer under TLS. While it defers, writes land in the buffer and flushes do nothing;
//! the task serving the connection calls [`Outbox::poll_send`] after every poll of hyper's
//! connection, which writes what that poll made in one call. Every byte still leaves before
//! the task sleeps, so nothing waits on a timer or on the peer's next request.
//!
//! The buffer is bounded: a write that would take it past [`HOLD`] bytes first sends what is
//! held, and waits like any write when the socket is full, so backpressure and the
//! [`super::Deadlines`] beneath see the peer's pace as before. Between polls the buffer is
//! given back, so a connection waiting for its next request holds none.
//!
//! Deferring starts off (the TLS handshake reads replies to what it writes) and is switched on
//! by [`Outbox::defer`] once the connection is handed to a loop that calls `poll_send`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held before a write sends them: four full TLS records.
pub const HOLD: usize = 64 * 1024;

/// Splits `io` into the stream to write through (under TLS) and the handle that sends what it
/// holds.
pub fn coalesce<S>(io: S) -> (Coalesced<S>, Outbox<S>) {
    let shared = Arc::new(Mutex::new(Held {
        io,
        held: Vec::new(),
        sent: 0,
        deferring: false,
    }));
    (Coalesced(shared.clone()), Outbox(shared))
}

/// The stream side: reads pass through; writes are held while deferring.
pub struct Coalesced<S>(Arc<Mutex<Held<S>>>);

/// The task's side: sends what the stream holds.
pub struct Outbox<S>(Arc<Mutex<Held<S>>>);

struct Held<S> {
    io: S,
    held: Vec<u8>,
    /// How much of `held` the socket has taken.
    sent: usize,
    deferring: bool,
}

/// Both sides live in one task and never lock at once; a panic there ends the task, so a
/// poisoned lock is never seen by anyone who could care.
fn lock<S>(shared: &Mutex<Held<S>>) -> MutexGuard<'_, Held<S>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: AsyncWrite + Unpin> Held<S> {
    /// Writes out everything held, then flushes the stream beneath.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // All taken: give the room back, so a connection that now waits holds no buffer.
        self.held = Vec::new();
        self.sent = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if !self.held.is_empty() && (!self.deferring || self.held.len() + len > HOLD) {
            ready!(self.poll_send(cx))?;
        }
        if !self.deferring || len >= HOLD {
            // Nothing held: a large write goes as it is, without a copy.
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        if self.held.capacity() == 0 {
            self.held.reserve_exact(HOLD);
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }
}

impl<S: AsyncWrite + Unpin> Outbox<S> {
    /// From now on, writes are held until [`Outbox::poll_send`].
    pub fn defer(&self) {
        lock(&self.0).deferring = true;
    }

    /// Writes out what the stream holds: `Ready` once it has all left, `Pending` (woken when
    /// the socket takes more) while the peer is not taking it.
    pub fn poll_send(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).poll_send(cx)
    }

    /// The stream beneath, once the [`Coalesced`] side is gone (what it held is dropped, so
    /// send it first).
    pub fn into_inner(self) -> Option<S> {
        let held = Arc::try_unwrap(self.0).ok()?;
        Some(held.into_inner().unwrap_or_else(PoisonError::into_inner).io)
    }
}

impl<S> Coalesced<S> {
    /// Runs `f` on the stream beneath.
    pub fn with_inner<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut lock(&self.0).io)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        lock(&self.0).poll_write(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        lock(&self.0).poll_write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Deferred until [`Outbox::poll_send`], which the serving task calls before it sleeps.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = lock(&self.0);
        if held.deferring {
            return Poll::Ready(Ok(()));
        }
        ready!(held.poll_send(cx))?;
        Pin::new(&mut held.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = lock(&self.0);
        ready!(held.poll_send(cx))?;
        Pin::new(&mut held.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the stream beneath.
    struct Counting {
        inner: tokio::io::DuplexStream,
        writes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let done = Pin::new(&mut self.inner).poll_write(cx, data);
            if let Poll::Ready(Ok(_)) = done {
                self.writes += 1;
            }
            done
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn pair(
        room: usize,
    ) -> (
        Coalesced<Counting>,
        Outbox<Counting>,
        tokio::io::DuplexStream,
    ) {
        let (near, far) = tokio::io::duplex(room);
        let (stream, outbox) = coalesce(Counting {
            inner: near,
            writes: 0,
        });
        (stream, outbox, far)
    }

    fn writes(outbox: &Outbox<Counting>) -> usize {
        lock(&outbox.0).io.writes
    }

    async fn send(outbox: &Outbox<Counting>) {
        std::future::poll_fn(|cx| outbox.poll_send(cx))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn writes_pass_through_until_deferring() {
        let (mut stream, outbox, mut far) = pair(1 << 20);
        stream.write_all(b"hello").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = [0; 5];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(writes(&outbox), 1);
    }

    #[tokio::test]
    async fn deferred_writes_leave_in_one_call_when_sent() {
        let (mut stream, outbox, mut far) = pair(1 << 20);
        outbox.defer();
        for i in 0..10u8 {
            stream.write_all(&[i; 1000]).await.unwrap();
            stream.flush().await.unwrap();
        }
        assert_eq!(writes(&outbox), 0, "a flush sent held bytes");
        send(&outbox).await;
        assert_eq!(writes(&outbox), 1);
        let mut got = vec![0; 10_000];
        far.read_exact(&mut got).await.unwrap();
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 1000]).collect();
        assert!(got == expected, "the bytes changed order or value");
        assert_eq!(lock(&outbox.0).held.capacity(), 0, "the buffer was kept");
    }

    #[tokio::test]
    async fn the_buffer_is_bounded_and_large_writes_are_not_copied() {
        let (mut stream, outbox, mut far) = pair(4 << 20);
        outbox.defer();
        let record = vec![1u8; 16 * 1024 + 22];
        for _ in 0..9 {
            stream.write_all(&record).await.unwrap();
            assert!(lock(&outbox.0).held.len() <= HOLD);
        }
        // Three records fit in the buffer, the fourth sends them: 9 records made 2 writes
        // and hold 3.
        assert_eq!(writes(&outbox), 2);
        let big = vec![2u8; HOLD + 1];
        stream.write_all(&big).await.unwrap();
        assert_eq!(
            writes(&outbox),
            4,
            "held bytes first, then the large write as it is"
        );
        assert!(lock(&outbox.0).held.is_empty());
        let mut got = vec![0; 9 * record.len() + big.len()];
        far.read_exact(&mut got).await.unwrap();
        assert!(got[..9 * record.len()].iter().all(|&b| b == 1));
        assert!(got[9 * record.len()..].iter().all(|&b| b == 2));
    }

    #[tokio::test]
    async fn a_full_socket_holds_writes_back_and_shutdown_sends_first() {
        let (mut stream, outbox, mut far) = pair(HOLD);
        outbox.defer();
        let chunk = vec![3u8; 16 * 1024];
        // The peer reads nothing: the socket takes HOLD bytes, the buffer HOLD more, and
        // then a write waits.
        let mut accepted = 0;
        loop {
            let write = stream.write(&chunk);
            match tokio::time::timeout(std::time::Duration::from_millis(50), write).await {
                Ok(n) => accepted += n.unwrap(),
                Err(_) => break,
            }
            assert!(
                accepted <= 3 * HOLD,
                "{accepted} bytes taken with no reader"
            );
        }
        assert!(accepted >= HOLD, "only {accepted} bytes taken");
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        stream.shutdown().await.unwrap();
        let all = reader.await.unwrap();
        assert_eq!(all.len(), accepted, "bytes accepted were lost at shutdown");
    }
}
