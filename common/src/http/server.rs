//! The accept loop every service runs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::client_cap::{ClientCap, ClientSlot};
use super::coalesce::{Coalesced, Outbox, coalesce};
use super::deadline::{Deadlines, MinRate};
use super::h1;
use super::idle::{Activity, IdleQueue, Open};
use super::lean_tls;
use super::proxy_protocol::{self, ProxyHeader, ProxyHeaderError, ProxyProtocol};
use super::{Body, Shutdown};

/// What a handler learns about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer's address, with IPv4-mapped IPv6 addresses made plain IPv4.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// A service: turns a request into a response. Errors are responses too; a handler maps its
/// own error enum to [`super::ApiError`] in one place.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// Whether the handler never reads a request body. HTTP/1.1 is then served by
    /// [`super::h1`], which holds no buffer while a kept-alive connection waits and writes
    /// bodies straight from their bytes, and requests reach [`Handler::handle_parts`].
    const BODYLESS: bool = false;

    /// Answers a request whose body is not read (HTTP/1.1 when [`Handler::BODYLESS`]).
    fn handle_parts(
        self: Arc<Self>,
        req: http::request::Parts,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send {
        let _ = (req, conn);
        async {
            super::ApiError::internal(
                "this service reads request bodies; HTTP/1.1 went the wrong way",
            )
            .into_response()
        }
    }
}

/// Limits applied to every connection.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections held at once. Beyond it a new connection takes the slot of the one idle
    /// longest (no request open: HTTP/1.1 on Cadenza's own loop, or HTTP/2), which closes,
    /// or is closed at accept when none is idle.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers to arrive (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_h2_streams: u32,
    /// What an HTTP/2 client may send ahead of the server's reading, on each stream and on
    /// the whole connection: a request body no handler reads waits in up to this much
    /// memory. `None` keeps hyper's 1 MiB, which uploads want.
    pub h2_receive_window: Option<u32>,
    /// Time given to open connections to finish after shutdown is signalled.
    pub drain_timeout: Duration,
    /// How long a write may wait for a peer that is not reading (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// How long a connection may move no byte at all, or wait with no request open (HTTP/2
    /// PINGs notwithstanding: nginx's `keepalive_timeout`), before it is closed.
    pub idle_timeout: Duration,
    /// The slowest a peer may read while a response waits on it.
    pub min_send_rate: MinRate,
    /// Most unsent bytes a connection's kernel send queue holds (Linux `TCP_NOTSENT_LOWAT`).
    /// The socket takes more only as the peer takes what it holds, so the minimum-rate
    /// check sees the peer's pace, not the kernel's buffer, and idle readers pin less kernel
    /// memory. `None` leaves the system default.
    pub tcp_notsent_lowat: Option<u32>,
    /// Connections from peers trusted to send one (load balancers passing TCP through) open
    /// with a PROXY protocol header naming their client; other peers are their own clients,
    /// and closed if they send one. `None`: every peer is its own client.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// At most so many connections at once from one client, counted across every listener
    /// sharing the cap; a connection past it is closed at accept (behind a PROXY protocol
    /// balancer, once the header names its client). `None`: no limit but the listener's.
    pub client_cap: Option<ClientCap>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_h2_streams: 128,
            h2_receive_window: None,
            drain_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            // 80 KiB per 20 s: a third of the lowest tier's playback rate, with room for a
            // mobile link's stalls.
            min_send_rate: MinRate {
                bytes_per_sec: 4096,
                window: Duration::from_secs(20),
            },
            tcp_notsent_lowat: Some(128 * 1024),
            proxy_protocol: None,
            client_cap: None,
        }
    }
}

/// A server bound to a port and serving in the background.
#[derive(Debug)]
pub struct Listening {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Ends after shutdown once connections have drained.
    pub task: JoinHandle<()>,
    /// Its connection slots and what its cap did, for `/metrics`.
    pub connections: OpenConnections,
}

/// A listener's connection slots: at most `max` connections open at once, each holding a
/// slot until it is closed (a TCP connection keeps its slot while it lingers after its last
/// answer). Shared by the TCP listeners here and the edge's QUIC endpoint; clones count the
/// same slots, and the same tallies of what the cap did.
#[derive(Debug, Clone)]
pub struct OpenConnections {
    slots: Arc<Semaphore>,
    max: usize,
    tally: Arc<CapTally>,
    clients: Option<ClientCap>,
}

#[derive(Debug, Default)]
struct CapTally {
    refused: AtomicU64,
    reclaimed: AtomicU64,
    kept_alive_out: AtomicU64,
    unproxied: AtomicU64,
    over_client_cap: AtomicU64,
}

impl OpenConnections {
    /// Room for `max` connections (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            tally: Arc::default(),
            clients: None,
        }
    }

    /// The same, each client also held to `clients` (which other listeners may share).
    pub fn with_client_cap(self, clients: Option<ClientCap>) -> Self {
        Self { clients, ..self }
    }

    /// The cap each client is held to, if any.
    pub fn client_cap(&self) -> Option<&ClientCap> {
        self.clients.as_ref()
    }

    /// A slot for one more connection, given back when dropped; `None` when all are taken.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// The next slot given back, waited for in turn with other waiters.
    pub async fn wait(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// Notes a client turned away because every slot was taken.
    pub fn note_refused(&self) {
        self.tally.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes an idle connection closed to give its slot to a new client.
    pub fn note_reclaimed(&self) {
        self.tally.reclaimed.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes connections closed for having had no request open for the keep-alive time
    /// (TCP: `ServerLimits::idle_timeout`, HTTP/2's PINGs notwithstanding).
    pub fn note_kept_alive_out(&self, n: u64) {
        self.tally.kept_alive_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Connections closed for having had no request open for the keep-alive time, since the
    /// listener started.
    pub fn kept_alive_out(&self) -> u64 {
        self.tally.kept_alive_out.load(Ordering::Relaxed)
    }

    /// Notes a connection closed on a PROXY protocol listener for its header: one from a peer
    /// not trusted to send it, or a trusted peer's missing, broken or late one.
    pub fn note_unproxied(&self) {
        self.tally.unproxied.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes a connection closed because its client held as many as it may.
    pub fn note_over_client_cap(&self) {
        self.tally.over_client_cap.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed at their client's own cap, since the listener started.
    pub fn over_client_cap(&self) -> u64 {
        self.tally.over_client_cap.load(Ordering::Relaxed)
    }

    /// Connections closed for their PROXY protocol header (see
    /// [`OpenConnections::note_unproxied`]), since the listener started.
    pub fn unproxied(&self) -> u64 {
        self.tally.unproxied.load(Ordering::Relaxed)
    }

    /// Clients turned away at the cap, since the listener started.
    pub fn refused(&self) -> u64 {
        self.tally.refused.load(Ordering::Relaxed)
    }

    /// Idle connections closed to make room for new clients, since the listener started.
    pub fn reclaimed(&self) -> u64 {
        self.tally.reclaimed.load(Ordering::Relaxed)
    }
}

/// Serves `handler` on an already bound listener (so callers can learn every port before
/// building the services that need each other's addresses).
pub fn serve_on<H: Handler>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServerLimits,
    handler: Arc<H>,
    shutdown: Shutdown,
) -> std::io::Result<Listening> {
    let addr = listener.local_addr()?;
    let connections =
        OpenConnections::new(limits.max_connections).with_client_cap(limits.client_cap.clone());
    let slots = connections.clone();
    let task = tokio::spawn(accept_loop(listener, tls, limits, handler, slots, shutdown));
    Ok(Listening {
        addr,
        task,
        connections,
    })
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServerLimits,
    handler: Arc<H>,
    slots: OpenConnections,
    mut shutdown: Shutdown,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    if let Some(window) = limits.h2_receive_window {
        builder
            .http2()
            .initial_stream_window_size(window)
            .initial_connection_window_size(window);
    }
    let serving = Arc::new(Serving {
        tls,
        builder,
        limits: limits.clone(),
        handler,
        idle: IdleQueue::default(),
        slots: slots.clone(),
        proxy_warned: Default::default(),
        client_warned: Default::default(),
    });
    let graceful = GracefulShutdown::new();
    // Refusals are counted in `slots`; the log says so at most every 10 s, not once for each
    // connection of a flood: when it last did, and the count it gave.
    let mut warned: Option<(std::time::Instant, u64)> = None;
    // Connections that have waited for a request past the keep-alive time are closed, looked
    // for a few times a keep-alive time and at most once a second. Those moving no byte at
    // all are closed by their own deadline; this closes those kept alive by PINGs too.
    let keepalive = limits.idle_timeout;
    let mut sweep = tokio::time::interval(super::idle::sweep_every(keepalive));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            _ = sweep.tick() => {
                if let Some(cutoff) = std::time::Instant::now().checked_sub(keepalive) {
                    let expired = serving.idle.expire(cutoff);
                    if expired > 0 {
                        slots.note_kept_alive_out(expired);
                    }
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A client at its own cap is closed before it costs a slot (or an idle connection
        // its slot); a balancer's client is counted once the header names it.
        let client = match serving.limits.client_cap.as_ref() {
            Some(cap) if !serving.names_clients(peer) => match cap.admit(peer.ip()) {
                Ok(place) => place,
                Err(e) => {
                    serving.over_client_cap(peer, &e);
                    continue;
                }
            },
            _ => None,
        };
        let drain = [graceful.watcher(), graceful.watcher()];
        if let Some(slot) = slots.take() {
            start(stream, peer, (slot, client), &serving, drain, &shutdown);
        } else if serving.idle.reclaim() {
            // The connection idle longest closes at once and gives its slot back; this one
            // waits for it (for another's, if one ends first: the slots go in turn).
            slots.note_reclaimed();
            let (slots, serving, shutdown) = (slots.clone(), serving.clone(), shutdown.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(RECLAIM_WAIT, slots.wait()).await {
                    Ok(Some(slot)) => {
                        start(stream, peer, (slot, client), &serving, drain, &shutdown);
                    }
                    _ => {
                        slots.note_refused();
                        tracing::debug!(%peer, "no slot came free in time; closing");
                    }
                }
            });
        } else {
            slots.note_refused();
            let refused = slots.refused();
            if warned.is_none_or(|(at, _)| at.elapsed() >= Duration::from_secs(10)) {
                let since_last_warning = refused - warned.map_or(0, |(_, count)| count);
                tracing::warn!(%peer, since_last_warning, "connection limit reached; closing");
                warned = Some((std::time::Instant::now(), refused));
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}

/// How long a new client at the cap waits for the slot of the idle connection closed for it.
/// Closing takes a moment: an HTTP/2 connection lingers until its client, told to go away,
/// closes; a connection chosen just as its next request arrived answers that request first.
const RECLAIM_WAIT: Duration = Duration::from_secs(1);

/// Serves an accepted connection that holds `slot` (and its place in its client's count, when
/// counted), in a task of its own. `drain` is its two places in the graceful drain: one goes
/// with the slot (kept while the connection lingers after its task), one with the task.
fn start<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    slot: (OwnedSemaphorePermit, Option<ClientSlot>),
    serving: &Arc<Serving<H>>,
    drain: [Watcher; 2],
    shutdown: &Shutdown,
) {
    let limits = &serving.limits;
    let _ = stream.set_nodelay(true);
    if let Some(lowat) = limits.tcp_notsent_lowat {
        set_notsent_lowat(&stream, lowat);
    }
    let conn = ConnInfo {
        peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        tls: serving.tls.is_some(),
    };
    let serving = serving.clone();
    let [held, watcher] = drain;
    let mut conn_shutdown = shutdown.clone();
    // Under TLS, so a peer that stops reading is noticed whatever the protocol. The
    // connection's slot and a place in the drain go with the stream: a connection closed
    // while its peer may still be writing lingers after its task ends, and keeps both
    // meanwhile.
    let held = (slot, held);
    let stream = Deadlines::new(
        stream,
        limits.send_timeout,
        limits.idle_timeout,
        limits.min_send_rate,
    )
    .on_close(move |stream| linger_apart(stream, held));
    // One task type per path, so a cleartext connection's task is not sized for TLS.
    if serving.tls.is_some() {
        tokio::spawn(async move {
            let Some((conn, _counted)) =
                client_of(&stream, conn, &serving, &mut conn_shutdown).await
            else {
                return;
            };
            serve_tls(stream, conn, &serving, watcher, conn_shutdown).await;
        });
    } else {
        tokio::spawn(async move {
            let Some((conn, _counted)) =
                client_of(&stream, conn, &serving, &mut conn_shutdown).await
            else {
                return;
            };
            serve_clear(stream, conn, &serving, watcher, conn_shutdown).await;
        });
    }
}

/// The connection as its client's. On a PROXY protocol listener a trusted peer (a balancer)
/// opens with a header naming the client, read off within the handshake timeout so the
/// client's own bytes follow; any other peer is served as itself and may not send one (it
/// would name a client of its choosing). Elsewhere the connection is as it came. A client
/// named by a header is counted under the client cap here, its place held by the task (not
/// through the connection's lingering, as a place taken at accept is). `None`: close it (a
/// header missing, refused or broken, a client at its cap, or told to stop).
async fn client_of<H: Handler>(
    stream: &Deadlines<TcpStream>,
    conn: ConnInfo,
    serving: &Serving<H>,
    shutdown: &mut Shutdown,
) -> Option<(ConnInfo, Option<ClientSlot>)> {
    let Some(proxy) = &serving.limits.proxy_protocol else {
        return Some((conn, None));
    };
    // Boxed: a served connection's task is not sized for the header's reading.
    let limit = serving.limits.handshake_timeout;
    let read = Box::pin(async {
        tokio::select! {
            read = tokio::time::timeout(limit, read_proxy_header(stream.get_ref())) => Some(read),
            () = shutdown.wait() => None,
        }
    });
    let trusted = proxy.trusts(conn.peer.ip());
    // `warn`: the refusal points at a misconfiguration, worth a warning (one each 10 s).
    let refused = |why: &dyn std::fmt::Display, warn: bool| {
        serving.slots.note_unproxied();
        if warn && warning_due(&serving.proxy_warned) {
            tracing::warn!(peer = %conn.peer, %why, "PROXY protocol header refused; closing");
        } else {
            tracing::debug!(peer = %conn.peer, %why, "PROXY protocol header refused; closing");
        }
        None
    };
    match read.await? {
        Ok(Ok(Ok(header))) if trusted => {
            let source = header.source.unwrap_or(conn.peer);
            let counted = match serving
                .limits
                .client_cap
                .as_ref()
                .map(|cap| cap.admit(source.ip()))
            {
                Some(Err(e)) => {
                    serving.over_client_cap(source, &e);
                    return None;
                }
                Some(Ok(place)) => place,
                None => None,
            };
            let conn = ConnInfo {
                peer: SocketAddr::new(source.ip().to_canonical(), source.port()),
                ..conn
            };
            Some((conn, counted))
        }
        Ok(Ok(Ok(_))) => refused(&"a PROXY header from a peer not trusted to send one", true),
        Ok(Ok(Err(ProxyHeaderError::Missing))) if !trusted => Some((conn, None)),
        // A balancer that sends none is misconfigured, and would put every client in its
        // own place.
        Ok(Ok(Err(e))) => refused(&e, trusted),
        // Connected and left: a balancer's plain TCP health check does so.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "reading the PROXY protocol header failed");
            None
        }
        Err(_) => refused(&"no complete header within the handshake timeout", false),
    }
}

/// Peeks at a connection's first bytes until they hold a whole PROXY protocol header (or
/// cannot), then reads exactly the header, so the socket holds what follows it.
async fn read_proxy_header(
    stream: &TcpStream,
) -> std::io::Result<Result<ProxyHeader, ProxyHeaderError>> {
    let header = peek_until::<{ proxy_protocol::MAX_HEADER }, _>(stream, |first| {
        proxy_protocol::parse(first).transpose()
    })
    .await?;
    let Ok(header) = header else {
        return Ok(header);
    };
    let mut taken = 0;
    while taken < header.len {
        // The peek saw these bytes, so they are in the socket already.
        let mut room = [0u8; proxy_protocol::MAX_HEADER];
        stream.readable().await?;
        match stream.try_read(&mut room[..header.len - taken]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => taken += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Ok(header))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_notsent_lowat(stream: &TcpStream, lowat: u32) {
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(lowat) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT refused");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_notsent_lowat(_stream: &TcpStream, _lowat: u32) {}

/// What every connection of one listener is served with.
struct Serving<H> {
    tls: Option<Arc<rustls::ServerConfig>>,
    builder: auto::Builder<TokioExecutor>,
    limits: ServerLimits,
    handler: Arc<H>,
    /// Connections with no request open (HTTP/1.1 on Cadenza's own loop, and HTTP/2), so a
    /// full listener can close the one idle longest for a new client.
    idle: IdleQueue,
    /// The listener's slots, whose tallies count connections refused for their PROXY
    /// protocol header.
    slots: OpenConnections,
    /// When a refused PROXY protocol header was last logged as a warning: at most one each
    /// 10 s, not one for each connection of a misconfigured balancer.
    proxy_warned: std::sync::Mutex<Option<std::time::Instant>>,
    /// The same for connections closed at their client's cap.
    client_warned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl<H> Serving<H> {
    /// Whether `peer` is a balancer whose connections open with a header naming their
    /// client.
    fn names_clients(&self, peer: SocketAddr) -> bool {
        self.limits
            .proxy_protocol
            .as_ref()
            .is_some_and(|proxy| proxy.trusts(peer.ip()))
    }

    /// Counts and logs a connection closed because `client` holds its cap.
    fn over_client_cap(&self, client: SocketAddr, why: &super::ClientAtLimit) {
        self.slots.note_over_client_cap();
        if warning_due(&self.client_warned) {
            tracing::warn!(%client, %why, "per-client connection limit reached; closing");
        } else {
            tracing::debug!(%client, %why, "per-client connection limit reached; closing");
        }
    }
}

/// Whether a warning throttled to one each 10 s may be logged now (and, if so, notes it).
fn warning_due(last: &std::sync::Mutex<Option<std::time::Instant>>) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
    if due {
        *last = Some(std::time::Instant::now());
    }
    due
}

/// hyper's service for a connection: every request to the handler, boxed so a kept-alive
/// connection holds a pointer between requests rather than room for the handler's state.
/// With `activity`, each request counts as open until its response's body is done.
fn hyper_service<H: Handler>(
    handler: Arc<H>,
    conn: ConnInfo,
    activity: Option<Arc<Activity>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Tracked>, Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        let open = activity.as_ref().map(Activity::begin);
        let answer = Box::pin(handler.clone().handle(req, conn));
        async move {
            let response = answer.await.map(|body| Tracked { body, _open: open });
            Ok::<_, Infallible>(response)
        }
    })
}

/// A response body that keeps its request open ([`Activity::begin`]) until hyper drops it.
struct Tracked {
    body: Body,
    _open: Option<Open>,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn log_end(conn: ConnInfo, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// A TLS connection after its handshake: rustls's buffered connection for HTTP/2, whose
/// records rustls encrypts into buffers it then writes from (the unbuffered API copies each
/// record once more, into the caller's buffer: 15-21 % more CPU per byte over HTTP/2 here),
/// and [`lean_tls`] for everyone else, so a kept-alive HTTP/1.1 connection holds no TLS buffer
/// while it waits. Boxed: the task keeps a binding's room across its awaits, so inline the
/// connection state would be held twice.
///
/// The buffered connection writes through [`coalesce`], so HTTP/2 sends what a poll of the
/// connection wrote in one system call.
enum Tls {
    Buffered(
        Box<tokio_rustls::server::TlsStream<Coalesced<Deadlines<TcpStream>>>>,
        Outbox<Deadlines<TcpStream>>,
    ),
    Lean(Box<lean_tls::LeanTls<Deadlines<TcpStream>>>),
}

/// Looks at the ClientHello, then completes the handshake on the connection type suited to
/// the protocol the client offers.
async fn handshake(
    stream: Deadlines<TcpStream>,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<Tls> {
    let h2 =
        config.alpn_protocols.iter().any(|p| p == b"h2") && offers_h2(stream.get_ref()).await?;
    if h2 {
        let (stream, outbox) = coalesce(stream);
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await?;
        Ok(Tls::Buffered(Box::new(tls), outbox))
    } else {
        let tls = lean_tls::accept(stream, config).await?;
        Ok(Tls::Lean(Box::new(tls)))
    }
}

/// Whether the client's ClientHello offers h2, read with `MSG_PEEK` into the stack, so the
/// handshake reads the same bytes again and nothing is held on the heap meanwhile.
async fn offers_h2(stream: &TcpStream) -> std::io::Result<bool> {
    peek_until::<{ lean_tls::FIRST_RECORD }, _>(stream, |hello| lean_tls::offers_alpn(hello, b"h2"))
        .await
}

/// Peeks at a connection's first bytes (up to `N`, into the stack inside each poll, so no
/// room is held across the wait) until `decide` can answer from them. A peer that closes
/// first is an `UnexpectedEof`. While `decide` needs more, a peek would see the same bytes at
/// once, so it waits a little between peeks; the caller's timeout bounds the whole.
async fn peek_until<const N: usize, T>(
    stream: &TcpStream,
    decide: impl Fn(&[u8]) -> Option<T>,
) -> std::io::Result<T> {
    let mut wait = Duration::from_millis(1);
    loop {
        let decided = std::future::poll_fn(|cx| {
            let mut room = [std::mem::MaybeUninit::<u8>::uninit(); N];
            let mut peeked = tokio::io::ReadBuf::uninit(&mut room);
            if std::task::ready!(stream.poll_peek(cx, &mut peeked))? == 0 {
                let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                return std::task::Poll::Ready(Err(eof));
            }
            std::task::Poll::Ready(Ok::<_, std::io::Error>(decide(peeked.filled())))
        })
        .await?;
        if let Some(decided) = decided {
            return Ok(decided);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(64));
    }
}

async fn serve_tls<H: Handler>(
    stream: Deadlines<TcpStream>,
    conn: ConnInfo,
    serving: &Serving<H>,
    watcher: Watcher,
    mut shutdown: Shutdown,
) {
    let Some(config) = &serving.tls else {
        return;
    };
    // Told to stop before a request could begin, the connection closes: the drain does not
    // wait out the handshake timeout for a peer that sent nothing (nor for one mid-handshake,
    // which may try again elsewhere). Boxed, so the served connection's task is not sized
    // for the handshake.
    let limit = serving.limits.handshake_timeout;
    let handshake = Box::pin(async {
        tokio::select! {
            done = tokio::time::timeout(limit, handshake(stream, config.clone())) => Some(done),
            () = shutdown.wait() => None,
        }
    });
    let Some(handshake) = handshake.await else {
        return;
    };
    let result = match handshake {
        Ok(Ok(Tls::Lean(mut tls))) => {
            let http2 = tls.alpn_protocol() == Some(b"h2".as_slice());
            tls.get_mut().close_with_care(!http2);
            Box::pin(serve_tls_stream(
                tls, http2, conn, serving, watcher, shutdown,
            ))
            .await
        }
        Ok(Ok(Tls::Buffered(tls, outbox))) => {
            if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
                Box::pin(serve_h2_coalesced(
                    tls, outbox, conn, serving, watcher, shutdown,
                ))
                .await
            } else {
                Box::pin(serve_tls_stream(
                    tls, false, conn, serving, watcher, shutdown,
                ))
                .await
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            return;
        }
    };
    log_end(conn, result);
}

async fn serve_tls_stream<H, IO>(
    tls: IO,
    http2: bool,
    conn: ConnInfo,
    serving: &Serving<H>,
    watcher: Watcher,
    shutdown: Shutdown,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    H: Handler,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + h1::SendFile
        + CloseAtOnce
        + Send
        + Unpin
        + 'static,
{
    let handler = serving.handler.clone();
    if H::BODYLESS && !http2 {
        // Held, not watched: the drain waits for it, and `shutdown` tells it to stop.
        let _watcher = watcher;
        let mut tls = tls;
        let idle = Some(&serving.idle);
        let served = h1::serve(
            &mut tls,
            conn,
            handler,
            &serving.limits,
            shutdown,
            false,
            idle,
        );
        let served = served.await;
        if let Ok(h1::Served::Reclaimed) = served {
            tls.close_at_once();
        }
        served.map(|_| ()).map_err(Into::into)
    } else {
        let io = TokioIo::new(tls);
        let connection = serving
            .builder
            .serve_connection(io, hyper_service(handler, conn, None))
            .into_owned();
        watcher.watch(connection).await
    }
}

/// HTTP/2 on a stream that writes through [`coalesce`] (rustls's buffered connection, or the
/// cleartext stream after its preface), what each poll of hyper's connection wrote sent after
/// that poll. A connection that ends well then lingers ([`linger`]).
async fn serve_h2_coalesced<H, IO>(
    io: IO,
    outbox: Outbox<Deadlines<TcpStream>>,
    conn: ConnInfo,
    serving: &Serving<H>,
    // Held, not watched (hyper-util's graceful trait is sealed, so it cannot watch the
    // wrapper): the drain waits for it, lingering included, and `shutdown` starts the
    // connection's goodbye.
    _watcher: Watcher,
    mut shutdown: Shutdown,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    H: Handler,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    outbox.defer();
    let activity = Activity::new(&serving.idle);
    let connection = serving
        .builder
        .serve_connection(
            TokioIo::new(io),
            hyper_service(serving.handler.clone(), conn, Some(activity.clone())),
        )
        .into_owned();
    let mut serving = SendEachPoll {
        connection: Box::pin(connection),
        outbox,
        ended: None,
    };
    // Told to stop, or chosen to make room: either way the client is told to go away, and
    // what it has open is finished first.
    let ended = tokio::select! {
        ended = &mut serving => ended,
        _ = shutdown.wait() => {
            serving.connection.as_mut().graceful_shutdown();
            (&mut serving).await
        }
        () = activity.bell().notified() => {
            serving.connection.as_mut().graceful_shutdown();
            (&mut serving).await
        }
    };
    activity.end();
    if ended.is_ok() {
        // hyper's connection, and with it the TLS state, is dropped: the stream is ours.
        let SendEachPoll {
            connection, outbox, ..
        } = serving;
        drop(connection);
        if let Some(mut stream) = outbox.into_inner() {
            // Lingers here rather than apart (the drain already waits for this task); the
            // close hook's slot and drain place are held until it ends. One closed to make
            // room lingers too: "no request open" means hyper has taken every response's
            // last bytes, not that they have left (flow control may hold them), and a client
            // closes soon after a GOAWAY that leaves it nothing open.
            let _held = stream.take_on_close();
            linger(stream.get_ref()).await;
        }
    }
    ended
}

/// How long a closed connection goes on reading while its peer sends nothing (nginx's
/// `lingering_timeout` is 5 s).
const LINGER_QUIET: Duration = Duration::from_secs(2);
/// How long a closed connection reads at most (nginx's `lingering_time`). Time, not bytes,
/// bounds it: a refused upload's client may have hundreds of megabytes still to send, and
/// it only reads the answer once they are sent.
const LINGER_MOST: Duration = Duration::from_secs(30);

/// Closes a connection the way nginx's lingering close does. Closing a socket whose peer has
/// sent bytes not yet read makes the kernel answer with a reset rather than a FIN, and throw
/// away what it has not yet sent; and a reset that arrives while the peer still writes (an
/// HTTP/2 WINDOW_UPDATE for the response it is reading, the ack of a PING, the rest of a
/// request body the server answered without reading) fails that write, and with it the
/// response. So the write side is shut first (the peer sees the end after the last byte),
/// and what the peer still sends is read and dropped until it closes, goes quiet for
/// [`LINGER_QUIET`] with nothing of ours left in the socket ([`unsent`]: a slow reader with
/// large windows may write nothing for a while and then once more before it is done), or
/// [`LINGER_MOST`] has passed.
async fn linger(stream: &TcpStream) {
    // Already shut when hyper said goodbye; a second shutdown changes nothing.
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let until = tokio::time::Instant::now() + LINGER_MOST;
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        // A timeout polls what it bounds first: a peer that never stops sending is stopped
        // by the check above, not by this.
        match tokio::time::timeout_at((now + LINGER_QUIET).min(until), stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            // Quiet, but a slow reader still has bytes of ours to take, and may write again
            // before it is done (an HTTP/2 WINDOW_UPDATE): closing now would reset it.
            Err(_) if unsent(stream) > 0 => continue,
            Err(_) => return,
        }
        // Made after the await, so the room is not part of every HTTP/2 connection's task.
        let mut room = [0u8; 16 << 10];
        // A bounded run of reads per wake, so a fast sender shares the thread.
        for _ in 0..64 {
            match stream.try_read(&mut room) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}

/// Bytes the kernel still holds to send on `stream` or waits to see acknowledged
/// (`SIOCOUTQ`); 0 where it cannot say.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn unsent(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SIOCOUTQ is TIOCOUTQ's number on Linux (libc names only the latter).
    // SAFETY: the ioctl writes one int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    if rc == 0 {
        usize::try_from(queued).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn unsent(_stream: &TcpStream) -> usize {
    0
}

/// Lingers ([`linger`]) on a connection whose stream is being dropped, in a task of its own
/// holding `held` (the connection's slot, and its place in the drain, so a SIGTERM waits for
/// it as for a connection still served): hyper drops the streams of the connections it
/// serves, and one that answered before reading a whole request body (a refused upload)
/// would otherwise reset the connection under a client still sending it, which then fails
/// its write and may never read the answer. The task gets the socket through a second descriptor, so closing the first
/// does not close it.
fn linger_apart(stream: &TcpStream, held: impl Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let socket = socket2::SockRef::from(stream);
    // The peer sees the end after the last byte, whatever happens next.
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let Ok(second) = socket.try_clone() else {
        return;
    };
    let _entered = runtime.enter();
    let Ok(second) = TcpStream::from_std(second.into()) else {
        return;
    };
    runtime.spawn(async move {
        let _held = held;
        linger(&second).await;
    });
}

/// A served stream that can close without lingering: an idle connection closed to make room
/// has nothing of its peer's left to read, and a new client waits for its slot.
trait CloseAtOnce {
    /// Drops the close hook's work (not what it holds) when the stream is dropped.
    fn close_at_once(&mut self);
}

impl CloseAtOnce for Deadlines<TcpStream> {
    fn close_at_once(&mut self) {
        self.close_with_care(false);
    }
}

impl<S: CloseAtOnce> CloseAtOnce for lean_tls::LeanTls<S> {
    fn close_at_once(&mut self) {
        self.get_mut().close_at_once();
    }
}

impl<S: CloseAtOnce> CloseAtOnce for tokio_rustls::server::TlsStream<S> {
    fn close_at_once(&mut self) {
        self.get_mut().0.close_at_once();
    }
}

impl<S: CloseAtOnce> CloseAtOnce for Coalesced<S> {
    fn close_at_once(&mut self) {
        self.with_inner(S::close_at_once);
    }
}

impl<S: CloseAtOnce + ?Sized> CloseAtOnce for Box<S> {
    fn close_at_once(&mut self) {
        (**self).close_at_once();
    }
}

/// A connection whose writes are held by [`coalesce`], and the outbox that sends them after
/// every poll of it.
struct SendEachPoll<C: Future, S> {
    connection: std::pin::Pin<Box<C>>,
    outbox: Outbox<S>,
    /// The connection's result, kept while the last bytes leave.
    ended: Option<C::Output>,
}

impl<C, S> Future for SendEachPoll<C, S>
where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    S: tokio::io::AsyncWrite + Unpin,
{
    type Output = C::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        if self.ended.is_none()
            && let Poll::Ready(ended) = self.connection.as_mut().poll(cx)
        {
            self.ended = Some(ended);
        }
        match self.outbox.poll_send(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(())) => match self.ended.take() {
                Some(ended) => Poll::Ready(ended),
                None => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

async fn serve_clear<H: Handler>(
    mut stream: Deadlines<TcpStream>,
    conn: ConnInfo,
    serving: &Serving<H>,
    watcher: Watcher,
    mut shutdown: Shutdown,
) {
    let handler = serving.handler.clone();
    if H::BODYLESS {
        stream.close_with_care(true);
        let lean = h1::serve(
            &mut stream,
            conn,
            handler.clone(),
            &serving.limits,
            shutdown.clone(),
            true,
            Some(&serving.idle),
        );
        match Box::pin(lean).await {
            Ok(h1::Served::Done) => return,
            Ok(h1::Served::Reclaimed) => return stream.close_at_once(),
            Ok(h1::Served::Http2(preface)) => {
                stream.close_with_care(false);
                let (stream, outbox) = coalesce(stream);
                let io = Rewind::new(preface, stream);
                let h2 = serve_h2_coalesced(io, outbox, conn, serving, watcher, shutdown);
                return log_end(conn, Box::pin(h2).await);
            }
            Err(e) => return log_end(conn, Err(e.into())),
        }
    }
    // HTTP/2 with prior knowledge (h2c) goes the way HTTP/2 over TLS does (coalesced writes,
    // lingering after a clean end); HTTP/1.1 goes to hyper and closes with care. hyper-util
    // reads the first bytes with no timeout of its own (only the idle deadline ended a silent
    // peer there); the header timeout bounds this peek as it bounds a request's head. Told to
    // stop before the first request is under way, the connection closes, as hyper-util's own
    // version read would: the drain does not wait out the timeout for a peer that sent nothing.
    // Boxed, so the lean path's idle task is not sized for it.
    let limit = serving.limits.header_read_timeout;
    let peek = Box::pin(tokio::time::timeout(limit, starts_h2c(stream.get_ref())));
    let peeked = tokio::select! {
        peeked = peek => peeked,
        () = shutdown.wait() => return,
    };
    match peeked {
        Ok(Ok(true)) => {
            // The peek read nothing: the preface is still the stream's first bytes.
            let (stream, outbox) = coalesce(stream);
            let h2 = serve_h2_coalesced(stream, outbox, conn, serving, watcher, shutdown);
            return log_end(conn, Box::pin(h2).await);
        }
        Ok(Ok(false)) => stream.close_with_care(true),
        // Connected and left without a byte: nothing to log.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
        Ok(Err(e)) => return log_end(conn, Err(e.into())),
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "no request within the header timeout");
            return;
        }
    }
    let io = TokioIo::new(stream);
    let connection = serving
        .builder
        .serve_connection(io, hyper_service(handler, conn, None))
        .into_owned();
    log_end(conn, Box::pin(watcher.watch(connection)).await);
}

/// Whether a cleartext connection starts with HTTP/2's preface, peeked so hyper reads the
/// same bytes again: its first three bytes are `PRI`, a method HTTP/1.1 does not have
/// (`P` and `PR` are not enough: `POST`, `PUT` and `PATCH` start so too).
async fn starts_h2c(stream: &TcpStream) -> std::io::Result<bool> {
    const START: &[u8] = b"PRI";
    peek_until::<3, _>(stream, |first| {
        (first.len() == START.len() || !START.starts_with(first)).then(|| first == START)
    })
    .await
}

/// A stream that yields `read` before the rest of `inner`: the bytes [`h1::serve`] read
/// before it saw an HTTP/2 preface.
struct Rewind<S> {
    read: bytes::BytesMut,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(read: bytes::BytesMut, inner: S) -> Self {
        Self { read, inner }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lean;

    impl Handler for Lean {
        async fn handle(self: Arc<Self>, _req: Request<Incoming>, _c: ConnInfo) -> Response<Body> {
            Response::new(super::super::empty())
        }

        const BODYLESS: bool = true;
    }

    /// A connection as the accept loop hands it on, and its client.
    async fn accepted() -> (TcpStream, Deadlines<TcpStream>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let limits = ServerLimits::default();
        let stream = Deadlines::new(
            stream,
            limits.send_timeout,
            limits.idle_timeout,
            limits.min_send_rate,
        );
        (client, stream, peer)
    }

    fn serving(tls: Option<Arc<rustls::ServerConfig>>) -> Serving<Lean> {
        Serving {
            tls,
            builder: auto::Builder::new(TokioExecutor::new()),
            limits: ServerLimits::default(),
            handler: Arc::new(Lean),
            idle: IdleQueue::default(),
            slots: OpenConnections::new(1),
            proxy_warned: Default::default(),
            client_warned: Default::default(),
        }
    }

    /// What an idle kept-alive cleartext connection holds: its task, and the boxed HTTP/1.1
    /// loop waiting in it. hyper's connection inline made the task 6.7 KB; 10,000 idle
    /// connections cost 20 KiB each then (`benches/edge_memory.sh`).
    #[tokio::test]
    async fn an_idle_cleartext_connection_holds_little() {
        let (_client, mut stream, peer) = accepted().await;
        let serving = serving(None);
        let limits = serving.limits.clone();
        let conn = ConnInfo { peer, tls: false };
        let (_trigger, shutdown) = Shutdown::new();
        let lean = h1::serve(
            &mut stream,
            conn,
            serving.handler.clone(),
            &limits,
            shutdown.clone(),
            true,
            None,
        );
        let loop_bytes = std::mem::size_of_val(&lean);
        drop(lean);
        let graceful = GracefulShutdown::new();
        let task = serve_clear(stream, conn, &serving, graceful.watcher(), shutdown);
        let task_bytes = std::mem::size_of_val(&task);
        eprintln!("idle cleartext connection: task {task_bytes} B, HTTP/1.1 loop {loop_bytes} B");
        assert!(task_bytes <= 1024, "the task is {task_bytes} B");
        assert!(loop_bytes <= 1536, "the loop is {loop_bytes} B");
    }

    /// The same over TLS: the task holds a pointer to the connection, not the connection
    /// (rustls's state is 1,088 B, and an inline binding kept its room across the serve's
    /// await beside the copy the loop holds: 1,824 B then).
    #[tokio::test]
    async fn an_idle_tls_connection_task_holds_little() {
        let (_client, stream, peer) = accepted().await;
        let pem = crate::http::tls::self_signed(&["localhost"]).unwrap();
        let serving = serving(Some(crate::http::tls::server_config(&pem).unwrap()));
        let conn = ConnInfo { peer, tls: true };
        let (_trigger, shutdown) = Shutdown::new();
        let graceful = GracefulShutdown::new();
        let task = serve_tls(stream, conn, &serving, graceful.watcher(), shutdown);
        let task_bytes = std::mem::size_of_val(&task);
        eprintln!("idle TLS connection: task {task_bytes} B");
        assert!(task_bytes <= 1024, "the task is {task_bytes} B");
    }

    /// The offer is read by peeking, so it waits for a ClientHello that arrives in pieces and
    /// leaves every byte for the handshake.
    #[tokio::test]
    async fn the_h2_offer_is_peeked_from_a_client_hello_in_pieces() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let hello = crate::http::lean_tls::tests::client_hello(&[b"h2", b"http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(&hello[..20]).await.unwrap();
        let rest = hello[20..].to_vec();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(&rest).await.unwrap();
            client
        });
        assert!(offers_h2(&server).await.unwrap());
        let _client = late.await.unwrap();
        let mut all = vec![0; hello.len()];
        server.read_exact(&mut all).await.unwrap();
        assert_eq!(all, hello, "the handshake still reads every byte");

        let one = crate::http::lean_tls::tests::client_hello(&[b"http/1.1"]);
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(&one).await.unwrap();
        assert!(!offers_h2(&server).await.unwrap());
        // A client that leaves before its ClientHello.
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        drop(client);
        assert!(offers_h2(&server).await.is_err());
    }

    #[tokio::test]
    async fn the_h2c_preface_is_told_from_a_post_sent_in_pieces() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for (first, rest, h2c) in [
            ("P", "RI * HTTP/2.0\r\n", true),
            ("P", "OST / HTTP/1.1\r\n", false),
        ] {
            let mut client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(first.as_bytes()).await.unwrap();
            let late = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                client.write_all(rest.as_bytes()).await.unwrap();
                client
            });
            assert_eq!(starts_h2c(&server).await.unwrap(), h2c, "{first}{rest}");
            let _client = late.await.unwrap();
        }
        let (client, server) = (
            TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap(),
            listener.accept().await.unwrap().0,
        );
        drop(client);
        assert!(
            starts_h2c(&server).await.is_err(),
            "a client that left first"
        );
    }

    #[tokio::test]
    async fn an_http2_connection_task_holds_little() {
        // hyper's connection is boxed; what stays inline is the task's own state, lingering's
        // included.
        let (_client, stream, peer) = accepted().await;
        let serving = serving(None);
        let conn = ConnInfo { peer, tls: false };
        let (_trigger, shutdown) = Shutdown::new();
        let graceful = GracefulShutdown::new();
        let (io, outbox) = coalesce(stream);
        let io = Rewind::new(bytes::BytesMut::new(), io);
        let task = serve_h2_coalesced(io, outbox, conn, &serving, graceful.watcher(), shutdown);
        let task_bytes = std::mem::size_of_val(&task);
        eprintln!("HTTP/2 connection: task {task_bytes} B");
        assert!(task_bytes <= 1024, "the task is {task_bytes} B");
    }
}
