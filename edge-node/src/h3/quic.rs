//! A QUIC server endpoint over `quinn-proto`, driven by one task that owns the socket.
//!
//! quinn's own driver sends at most 10 datagrams per `sendmsg` and 20 per turn of a
//! connection's task (constants in quinn 0.11). The edge's responses are bulk bytes, so that
//! cap made the `sendmsg` path a fifth of HTTP/3's cost (`benches/README.md`). Here one task
//! receives every datagram, hands it to its connection, and sends each connection's packets
//! in GSO batches as large as a UDP send allows (44 × 1,452 bytes).
//!
//! The task owns the `quinn_proto::Endpoint`; each connection's state sits behind its own
//! lock, shared with the [`Connection`] handle the h3 layer uses. A stream operation takes the
//! lock, does its work on the protocol state, and, when that may have produced something to
//! send, queues the connection for the driver and wakes it. The driver wakes the tasks
//! waiting on a stream when the protocol reports it readable or writable.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cadenza_common::http::{ClientSlot, OpenConnections};
use quinn_proto::{
    self as proto, ConnectionError, ConnectionHandle, DatagramEvent, Dir, StreamEvent, StreamId,
    VarInt,
};
use tokio::io::Interest;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

/// Bytes one GSO `sendmsg` may carry: an IPv4 datagram's 65,535 less its headers, rounded
/// down.
const GSO_BYTES: usize = 65_000;
/// Batches one connection may send per turn before the others get theirs.
const BATCHES_PER_TURN: usize = 4;
/// `recvmmsg` calls per turn before the driver hands what arrived to its connections.
const RECEIVES_PER_TURN: usize = 16;
/// The code a connection is closed with when its last handle, or its endpoint, is dropped
/// without an explicit close: HTTP/3's H3_NO_ERROR, the only protocol this endpoint carries.
pub const NO_ERROR: VarInt = VarInt::from_u32(0x100);

/// HTTP/3's H3_EXCESSIVE_LOAD: the code a connection past its client's cap is closed with.
const EXCESSIVE_LOAD: VarInt = VarInt::from_u32(0x107);
/// Socket buffer sizes asked for (the kernel caps them at `net.core.rmem_max` and
/// `wmem_max`). One socket carries every client's ACKs and requests, and every response
/// batch; at the 208 KiB default a burst of ACKs can overflow it, and each one lost costs a
/// retransmission.
const SOCKET_BUFFER: usize = 4 << 20;

/// Why a stream operation failed.
#[derive(Debug, Clone)]
pub enum StreamError {
    /// The connection is gone.
    Lost(ConnectionError),
    /// The peer asked us to stop sending (STOP_SENDING) with this code.
    Stopped(VarInt),
    /// The peer abandoned its side of the stream (RESET_STREAM) with this code.
    Reset(VarInt),
    /// The stream was already finished, reset or stopped on this side.
    Closed,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lost(e) => write!(f, "connection lost: {e}"),
            Self::Stopped(code) => write!(f, "stream stopped by the peer with code {code}"),
            Self::Reset(code) => write!(f, "stream reset by the peer with code {code}"),
            Self::Closed => f.write_str("stream already closed"),
        }
    }
}

impl std::error::Error for StreamError {}

/// A QUIC server endpoint on one UDP socket.
///
/// Dropping it without [`Endpoint::close`] closes every connection with [`NO_ERROR`], so its
/// driver ends and the socket is released instead of serving connections nobody accepts.
pub struct Endpoint {
    shared: Arc<Shared>,
    incoming: mpsc::UnboundedReceiver<Connection>,
    /// `None` once [`Endpoint::wait_idle`] took it.
    driver: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

/// What the driver shares with connection handles.
struct Shared {
    socket: tokio::net::UdpSocket,
    udp: quinn_udp::UdpSocketState,
    /// Connections a stream operation touched since the driver last looked.
    touched: Mutex<Vec<Arc<ConnInner>>>,
    /// Wakes the driver.
    wake: Notify,
    /// Set by [`Endpoint::close`]: the code and reason every connection is closed with.
    closing: Mutex<Option<(VarInt, Bytes)>>,
    /// Set by [`Endpoint::grow_streams_to`]: the most concurrent requests a connection is
    /// raised to once it uses half of what it has (0: never raised).
    stream_ceiling: AtomicU64,
    /// Set by [`Endpoint::close_idle_after`]: milliseconds a connection may stay with no
    /// request open (0: as long as QUIC's idle timeout lets it).
    keepalive_ms: AtomicU64,
    /// This driver's connections, least recently active first (by [`ConnState::last_active`],
    /// then handle), for the port's drivers to look through when one of them needs room for
    /// a new client (the driver's own map is its task's alone). An entry moves only under its
    /// connection's state lock, which is taken first.
    members: Mutex<BTreeMap<Member, Arc<ConnInner>>>,
    /// Every driver of the port, this one included; set by [`bind`] (alone: just this one).
    siblings: OnceLock<Vec<Weak<Shared>>>,
}

impl Endpoint {
    /// Serves `server` on `socket` (already bound). Must be called within a tokio runtime.
    pub fn new(
        socket: std::net::UdpSocket,
        config: proto::EndpointConfig,
        server: Arc<proto::ServerConfig>,
        cap: OpenConnections,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        let granted = |reported: usize| {
            if cfg!(target_os = "linux") {
                reported / 2
            } else {
                reported
            }
        };
        let enlarged = udp
            .set_recv_buffer_size((&socket).into(), SOCKET_BUFFER)
            .and_then(|()| udp.set_send_buffer_size((&socket).into(), SOCKET_BUFFER))
            .and_then(|()| udp.recv_buffer_size((&socket).into()));
        match enlarged {
            // Linux reports twice what it granted (room for its bookkeeping).
            Ok(got) if granted(got) < SOCKET_BUFFER => tracing::warn!(
                asked = SOCKET_BUFFER,
                granted = granted(got),
                "the HTTP/3 socket's receive buffer is capped by net.core.rmem_max; \
                 raise it (and wmem_max) on edge hosts (deploy/README.md)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot enlarge the HTTP/3 socket's buffers"),
        }
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let addr = socket.local_addr()?;
        let allow_mtud = !udp.may_fragment();
        let max_payload = config.get_max_udp_payload_size().min(64 * 1024) as usize;
        let endpoint = proto::Endpoint::new(Arc::new(config), Some(server), allow_mtud, None);
        let shared = Arc::new(Shared {
            socket,
            udp,
            touched: Mutex::new(Vec::new()),
            wake: Notify::new(),
            closing: Mutex::new(None),
            stream_ceiling: AtomicU64::new(0),
            keepalive_ms: AtomicU64::new(0),
            members: Mutex::new(BTreeMap::new()),
            siblings: OnceLock::new(),
        });
        let (accepted, incoming) = mpsc::unbounded_channel();
        let recv_len = max_payload * shared.udp.gro_segments() * quinn_udp::BATCH_SIZE;
        let driver = Driver {
            shared: shared.clone(),
            endpoint,
            conns: HashMap::new(),
            cap,
            timers: BinaryHeap::new(),
            accepted,
            recv_buf: vec![0; recv_len].into_boxed_slice(),
            send_buf: Vec::new(),
            blocked: None,
            due: Vec::new(),
            closed: false,
            client_cap_warned: None,
            next_sweep: None,
        };
        let driver = tokio::spawn(driver.run());
        Ok(Self {
            shared,
            incoming,
            driver: Some(driver),
            addr,
        })
    }

    /// Lets each connection's concurrent requests grow from the server configuration's
    /// allowance to `ceiling`, once a peer has half its allowance open. quinn-proto keeps a
    /// table slot for every stream a peer may open, idle or not: a small first allowance
    /// keeps idle connections small, and the few that open many requests at once get more
    /// (a MAX_STREAMS frame, the next packet).
    pub fn grow_streams_to(&self, ceiling: u32) {
        self.shared
            .stream_ceiling
            .store(u64::from(ceiling), Ordering::Relaxed);
    }

    /// Closes connections that have had no request open for `keepalive` (H3_NO_ERROR, as
    /// nginx's `keepalive_timeout` closes HTTP/3 connections), however their clients keep
    /// them alive with PINGs: an idle connection holds some 27 KiB, and a client's next
    /// request reconnects with 0-RTT. Zero leaves them to QUIC's idle timeout.
    pub fn close_idle_after(&self, keepalive: std::time::Duration) {
        let ms = u64::try_from(keepalive.as_millis()).unwrap_or(u64::MAX);
        self.shared.keepalive_ms.store(ms, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next new connection (its handshake may still be under way), or `None` once the
    /// endpoint is closed.
    pub async fn accept(&mut self) -> Option<Connection> {
        self.incoming.recv().await
    }

    /// Closes every connection with `code` and `reason`, and refuses new ones.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        *lock(&self.shared.closing) = Some((code, Bytes::copy_from_slice(reason)));
        self.shared.wake.notify_one();
    }

    /// Waits until every connection has finished closing (after [`Endpoint::close`]).
    pub async fn wait_idle(mut self) {
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Only this handle closes: nothing can set a close between the look and the close.
        if lock(&self.shared.closing).is_none() {
            self.close(NO_ERROR, b"");
        }
    }
}

/// A UDP socket bound to `at` in its `SO_REUSEPORT` group.
fn new_member(at: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&at.into())?;
    Ok(socket)
}

/// Most drivers [`bind`] starts on one port.
pub const MAX_DRIVERS: usize = 64;

/// Serves `server` on `addr` with `drivers` endpoints, each with its own driver task and
/// socket, so that QUIC's per-packet work (decryption, encryption, loss recovery) spreads
/// over as many cores. The sockets share the port (`SO_REUSEPORT`); a classic BPF program
/// attached to the group hands each datagram to the socket whose endpoint issued its
/// destination connection ID (each endpoint's IDs start with a byte equal to its index
/// modulo `drivers`; a client's first Initial, whose ID the client chose, lands on the
/// endpoint its first byte names, which then owns the connection). A client whose address
/// changes (NAT rebinding, a phone moving between networks) keeps reaching its endpoint,
/// which the kernel's default 4-tuple hash would not ensure. With one driver, or where the
/// program cannot be attached, this is a single plain socket.
///
/// `inherited`, a socket bound to `addr` already (passed by the service manager), is the
/// first of them; the others join it only if it allows (`SO_REUSEPORT`, systemd's
/// `ReusePort=yes`), else it is the only one.
pub fn bind(
    addr: SocketAddr,
    inherited: Option<std::net::UdpSocket>,
    drivers: usize,
    config: proto::EndpointConfig,
    server: Arc<proto::ServerConfig>,
    cap: &OpenConnections,
) -> io::Result<Vec<Endpoint>> {
    let mut drivers = drivers.clamp(1, MAX_DRIVERS);
    if let Some(socket) = &inherited
        && drivers > 1
        && !socket2::SockRef::from(socket).reuse_port()?
    {
        tracing::warn!(%addr, "the HTTP/3 socket passed in does not allow SO_REUSEPORT (ReusePort=yes); one driver serves the port");
        drivers = 1;
    }
    if drivers == 1 {
        let socket = match inherited {
            Some(socket) => socket,
            None => std::net::UdpSocket::bind(addr)?,
        };
        return Ok(vec![Endpoint::new(socket, config, server, cap.clone())?]);
    }
    if addr.port() != 0 && inherited.is_none() {
        // A port some other process's group holds would take these sockets in (same user)
        // rather than refuse them: a plain bind refuses, so try one first.
        drop(std::net::UdpSocket::bind(addr)?);
    }
    let mut sockets = Vec::with_capacity(drivers);
    let mut at = addr;
    let passed_in = inherited.is_some();
    let mut inherited = inherited;
    for i in 0..drivers {
        let socket = match inherited.take() {
            Some(socket) => socket2::Socket::from(socket),
            None => match new_member(at) {
                Ok(socket) => socket,
                // The process may lack the privilege to bind the port the service manager
                // bound for it (443): the socket it passed serves alone. (Its group then
                // has one member, which the steering program's choice falls back to.)
                Err(e) if passed_in => {
                    tracing::warn!(error = %e, %addr, "cannot add HTTP/3 driver sockets to the port passed in; one driver serves it");
                    sockets.truncate(1);
                    let socket = sockets.pop().ok_or(e)?;
                    return Ok(vec![Endpoint::new(socket, config, server, cap.clone())?]);
                }
                Err(e) => return Err(e),
            },
        };
        if i == 0 {
            // Port 0 asked for any port: the others join the one the first was given.
            at = socket.local_addr()?.as_socket().unwrap_or(at);
            if let Err(e) = steer_by_connection_id(&socket, drivers) {
                tracing::warn!(error = %e, "cannot steer HTTP/3 datagrams by connection ID; one driver serves the port");
                return Ok(vec![Endpoint::new(
                    socket.into(),
                    config,
                    server,
                    cap.clone(),
                )?]);
            }
        }
        sockets.push(std::net::UdpSocket::from(socket));
    }
    let endpoints = sockets
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            // One reset key for all: a stateless reset is only sent by the endpoint that
            // issued the ID, which is the one the datagram reaches.
            let mut config = config.clone();
            config.cid_generator(move || Box::new(DriverIds { index, drivers }));
            Endpoint::new(socket, config, server.clone(), cap.clone())
        })
        .collect::<io::Result<Vec<_>>>()?;
    // Room for a client at the cap may be made on any driver.
    let all: Vec<Weak<Shared>> = endpoints
        .iter()
        .map(|e| Arc::downgrade(&e.shared))
        .collect();
    for endpoint in &endpoints {
        let _ = endpoint.shared.siblings.set(all.clone());
    }
    Ok(endpoints)
}

/// Connection IDs of 8 bytes whose first byte, modulo the number of drivers, is the
/// issuing driver's index (the rest random).
struct DriverIds {
    index: usize,
    drivers: usize,
}

impl proto::ConnectionIdGenerator for DriverIds {
    fn generate_cid(&mut self) -> proto::ConnectionId {
        let mut bytes = [0u8; 8];
        // Unpredictable IDs keep connections unlinkable; a failed draw still yields IDs
        // that route right, only guessable ones.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        bytes[0] = first_byte(bytes[0], self.index, self.drivers);
        proto::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A byte `b` with `b % drivers == index`, drawn from `random`.
fn first_byte(random: u8, index: usize, drivers: usize) -> u8 {
    let n = drivers.max(1);
    let mut b = usize::from(random) / n * n + index % n;
    if b > usize::from(u8::MAX) {
        b -= n;
    }
    b as u8
}

/// Attaches to `socket`'s `SO_REUSEPORT` group a classic BPF program that picks the socket
/// at index `dcid[0] % drivers`: the destination connection ID starts at byte 1 of a short
/// header and at byte 6 of a long one (flags, version, ID length). A datagram too short to
/// read returns 0, the first socket.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn steer_by_connection_id(socket: &socket2::Socket, drivers: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const LDB_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const JA: u16 = 0x05; // BPF_JMP | BPF_JA
    const MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
    const RET_A: u16 = 0x16; // BPF_RET | BPF_A
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let program = [
        insn(LDB_ABS, 0, 0, 0),   // A = flags byte
        insn(JSET_K, 2, 0, 0x80), // long header? → 4
        insn(LDB_ABS, 0, 0, 1),   // short: A = dcid[0]
        insn(JA, 0, 0, 1),        // → 5
        insn(LDB_ABS, 0, 0, 6),   // long: A = dcid[0]
        insn(MOD_K, 0, 0, drivers as u32),
        insn(RET_A, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the kernel copies them.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn steer_by_connection_id(_socket: &socket2::Socket, _drivers: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a connection's lock leaves protocol state that is still
    // consistent enough to close; carry on rather than poison every later call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection's protocol state and the tasks waiting on it.
struct ConnInner {
    handle: ConnectionHandle,
    state: Mutex<ConnState>,
    shared: Arc<Shared>,
    /// Queued in `Shared::touched` and not yet driven.
    touched: AtomicBool,
    /// Live [`Connection`] handles; the last one dropped closes the connection.
    handles: AtomicUsize,
    remote: SocketAddr,
    /// Its slot under the endpoint's connection cap, given back when its driver lets it go,
    /// or handed to a new client when it is closed for being idle at the cap.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    /// Its place in its client's count under the client cap, from the handshake's end until
    /// its driver lets it go.
    counted: Mutex<Option<ClientSlot>>,
}

impl ConnInner {
    /// Notes a request begun or answered now: `st` is this connection's state, locked.
    fn active(self: &Arc<Self>, st: &mut ConnState) {
        let now = Instant::now();
        let mut members = lock(&self.shared.members);
        // Not listed once its driver has let it go.
        if members.remove(&(st.last_active, self.handle.0)).is_some() {
            members.insert((now, self.handle.0), self.clone());
        }
        st.last_active = now;
    }

    /// Queues this connection for its driver, which sends what the last operation produced.
    fn touch(self: &Arc<Self>) {
        if !self.touched.swap(true, Ordering::AcqRel) {
            lock(&self.shared.touched).push(self.clone());
            self.shared.wake.notify_one();
        }
    }
}

/// A connection's place in its driver's [`Shared::members`]: when it was last active, and
/// its handle.
type Member = (Instant, usize);

struct ConnState {
    conn: proto::Connection,
    connected: bool,
    /// When the peer last opened a request stream or a response last ended (or the
    /// connection began): at the cap, the idle connection with the earliest is closed to
    /// make room. Changed only through [`ConnInner::active`].
    last_active: Instant,
    lost: Option<ConnectionError>,
    handshake: Option<Waker>,
    /// Waiting to accept a stream the peer opened: bidirectional, unidirectional.
    accepting: [Option<Waker>; 2],
    /// Waiting for stream credit to open one.
    opening: [Option<Waker>; 2],
    readers: HashMap<StreamId, Waker>,
    writers: HashMap<StreamId, Waker>,
}

fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

impl ConnState {
    /// Wakes whoever waits on what `event` reports.
    fn dispatch(&mut self, event: proto::Event) {
        match event {
            proto::Event::Connected => {
                self.connected = true;
                wake(&mut self.handshake);
            }
            proto::Event::ConnectionLost { reason } => {
                self.lost.get_or_insert(reason);
                self.wake_all();
            }
            proto::Event::Stream(StreamEvent::Opened { dir }) => {
                wake(&mut self.accepting[dir_index(dir)]);
            }
            proto::Event::Stream(StreamEvent::Available { dir }) => {
                wake(&mut self.opening[dir_index(dir)]);
            }
            proto::Event::Stream(StreamEvent::Readable { id }) => {
                if let Some(w) = self.readers.remove(&id) {
                    w.wake();
                }
            }
            proto::Event::Stream(
                StreamEvent::Writable { id }
                | StreamEvent::Finished { id }
                | StreamEvent::Stopped { id, .. },
            ) => {
                if let Some(w) = self.writers.remove(&id) {
                    w.wake();
                }
            }
            proto::Event::HandshakeDataReady
            | proto::Event::DatagramReceived
            | proto::Event::DatagramsUnblocked => {}
        }
    }

    /// Whether the connection is open, past its handshake, with no request open, and
    /// inactive since `since` (its place in its driver's list when that was copied out: one
    /// that moved since has just been active). Not `connected`, which waits for the next
    /// drive: the handshake's last packet may have come in the same batch as a newcomer's
    /// first.
    fn idle_since(&mut self, since: Instant) -> bool {
        self.last_active == since
            && !self.conn.is_handshaking()
            && self.lost.is_none()
            && self.conn.streams().remote_open_streams(Dir::Bi) == 0
    }

    /// Closes the connection from this side: the protocol sends CONNECTION_CLOSE, and every
    /// waiting task learns the connection is gone (the protocol reports no loss for a close
    /// it was asked for).
    fn close(&mut self, now: Instant, code: VarInt, reason: Bytes) {
        self.conn.close(now, code, reason);
        self.lost.get_or_insert(ConnectionError::LocallyClosed);
        self.wake_all();
    }

    fn wake_all(&mut self) {
        wake(&mut self.handshake);
        for w in self.accepting.iter_mut().chain(self.opening.iter_mut()) {
            wake(w);
        }
        for (_, w) in self.readers.drain().chain(self.writers.drain()) {
            w.wake();
        }
    }
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// A handle on one connection; clones share it, and the last one dropped closes it.
pub struct Connection(Arc<ConnInner>);

impl Clone for Connection {
    fn clone(&self) -> Self {
        self.0.handles.fetch_add(1, Ordering::Relaxed);
        Self(self.0.clone())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.0.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close(NO_ERROR, b"");
        }
    }
}

impl Connection {
    fn state(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.0.state)
    }

    /// Queues this connection for the driver, which sends what the last operation produced.
    fn touch(&self) {
        self.0.touch();
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote
    }

    /// Waits until requests may be served: the handshake is complete, or the client resumed
    /// a session and sent 0-RTT data the server accepted, so its first request is answered
    /// without waiting a round trip for the client's Finished (0.5-RTT data, limited by QUIC
    /// to three times what the client has sent until its address is validated).
    pub async fn handshake(&self) -> Result<(), ConnectionError> {
        std::future::poll_fn(|cx| {
            let mut st = self.state();
            if let Some(e) = &st.lost {
                return Poll::Ready(Err(e.clone()));
            }
            if st.connected || st.conn.has_0rtt() {
                return Poll::Ready(Ok(()));
            }
            register(&mut st.handshake, cx);
            Poll::Pending
        })
        .await
    }

    /// The next stream the peer opened in `dir`.
    pub fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<StreamId, ConnectionError>> {
        let mut st = self.state();
        if let Some(e) = &st.lost {
            return Poll::Ready(Err(e.clone()));
        }
        if let Some(id) = st.conn.streams().accept(dir) {
            if dir == Dir::Bi {
                self.0.active(&mut st);
                let ceiling = self.0.shared.stream_ceiling.load(Ordering::Relaxed);
                let allowed = st.conn.max_concurrent_streams(Dir::Bi);
                let open = st.conn.streams().remote_open_streams(Dir::Bi);
                if allowed < ceiling && open.saturating_mul(2) >= allowed {
                    let ceiling = VarInt::from_u64(ceiling).unwrap_or(VarInt::MAX);
                    st.conn.set_max_concurrent_streams(Dir::Bi, ceiling);
                }
            }
            drop(st);
            // Accepting may raise the peer's stream credit.
            self.touch();
            return Poll::Ready(Ok(id));
        }
        register(&mut st.accepting[dir_index(dir)], cx);
        Poll::Pending
    }

    /// Opens a stream in `dir`, waiting for the peer's credit.
    pub fn poll_open(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<StreamId, ConnectionError>> {
        let mut st = self.state();
        if let Some(e) = &st.lost {
            return Poll::Ready(Err(e.clone()));
        }
        if let Some(id) = st.conn.streams().open(dir) {
            return Poll::Ready(Ok(id));
        }
        register(&mut st.opening[dir_index(dir)], cx);
        Poll::Pending
    }

    /// Closes the connection with `code` and `reason`.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let mut st = self.state();
        if st.lost.is_none() {
            st.close(Instant::now(), code, Bytes::copy_from_slice(reason));
            drop(st);
            self.touch();
        }
    }

    /// Queues `chunks` (from the front; the ones taken are emptied) on stream `id`; pending
    /// while the stream's send buffer is full.
    pub fn poll_write(
        &self,
        cx: &mut Context<'_>,
        id: StreamId,
        chunks: &mut [Bytes],
    ) -> Poll<Result<(), StreamError>> {
        let mut st = self.state();
        if let Some(e) = &st.lost {
            return Poll::Ready(Err(StreamError::Lost(e.clone())));
        }
        match st.conn.send_stream(id).write_chunks(chunks) {
            Ok(_) => {
                drop(st);
                self.touch();
                Poll::Ready(Ok(()))
            }
            Err(proto::WriteError::Blocked) => {
                st.writers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Err(proto::WriteError::Stopped(code)) => Poll::Ready(Err(StreamError::Stopped(code))),
            Err(proto::WriteError::ClosedStream) => Poll::Ready(Err(StreamError::Closed)),
        }
    }

    /// Ends stream `id` after what was written.
    pub fn finish(&self, id: StreamId) -> Result<(), StreamError> {
        let mut st = self.state();
        if let Some(e) = &st.lost {
            return Err(StreamError::Lost(e.clone()));
        }
        let finished = st.conn.send_stream(id).finish();
        if id.dir() == Dir::Bi {
            self.0.active(&mut st);
        }
        drop(st);
        match finished {
            Ok(()) => {
                self.touch();
                Ok(())
            }
            Err(proto::FinishError::Stopped(code)) => Err(StreamError::Stopped(code)),
            Err(proto::FinishError::ClosedStream) => Err(StreamError::Closed),
        }
    }

    /// Ready once the peer has acknowledged everything sent on stream `id` after
    /// [`Connection::finish`], or stopped the stream, or the connection is gone: closing the
    /// connection then loses nothing of it.
    pub fn poll_delivered(&self, cx: &mut Context<'_>, id: StreamId) -> Poll<()> {
        let mut st = self.state();
        if st.lost.is_some() {
            return Poll::Ready(());
        }
        // quinn-proto frees a finished send stream once all of it is acknowledged, and then
        // no longer knows it.
        match st.conn.send_stream(id).stopped() {
            Ok(None) => {
                // Woken by the stream's Finished (or Stopped) event.
                st.writers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Ok(Some(_)) | Err(_) => Poll::Ready(()),
        }
    }

    /// Abandons sending on stream `id` with `code`; nothing to do if it is already closed.
    pub fn reset(&self, id: StreamId, code: VarInt) {
        let mut st = self.state();
        // Whoever waited to write has given up: its waker (which keeps its task's memory)
        // would otherwise stay until the connection ends, as no event names the stream again.
        st.writers.remove(&id);
        if st.lost.is_none() && st.conn.send_stream(id).reset(code).is_ok() {
            drop(st);
            self.touch();
        }
    }

    /// The next chunk of stream `id`, `None` at its end.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        id: StreamId,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        let mut st = self.state();
        if let Some(e) = &st.lost {
            return Poll::Ready(Err(StreamError::Lost(e.clone())));
        }
        let mut stream = st.conn.recv_stream(id);
        let mut chunks = match stream.read(true) {
            Ok(chunks) => chunks,
            Err(_) => return Poll::Ready(Err(StreamError::Closed)),
        };
        let read = chunks.next(usize::MAX);
        let transmit = chunks.finalize().should_transmit();
        let out = match read {
            Ok(Some(chunk)) => Poll::Ready(Ok(Some(chunk.bytes))),
            Ok(None) => Poll::Ready(Ok(None)),
            Err(proto::ReadError::Blocked) => {
                st.readers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Err(proto::ReadError::Reset(code)) => Poll::Ready(Err(StreamError::Reset(code))),
        };
        drop(st);
        if transmit {
            self.touch();
        }
        out
    }

    /// Asks the peer to stop sending on stream `id`; nothing to do if it is already closed.
    pub fn stop(&self, id: StreamId, code: VarInt) {
        let mut st = self.state();
        st.readers.remove(&id);
        if st.lost.is_none() && st.conn.recv_stream(id).stop(code).is_ok() {
            drop(st);
            self.touch();
        }
    }
}

/// The driver's record of one connection.
struct Entry {
    inner: Arc<ConnInner>,
    /// The earliest deadline queued in `Driver::timers` for it.
    queued: Option<Instant>,
}

/// The task that owns the endpoint and the socket.
struct Driver {
    shared: Arc<Shared>,
    endpoint: proto::Endpoint,
    conns: HashMap<ConnectionHandle, Entry>,
    /// Slots for connections, shared with the port's other drivers. A client beyond them
    /// is asked to prove its address (Retry), then takes the slot of the port's
    /// connection idle longest (on any driver), as nginx closes idle keep-alive connections when it runs
    /// out; with none idle it is refused (CONNECTION_REFUSED), as a full TCP listener
    /// closes at accept, and a browser falls back to TCP.
    cap: OpenConnections,
    /// Connection deadlines, earliest first; an entry may be stale, and driving a
    /// connection for a stale one costs one look.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    accepted: mpsc::UnboundedSender<Connection>,
    recv_buf: Box<[u8]>,
    send_buf: Vec<u8>,
    /// A batch the socket refused for want of buffer space, with its connection: sent
    /// before anything else once the socket is writable.
    blocked: Option<(proto::Transmit, Vec<u8>)>,
    /// Connections to drive this turn.
    due: Vec<ConnectionHandle>,
    closed: bool,
    /// When a client at its cap was last logged as a warning: one each 10 s, not one for
    /// each connection of a flood.
    client_cap_warned: Option<Instant>,
    /// When connections kept alive past the keep-alive time are next looked for.
    next_sweep: Option<Instant>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let now = Instant::now();
            let more_to_read = match self.receive(now) {
                Ok(more) => more,
                Err(e) => {
                    tracing::error!(error = %e, "HTTP/3 socket failed; the endpoint stops");
                    self.lose_all();
                    return;
                }
            };
            self.collect(now);
            self.sweep(now);
            self.drive_due(now);
            if self.closed && self.conns.is_empty() {
                return;
            }
            // Connections left with more to send go again next turn, unless the socket is
            // full, in which case its becoming writable is the next turn.
            let more_to_send = !self.due.is_empty() && self.blocked.is_none();
            if more_to_read || more_to_send {
                // Let the connections' tasks run before the next turn.
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = match (self.timers.peek(), self.next_sweep) {
                (Some(Reverse((t, _))), Some(sweep)) => Some((*t).min(sweep)),
                (Some(Reverse((t, _))), None) => Some(*t),
                (None, sweep) => sweep,
            };
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let blocked = self.blocked.is_some();
            tokio::select! {
                biased;
                _ = self.shared.wake.notified() => {}
                _ = self.shared.socket.readable() => {}
                _ = self.shared.socket.writable(), if blocked => {}
                _ = sleep => {}
            }
        }
    }

    /// Reads what the socket holds, up to a bound; true if it may hold more.
    fn receive(&mut self, now: Instant) -> io::Result<bool> {
        let mut metas = [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let chunk = self.recv_buf.len() / quinn_udp::BATCH_SIZE;
        for _ in 0..RECEIVES_PER_TURN {
            let mut iovs: Vec<IoSliceMut<'_>> = self
                .recv_buf
                .chunks_mut(chunk)
                .map(IoSliceMut::new)
                .collect();
            let shared = &self.shared;
            let got = shared.socket.try_io(Interest::READABLE, || {
                shared
                    .udp
                    .recv((&shared.socket).into(), &mut iovs, &mut metas)
            });
            let msgs = match got {
                Ok(msgs) => msgs,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                // ICMP errors surface as these; QUIC neither needs nor trusts them.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Err(e),
            };
            drop(iovs);
            for (i, meta) in metas.iter().take(msgs).enumerate() {
                let start = i * chunk;
                let ecn = meta
                    .ecn
                    .and_then(|e| proto::EcnCodepoint::from_bits(e as u8));
                // Each datagram in an allocation of its own: quinn-proto hands out stream
                // data as views of it, and a view kept (a stream's unread bytes) would keep
                // a whole receive-offload batch, up to 64 KB, alive.
                let stride = meta.stride.max(1);
                for at in (start..start + meta.len).step_by(stride) {
                    let end = (at + stride).min(start + meta.len);
                    let datagram = BytesMut::from(&self.recv_buf[at..end]);
                    self.datagram(now, meta.addr, meta.dst_ip, ecn, datagram);
                }
            }
        }
        Ok(true)
    }

    fn datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<std::net::IpAddr>,
        ecn: Option<proto::EcnCodepoint>,
        data: BytesMut,
    ) {
        let mut response = Vec::new();
        match self
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut response)
        {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(entry) = self.conns.get(&ch) {
                    lock(&entry.inner.state).conn.handle_event(event);
                    self.due.push(ch);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                // A client holding as many connections as it may is turned away before it
                // costs a handshake. Only completed handshakes are counted, so one whose
                // source is spoofed counts against nobody.
                let client = incoming.remote_address().ip();
                if self.cap.client_cap().is_some_and(|c| c.is_full(client)) && !self.closed {
                    self.over_client_cap(remote, "refused");
                    let t = self.endpoint.refuse(incoming, &mut response);
                    self.respond(&t, &response);
                    return;
                }
                let free = if self.closed { None } else { self.cap.take() };
                let slot = match free {
                    Some(slot) => Some(slot),
                    None if self.closed => None,
                    // Room may be made for a client that proves its address. Asking it to (a
                    // Retry) is stateless, so a spoofed first packet costs one answer, no
                    // search, and closes nobody's connection.
                    None if !incoming.remote_address_validated() => {
                        match self.endpoint.retry(incoming, &mut response) {
                            Ok(t) => self.respond(&t, &response),
                            Err(e) => self.refuse(remote, e.into_incoming()),
                        }
                        return;
                    }
                    None => self.make_room(now),
                };
                let Some(slot) = slot else {
                    self.refuse(remote, incoming);
                    return;
                };
                match self.endpoint.accept(incoming, now, &mut response, None) {
                    Ok((ch, conn)) => self.admit(ch, conn, slot),
                    Err(e) => {
                        tracing::debug!(error = %e.cause, "HTTP/3 handshake refused");
                        if let Some(t) = e.response {
                            self.respond(&t, &response);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => self.respond(&t, &response),
            None => {}
        }
    }

    fn admit(&mut self, ch: ConnectionHandle, conn: proto::Connection, slot: OwnedSemaphorePermit) {
        let began = Instant::now();
        let inner = Arc::new(ConnInner {
            handle: ch,
            remote: conn.remote_address(),
            state: Mutex::new(ConnState {
                conn,
                connected: false,
                last_active: began,
                lost: None,
                handshake: None,
                accepting: [None, None],
                opening: [None, None],
                readers: HashMap::new(),
                writers: HashMap::new(),
            }),
            shared: self.shared.clone(),
            touched: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            slot: Mutex::new(Some(slot)),
            counted: Mutex::new(None),
        });
        lock(&self.shared.members).insert((began, ch.0), inner.clone());
        self.conns.insert(
            ch,
            Entry {
                inner: inner.clone(),
                queued: None,
            },
        );
        self.due.push(ch);
        // Nobody accepting any more: the handle drops here and closes the connection.
        let _ = self.accepted.send(Connection(inner));
    }

    /// Turns `incoming` away with CONNECTION_REFUSED.
    fn refuse(&mut self, remote: SocketAddr, incoming: proto::Incoming) {
        if !self.closed {
            self.cap.note_refused();
            tracing::debug!(%remote, "HTTP/3 connection limit reached; refused");
        }
        let mut response = Vec::new();
        let t = self.endpoint.refuse(incoming, &mut response);
        self.respond(&t, &response);
    }

    /// The port's established connection, on any of its drivers, that has had no request
    /// open for longest, if any.
    fn idlest(&self) -> Option<Arc<ConnInner>> {
        let alone = [Arc::downgrade(&self.shared)];
        let drivers = self.shared.siblings.get().map_or(&alone[..], Vec::as_slice);
        drivers
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|driver| first_idle(&driver))
            .min_by_key(|(since, _)| *since)
            .map(|(_, inner)| inner)
    }

    /// At the cap, for a client whose address is proven: closes the connection idle longest
    /// (H3_NO_ERROR, as an idle timeout would), on whichever driver, and hands its slot over.
    fn make_room(&mut self, now: Instant) -> Option<OwnedSemaphorePermit> {
        // Another driver may take the same connection's slot first; then look again.
        for _ in 0..3 {
            let inner = self.idlest()?;
            let Some(slot) = lock(&inner.slot).take() else {
                continue;
            };
            lock(&inner.state).close(now, NO_ERROR, Bytes::new());
            // Its own driver sends the close.
            inner.touch();
            self.cap.note_reclaimed();
            tracing::debug!(remote = %inner.remote, "idle HTTP/3 connection closed to make room");
            return Some(slot);
        }
        None
    }

    /// Closes this driver's connections that have had no request open for the keep-alive
    /// time (see [`Endpoint::close_idle_after`]), at the pace of
    /// [`cadenza_common::http::sweep_every`].
    fn sweep(&mut self, now: Instant) {
        let keepalive = Duration::from_millis(self.shared.keepalive_ms.load(Ordering::Relaxed));
        if keepalive.is_zero() || self.closed {
            self.next_sweep = None;
            return;
        }
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(now + cadenza_common::http::sweep_every(keepalive));
        let Some(cutoff) = now.checked_sub(keepalive) else {
            return;
        };
        // Least recently active first; the list is copied out, as a connection's state is
        // locked before the list, never while it is held.
        let stale: Vec<(Member, Arc<ConnInner>)> = lock(&self.shared.members)
            .range(..(cutoff, 0))
            .map(|(member, inner)| (*member, inner.clone()))
            .collect();
        let mut closed = 0;
        for (member, inner) in stale {
            let mut st = lock(&inner.state);
            if st.idle_since(member.0) {
                st.close(now, NO_ERROR, Bytes::new());
                drop(st);
                self.due.push(inner.handle);
                closed += 1;
            }
        }
        if closed > 0 {
            self.cap.note_kept_alive_out(closed);
            tracing::debug!(
                closed,
                "HTTP/3 connections closed after the keep-alive time"
            );
        }
    }

    /// Sends an endpoint's own reply (version negotiation, stateless reset, refusal); one
    /// lost to a full socket buffer is a datagram lost like any other.
    fn respond(&self, t: &proto::Transmit, buf: &[u8]) {
        let _ = send(&self.shared, t, &buf[..t.size]);
    }

    /// Gathers the connections due this turn: touched by their handles, or past a deadline.
    fn collect(&mut self, now: Instant) {
        let touched = std::mem::take(&mut *lock(&self.shared.touched));
        for inner in touched {
            self.due.push(inner.handle);
        }
        while let Some(Reverse((t, ch))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let ch = ConnectionHandle(ch);
            if let Some(entry) = self.conns.get_mut(&ch) {
                if entry.queued == Some(t) {
                    entry.queued = None;
                }
                self.due.push(ch);
            }
        }
        let closing = lock(&self.shared.closing).clone();
        if let (Some((code, reason)), false) = (closing, self.closed) {
            self.closed = true;
            self.endpoint.set_server_config(None);
            for (ch, entry) in &self.conns {
                let mut st = lock(&entry.inner.state);
                if st.lost.is_none() {
                    st.close(now, code, reason.clone());
                }
                self.due.push(*ch);
            }
        }
    }

    fn drive_due(&mut self, now: Instant) {
        if let Some((t, buf)) = self.blocked.take() {
            match send(&self.shared, &t, &buf[..t.size]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = Some((t, buf));
                    return;
                }
                _ => {}
            }
        }
        let mut due = std::mem::take(&mut self.due);
        due.sort_unstable_by_key(|ch| ch.0);
        due.dedup();
        let mut again = Vec::new();
        for ch in due {
            if self.blocked.is_some() || self.drive(ch, now) {
                again.push(ch);
            }
        }
        self.due = again;
    }

    /// Runs one connection's timers, events and sends; true if it has more to send.
    fn drive(&mut self, ch: ConnectionHandle, now: Instant) -> bool {
        let Some(entry) = self.conns.get(&ch) else {
            return false;
        };
        let inner = entry.inner.clone();
        inner.touched.store(false, Ordering::Release);
        let mut st = lock(&inner.state);
        if st.conn.poll_timeout().is_some_and(|t| t <= now) {
            st.conn.handle_timeout(now);
        }
        let mut more = false;
        let max = (GSO_BYTES / usize::from(st.conn.current_mtu()))
            .clamp(1, self.shared.udp.max_gso_segments());
        for batch in 0.. {
            if batch == BATCHES_PER_TURN {
                more = true;
                break;
            }
            self.send_buf.clear();
            let Some(t) = st.conn.poll_transmit(now, max, &mut self.send_buf) else {
                break;
            };
            let sent = send(&self.shared, &t, &self.send_buf[..t.size]);
            if sent.is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock) {
                self.blocked = Some((t, std::mem::take(&mut self.send_buf)));
                more = true;
                break;
            }
        }
        let mut drained = false;
        while let Some(event) = st.conn.poll_endpoint_events() {
            drained |= event.is_drained();
            if let Some(event) = self.endpoint.handle_event(ch, event) {
                st.conn.handle_event(event);
                more = true;
            }
        }
        while let Some(event) = st.conn.poll() {
            if matches!(event, proto::Event::Connected) && !self.count_client(&inner, &mut st, now)
            {
                continue;
            }
            st.dispatch(event);
        }
        if drained || st.conn.is_drained() {
            st.lost.get_or_insert(ConnectionError::LocallyClosed);
            st.wake_all();
            drop(st);
            if let Some(entry) = self.conns.remove(&ch) {
                self.release(&entry.inner);
            }
            return false;
        }
        let deadline = st.conn.poll_timeout();
        drop(st);
        if let (Some(t), Some(entry)) = (deadline, self.conns.get_mut(&ch))
            && entry.queued.is_none_or(|q| t < q)
        {
            entry.queued = Some(t);
            self.timers.push(Reverse((t, ch.0)));
        }
        more
    }

    /// A connection whose handshake has just completed takes its place in its client's
    /// count; false if the client holds its cap already (handshakes that raced past the
    /// look at accept), and the connection is closed.
    fn count_client(&mut self, inner: &ConnInner, st: &mut ConnState, now: Instant) -> bool {
        let Some(clients) = self.cap.client_cap() else {
            return true;
        };
        match clients.admit(inner.remote.ip()) {
            Ok(place) => {
                *lock(&inner.counted) = place;
                true
            }
            Err(_) => {
                self.over_client_cap(inner.remote, "closed");
                st.close(
                    now,
                    EXCESSIVE_LOAD,
                    Bytes::from_static(b"too many connections from this client"),
                );
                false
            }
        }
    }

    /// Counts and logs a connection from `client` refused or closed (`what`) at the
    /// client's cap.
    fn over_client_cap(&mut self, client: SocketAddr, what: &str) {
        self.cap.note_over_client_cap();
        let now = Instant::now();
        if self
            .client_cap_warned
            .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(10))
        {
            self.client_cap_warned = Some(now);
            tracing::warn!(%client, what, "per-client connection limit reached over HTTP/3");
        } else {
            tracing::debug!(%client, what, "per-client connection limit reached over HTTP/3");
        }
    }

    /// The socket failed: every connection is lost.
    fn lose_all(&mut self) {
        for entry in std::mem::take(&mut self.conns).into_values() {
            let mut st = lock(&entry.inner.state);
            st.lost.get_or_insert(ConnectionError::LocallyClosed);
            st.wake_all();
            drop(st);
            self.release(&entry.inner);
        }
    }

    /// A connection the driver has let go: no longer one of the port's to look through, and
    /// its slot (unless handed on) free for the next client.
    fn release(&self, inner: &ConnInner) {
        let st = lock(&inner.state);
        lock(&self.shared.members).remove(&(st.last_active, inner.handle.0));
        drop(st);
        drop(lock(&inner.slot).take());
        drop(lock(&inner.counted).take());
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The connections hold the shared state that holds them: break the cycle, so the
        // socket closes with the driver even if it ends (a runtime shutting down) with
        // connections left.
        lock(&self.shared.members).clear();
    }
}

/// How many of a driver's connections [`first_idle`] takes at a time.
const LOOK_AHEAD: usize = 64;

/// The connection of `driver` idle longest (no request open, handshake done, its slot still
/// its own), and since when: its members are looked at least recently active first, so the
/// search passes over busy ones only. They are copied out a few at a time, since a
/// connection's state is locked before its driver's list, never while it is held.
fn first_idle(driver: &Shared) -> Option<(Instant, Arc<ConnInner>)> {
    let mut after = std::ops::Bound::Unbounded;
    loop {
        let ahead: Vec<(Member, Arc<ConnInner>)> = lock(&driver.members)
            .range((after, std::ops::Bound::Unbounded))
            .take(LOOK_AHEAD)
            .map(|(member, inner)| (*member, inner.clone()))
            .collect();
        let (last, _) = ahead.last()?;
        after = std::ops::Bound::Excluded(*last);
        for (member, inner) in ahead {
            if lock(&inner.slot).is_none() {
                continue;
            }
            if lock(&inner.state).idle_since(member.0) {
                return Some((member.0, inner.clone()));
            }
        }
    }
}

fn send(shared: &Shared, t: &proto::Transmit, contents: &[u8]) -> io::Result<()> {
    let transmit = quinn_udp::Transmit {
        destination: t.destination,
        ecn: t
            .ecn
            .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    shared.socket.try_io(Interest::WRITABLE, || {
        shared.udp.send((&shared.socket).into(), &transmit)
    })
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use cadenza_common::http::tls;

    use super::*;

    /// `n` bytes of a pattern that differs per stream, so a chunk sent on the wrong stream or
    /// at the wrong offset shows.
    fn pattern(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    /// Answers each stream's 5-byte request (seed, length) with that pattern.
    async fn answer(conn: Connection, id: StreamId) -> Result<(), StreamError> {
        let mut request = Vec::new();
        while let Some(chunk) = poll_fn(|cx| conn.poll_read(cx, id)).await? {
            request.extend_from_slice(&chunk);
        }
        let len = u32::from_be_bytes([request[1], request[2], request[3], request[4]]);
        for piece in pattern(request[0], len as usize).chunks(64 * 1024) {
            let mut chunk = [Bytes::copy_from_slice(piece)];
            while !chunk[0].is_empty() {
                poll_fn(|cx| conn.poll_write(cx, id, &mut chunk)).await?;
            }
        }
        conn.finish(id)
    }

    /// A server configuration with a fresh certificate, and a client configuration that
    /// trusts it.
    fn configs() -> (Arc<proto::ServerConfig>, quinn::ClientConfig) {
        let pem = tls::self_signed(&["localhost"]).unwrap();
        let server_tls = tls::server_config_with_alpn(&pem, &[b"test"]).unwrap();
        let crypto = proto::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap();
        let server = proto::ServerConfig::with_crypto(Arc::new(crypto));
        let mut client_tls = Arc::unwrap_or_clone(tls::client_config(pem.cert.as_bytes()).unwrap());
        client_tls.alpn_protocols = vec![b"test".to_vec()];
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap();
        (
            Arc::new(server),
            quinn::ClientConfig::new(Arc::new(client_crypto)),
        )
    }

    /// An endpoint on a fresh local port, and a quinn client endpoint that trusts it.
    fn pair() -> (Endpoint, quinn::Endpoint) {
        let (server, client_config) = configs();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cap = OpenConnections::new(usize::MAX);
        let endpoint =
            Endpoint::new(socket, proto::EndpointConfig::default(), server, cap).unwrap();
        (endpoint, client(client_config))
    }

    /// A quinn client endpoint on a fresh local port using `config`.
    fn client(config: quinn::ClientConfig) -> quinn::Endpoint {
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(config);
        client
    }

    /// `drivers` drivers on a fresh local port under `cap`, not yet serving.
    fn local_endpoints(
        server: Arc<proto::ServerConfig>,
        drivers: usize,
        cap: &OpenConnections,
    ) -> Vec<Endpoint> {
        bind(
            "127.0.0.1:0".parse().unwrap(),
            None,
            drivers,
            proto::EndpointConfig::default(),
            server,
            cap,
        )
        .unwrap()
    }

    /// `drivers` drivers on a fresh local port under `cap`, each connection's requests
    /// answered by [`answer`]: the port's address, and each driver's shared state.
    fn serve_port(
        server: Arc<proto::ServerConfig>,
        drivers: usize,
        cap: &OpenConnections,
    ) -> (SocketAddr, Vec<Arc<Shared>>) {
        serve(local_endpoints(server, drivers, cap))
    }

    /// Serves `endpoints` (one port's drivers) as [`serve_port`] does.
    fn serve(endpoints: Vec<Endpoint>) -> (SocketAddr, Vec<Arc<Shared>>) {
        let addr = endpoints[0].local_addr();
        let shared = endpoints.iter().map(|e| e.shared.clone()).collect();
        for endpoint in endpoints {
            tokio::spawn(serve_all(endpoint, Arc::default()));
        }
        (addr, shared)
    }

    /// Serves every connection `endpoint` accepts with [`answer`], counting them.
    async fn serve_all(mut endpoint: Endpoint, accepted: Arc<AtomicUsize>) {
        while let Some(conn) = endpoint.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if conn.handshake().await.is_err() {
                    return;
                }
                while let Ok(id) = poll_fn(|cx| conn.poll_accept(cx, Dir::Bi)).await {
                    tokio::spawn(answer(conn.clone(), id));
                }
            });
        }
    }

    /// Waits up to 5 s for the edge to close `conn` with H3_NO_ERROR; `why` it should.
    async fn closed_with_no_error(conn: &quinn::Connection, why: &str) {
        match tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect(why)
        {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, NO_ERROR, "{why}");
            }
            other => panic!("{why}: closed with {other:?}"),
        }
    }

    /// Waits up to `within` for `cap` to hold at most `n` connections; `why` it should.
    async fn held_at_most(cap: &OpenConnections, n: usize, within: Duration, why: &str) {
        let fell = async {
            while cap.count() > n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(within, fell).await.expect(why);
    }

    /// Asks `conn` for `len` bytes of pattern `seed`.
    async fn fetch(conn: &quinn::Connection, seed: u8, len: usize) -> Vec<u8> {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut request = vec![seed];
        request.extend_from_slice(&(len as u32).to_be_bytes());
        send.write_all(&request).await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(8 << 20).await.unwrap()
    }

    #[test]
    fn driver_ids_name_their_driver() {
        for drivers in 1..=MAX_DRIVERS {
            for index in 0..drivers {
                for random in [0u8, 1, 127, 200, 254, 255] {
                    let b = first_byte(random, index, drivers);
                    assert_eq!(
                        usize::from(b) % drivers,
                        index,
                        "{drivers} drivers, {index}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn sharded_drivers_keep_each_connection_when_its_client_changes_address() {
        let (server, client_config) = configs();
        let drivers = 4;
        let endpoints = local_endpoints(server, drivers, &OpenConnections::new(usize::MAX));
        assert_eq!(endpoints.len(), drivers, "steering is attached");
        let addr = endpoints[0].local_addr();
        assert!(endpoints.iter().all(|e| e.local_addr() == addr));
        let counts: Vec<Arc<AtomicUsize>> = (0..drivers).map(|_| Arc::default()).collect();
        for (endpoint, count) in endpoints.into_iter().zip(&counts) {
            tokio::spawn(serve_all(endpoint, count.clone()));
        }

        // Each client moves to a new port mid-connection. The kernel's 4-tuple hash would
        // send most of them to another driver, which does not know the connection (and,
        // sharing the reset key, would reset it).
        let clients = 12;
        let mut runs = Vec::new();
        for seed in 0..clients {
            let client_config = client_config.clone();
            runs.push(tokio::spawn(async move {
                let client = client(client_config);
                let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
                assert!(fetch(&conn, seed, 100_000).await == pattern(seed, 100_000));
                let before = client.local_addr().unwrap();
                client
                    .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                    .unwrap();
                assert_ne!(client.local_addr().unwrap(), before);
                let after = fetch(&conn, seed ^ 0x55, 300_000).await;
                assert!(
                    after == pattern(seed ^ 0x55, 300_000),
                    "client {seed} after moving"
                );
                conn.close(0u32.into(), b"");
                client.wait_idle().await;
            }));
        }
        for run in runs {
            tokio::time::timeout(Duration::from_secs(20), run)
                .await
                .expect("every client finishes")
                .unwrap();
        }
        // A second group on the same port is refused, as a plain socket would be.
        let again = bind(
            addr,
            None,
            drivers,
            proto::EndpointConfig::default(),
            configs().0,
            &OpenConnections::new(usize::MAX),
        );
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
        let per_driver: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(per_driver.iter().sum::<usize>(), clients as usize);
        assert!(
            per_driver.iter().filter(|&&n| n > 0).count() >= 2,
            "connections spread over the drivers: {per_driver:?}"
        );
    }

    /// Opens a request on `conn` and leaves it unfinished, so the connection is not idle.
    /// Returns once a request sent after it has been answered, so the server has seen it.
    async fn hold_open(conn: &quinn::Connection) -> quinn::SendStream {
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&[1]).await.unwrap();
        assert_eq!(fetch(conn, 9, 10).await, pattern(9, 10));
        send
    }

    #[tokio::test]
    async fn a_socket_passed_in_serves_alone_or_leads_the_group_it_allows() {
        let (server, client_config) = configs();
        let cap = OpenConnections::new(usize::MAX);
        let passed = |reuse_port: bool| {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .unwrap();
            socket.set_reuse_port(reuse_port).unwrap();
            socket
                .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            std::net::UdpSocket::from(socket)
        };
        for (reuse_port, want) in [(false, 1), (true, 2)] {
            let socket = passed(reuse_port);
            let addr = socket.local_addr().unwrap();
            let endpoints = bind(
                addr,
                Some(socket),
                2,
                proto::EndpointConfig::default(),
                server.clone(),
                &cap,
            )
            .unwrap();
            assert_eq!(endpoints.len(), want, "SO_REUSEPORT {reuse_port}");
            assert!(endpoints.iter().all(|e| e.local_addr() == addr));
            for endpoint in endpoints {
                tokio::spawn(serve_all(endpoint, Arc::default()));
            }
            // Clients land on either driver; every one is served.
            let client = client(client_config.clone());
            for seed in 0..4 {
                let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
                assert_eq!(fetch(&conn, seed, 3000).await, pattern(seed, 3000));
            }
        }
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_until_one_closes() {
        let (server, client_config) = configs();
        // Two drivers share the cap: a client's connection lands on either.
        let cap = OpenConnections::new(2);
        let (addr, _) = serve_port(server, 2, &cap);
        let client = client(client_config);
        let connect = || async { client.connect(addr, "localhost").unwrap().await };
        let first = connect().await.unwrap();
        let second = connect().await.unwrap();
        assert_eq!(fetch(&second, 3, 5000).await, pattern(3, 5000));
        // Neither is idle, so neither may be closed to make room.
        let _held = (hold_open(&first).await, hold_open(&second).await);
        assert_eq!(cap.count(), 2);
        for _ in 0..3 {
            match connect().await {
                Err(quinn::ConnectionError::ConnectionClosed(close)) => {
                    assert_eq!(
                        close.error_code,
                        proto::TransportErrorCode::CONNECTION_REFUSED
                    );
                }
                other => panic!("a third connection got {other:?}"),
            }
        }
        assert_eq!(cap.count(), 2, "refused connections take no place");
        assert_eq!((cap.refused(), cap.reclaimed()), (3, 0));
        first.close(0u32.into(), b"");
        held_at_most(
            &cap,
            1,
            Duration::from_secs(10),
            "a closed connection gives its place back",
        )
        .await;
        let third = connect().await.expect("a place came free");
        assert_eq!(fetch(&third, 9, 70_000).await, pattern(9, 70_000));
        assert_eq!(fetch(&second, 4, 100).await, pattern(4, 100));
    }

    #[tokio::test]
    async fn a_client_at_its_own_cap_is_refused_and_handshakes_racing_past_it_are_closed() {
        let (server, client_config) = configs();
        let clients = cadenza_common::http::ClientCap::new(1, |_| false);
        let cap = OpenConnections::new(usize::MAX).with_client_cap(Some(clients.clone()));
        let (addr, _) = serve_port(server, 1, &cap);
        let client = client(client_config);
        let connect = || async { client.connect(addr, "localhost").unwrap().await };
        // Both handshakes begin before either ends, so both are let in; the one to finish
        // second finds the client's place taken and is closed.
        let (a, b) = tokio::join!(connect(), connect());
        let (a, b) = (a.unwrap(), b.unwrap());
        let first_closed = async {
            tokio::select! {
                e = a.closed() => (e, b),
                e = b.closed() => (e, a),
            }
        };
        let (why, kept) = tokio::time::timeout(Duration::from_secs(5), first_closed)
            .await
            .expect("one of two racing connections closed");
        match why {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, EXCESSIVE_LOAD);
            }
            other => panic!("the racing connection ended with {other:?}"),
        }
        assert_eq!(fetch(&kept, 3, 5000).await, pattern(3, 5000));
        // At its cap, the client's next connection is refused before a handshake.
        match connect().await {
            Err(quinn::ConnectionError::ConnectionClosed(close)) => {
                assert_eq!(
                    close.error_code,
                    proto::TransportErrorCode::CONNECTION_REFUSED
                );
            }
            other => panic!("a connection past the client's cap got {other:?}"),
        }
        assert_eq!(cap.over_client_cap(), 2);
        assert_eq!(cap.refused(), 0, "the listener's own cap refused nobody");
        kept.close(0u32.into(), b"");
        let freed = async {
            while clients.census().0 > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), freed)
            .await
            .expect("a closed connection gives its client's place back");
        let again = connect().await.expect("the client's place came back");
        assert_eq!(fetch(&again, 4, 100).await, pattern(4, 100));
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_longest_makes_room_for_a_proven_client() {
        let (server, client_config) = configs();
        let cap = OpenConnections::new(3);
        let (addr, _) = serve_port(server, 1, &cap);
        let client = client(client_config.clone());
        let connect = || async { client.connect(addr, "localhost").unwrap().await };

        // `c` opens a request first and has its answer last, `a` asks in between, and
        // `busy` keeps one open: `a` has been idle longest.
        let c = connect().await.unwrap();
        let (mut c_send, mut c_recv) = c.open_bi().await.unwrap();
        c_send.write_all(&[2, 0, 0, 3, 232]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a = connect().await.unwrap();
        assert_eq!(fetch(&a, 1, 1000).await, pattern(1, 1000));
        tokio::time::sleep(Duration::from_millis(20)).await;
        c_send.finish().unwrap();
        assert_eq!(c_recv.read_to_end(1 << 20).await.unwrap(), pattern(2, 1000));
        let busy = connect().await.unwrap();
        let held = hold_open(&busy).await;
        assert_eq!(cap.count(), 3);

        // A first packet from an address not yet proven closes nobody: it is asked to
        // prove it (Retry), and this one never answers.
        let spoofer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut raw =
            proto::Endpoint::new(Arc::new(proto::EndpointConfig::default()), None, true, None);
        let now = Instant::now();
        let (_, mut attempt) = raw
            .connect(now, client_config.clone(), addr, "localhost")
            .unwrap();
        let mut initial = Vec::new();
        let t = attempt.poll_transmit(now, 1, &mut initial).unwrap();
        spoofer.send_to(&initial[..t.size], addr).await.unwrap();
        let mut reply = [0u8; 2048];
        let answer = tokio::time::timeout(Duration::from_secs(5), spoofer.recv_from(&mut reply));
        let (n, _) = answer.await.expect("the server answers").unwrap();
        // A long-header packet of type Retry (QUIC v1: 0b11 in bits 4-5).
        assert_eq!(reply[0] & 0xf0, 0xf0, "a Retry, {n} bytes");
        assert_eq!((cap.reclaimed(), cap.refused()), (0, 0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(a.close_reason().is_none(), "`a` still open");

        // A real client follows the Retry and takes `a`'s place.
        let d = connect().await.expect("room made for a proven client");
        assert_eq!(fetch(&d, 4, 70_000).await, pattern(4, 70_000));
        closed_with_no_error(&a, "`a` closed").await;
        assert_eq!((cap.reclaimed(), cap.refused(), cap.count()), (1, 0, 3));
        assert_eq!(fetch(&c, 5, 10).await, pattern(5, 10), "`c` still open");

        // With every connection in the middle of a request, a newcomer is refused.
        let _more = (hold_open(&c).await, hold_open(&d).await);
        match connect().await {
            Err(quinn::ConnectionError::ConnectionClosed(close)) => assert_eq!(
                close.error_code,
                proto::TransportErrorCode::CONNECTION_REFUSED
            ),
            other => panic!("a client with nobody idle got {other:?}"),
        }
        assert_eq!((cap.reclaimed(), cap.refused()), (1, 1));
        drop(held);
    }

    #[tokio::test]
    async fn the_search_for_room_passes_over_many_busy_connections() {
        let (server, client_config) = configs();
        let busy = LOOK_AHEAD + 5;
        let cap = OpenConnections::new(busy + 1);
        let (addr, _) = serve_port(server, 1, &cap);
        let client = client(client_config);
        let connect = || async { client.connect(addr, "localhost").unwrap().await.unwrap() };
        // More busy connections than one look takes, all less recently active than the one
        // idle connection: it is found behind them.
        let mut held = Vec::new();
        for _ in 0..busy {
            let conn = connect().await;
            held.push((hold_open(&conn).await, conn));
        }
        let idle = connect().await;
        assert_eq!(fetch(&idle, 1, 10).await, pattern(1, 10));
        assert_eq!(cap.count(), busy + 1);
        let newcomer = connect().await;
        assert_eq!(fetch(&newcomer, 2, 10).await, pattern(2, 10));
        let closed = tokio::time::timeout(Duration::from_secs(5), idle.closed()).await;
        assert!(
            matches!(closed, Ok(quinn::ConnectionError::ApplicationClosed(_))),
            "{closed:?}"
        );
        assert!(held.iter().all(|(_, conn)| conn.close_reason().is_none()));
        assert_eq!((cap.reclaimed(), cap.refused()), (1, 0));
    }

    #[tokio::test]
    async fn room_is_made_whichever_driver_holds_the_idle_connection() {
        let (server, client_config) = configs();
        let cap = OpenConnections::new(1);
        let (addr, drivers) = serve_port(server, 2, &cap);
        let client = client(client_config);
        // Each newcomer lands on either driver (its first packet's connection ID, chosen by
        // the client, steers it); the one idle connection is on either too. Six in a row
        // all get in only if room is made across drivers (1 in 64 by chance otherwise).
        let mut previous = client.connect(addr, "localhost").unwrap().await.unwrap();
        assert_eq!(fetch(&previous, 0, 100).await, pattern(0, 100));
        for seed in 1..=6u8 {
            let next = client
                .connect(addr, "localhost")
                .unwrap()
                .await
                .unwrap_or_else(|e| panic!("newcomer {seed}: {e}"));
            assert_eq!(fetch(&next, seed, 100).await, pattern(seed, 100));
            let closed = tokio::time::timeout(Duration::from_secs(5), previous.closed()).await;
            assert!(
                matches!(closed, Ok(quinn::ConnectionError::ApplicationClosed(_))),
                "{closed:?}"
            );
            previous = next;
        }
        assert_eq!((cap.reclaimed(), cap.refused(), cap.count()), (6, 0, 1));
        // The closed ones are let go once drained: the drivers list only the one left.
        let listed = || {
            drivers
                .iter()
                .map(|d| lock(&d.members).len())
                .sum::<usize>()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while listed() > 1 {
            assert!(Instant::now() < deadline, "{} still listed", listed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_using_half_its_streams_is_allowed_more() {
        let (mut server, client_config) = configs();
        let mut transport = proto::TransportConfig::default();
        transport.max_concurrent_bidi_streams(4u32.into());
        Arc::get_mut(&mut server)
            .unwrap()
            .transport_config(Arc::new(transport));
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cap = OpenConnections::new(usize::MAX);
        let endpoint =
            Endpoint::new(socket, proto::EndpointConfig::default(), server, cap).unwrap();
        endpoint.grow_streams_to(20);
        let addr = endpoint.local_addr();
        tokio::spawn(serve_all(endpoint, Arc::default()));
        let client = client(client_config);
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        // Twelve requests open at once, where four were allowed at first.
        let held = tokio::time::timeout(Duration::from_secs(5), async {
            let mut held = Vec::new();
            for _ in 0..12 {
                held.push(hold_open(&conn).await);
            }
            held
        })
        .await
        .expect("the allowance grew past four");
        assert_eq!(fetch(&conn, 6, 1000).await, pattern(6, 1000));
        drop(held);
    }

    #[tokio::test]
    async fn a_dropped_endpoint_closes_its_connections_and_frees_its_port() {
        let (mut endpoint, client) = pair();
        let addr = endpoint.local_addr();
        let connecting = client.connect(addr, "localhost").unwrap();
        let conn = endpoint.accept().await.unwrap();
        conn.handshake().await.unwrap();
        let client_conn = connecting.await.unwrap();

        // A stream the server waits to read from, given up: its waker goes with it.
        let (mut send, _recv) = client_conn.open_bi().await.unwrap();
        send.write_all(b"x").await.unwrap();
        let id = poll_fn(|cx| conn.poll_accept(cx, Dir::Bi)).await.unwrap();
        let mut reads = 0;
        let read = poll_fn(|cx| {
            // The first poll returns the byte sent; the second waits for more.
            reads += 1;
            match conn.poll_read(cx, id) {
                Poll::Ready(Ok(Some(_))) if reads == 1 => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Pending => Poll::Ready(()),
                other => panic!("read {other:?}"),
            }
        });
        read.await;
        assert_eq!(conn.state().readers.len(), 1);
        conn.stop(id, VarInt::from_u32(0));
        assert!(conn.state().readers.is_empty());

        // The endpoint goes without a close, while a connection handle is still held.
        drop(endpoint);
        let closed = tokio::time::timeout(Duration::from_secs(5), client_conn.closed())
            .await
            .expect("the client hears the close");
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code.into_inner(), NO_ERROR.into_inner());
            }
            other => panic!("closed with {other}"),
        }
        drop(conn);
        // The driver ends once its connections have closed, and with it the socket.
        let freed = async {
            while std::net::UdpSocket::bind(addr).is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), freed)
            .await
            .expect("the port is free again");
    }

    #[tokio::test]
    async fn a_quinn_client_gets_every_byte_of_concurrent_streams_and_sees_the_close() {
        let (mut endpoint, client) = pair();
        let addr = endpoint.local_addr();
        let connecting = client.connect(addr, "localhost").unwrap();

        let conn = endpoint.accept().await.unwrap();
        let peer = conn.clone();
        let server = tokio::spawn(async move {
            peer.handshake().await.unwrap();
            let mut answers = Vec::new();
            while let Ok(id) = poll_fn(|cx| peer.poll_accept(cx, Dir::Bi)).await {
                answers.push(tokio::spawn(answer(peer.clone(), id)));
            }
            for a in answers {
                a.await.unwrap().unwrap();
            }
        });
        let client_conn = connecting.await.unwrap();
        assert_eq!(conn.remote_address(), client.local_addr().unwrap());

        // Eight streams at once, from one datagram's worth to several GSO batches' worth.
        let sizes = [
            1usize,
            1_400,
            65_000,
            300_000,
            1 << 20,
            3 << 20,
            17,
            2 << 20,
        ];
        let mut fetches = Vec::new();
        for (seed, &len) in sizes.iter().enumerate() {
            let c = client_conn.clone();
            fetches.push(tokio::spawn(
                async move { fetch(&c, seed as u8, len).await },
            ));
        }
        for (fetched, (seed, &len)) in fetches.into_iter().zip(sizes.iter().enumerate()) {
            let got = fetched.await.unwrap();
            assert!(
                got == pattern(seed as u8, len),
                "stream {seed} ({len} bytes)"
            );
        }

        endpoint.close(VarInt::from_u32(7), b"bye");
        let closed = tokio::time::timeout(Duration::from_secs(5), client_conn.closed())
            .await
            .unwrap();
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, quinn::VarInt::from_u32(7));
                assert_eq!(&close.reason[..], b"bye");
            }
            other => panic!("closed with {other}"),
        }
        server.await.unwrap();
        drop(conn);
        tokio::time::timeout(Duration::from_secs(10), endpoint.wait_idle())
            .await
            .expect("the endpoint drains once its connections have closed");
    }

    /// What a [`relay`] does to the datagrams it carries.
    const CLEAR: u8 = 0;
    /// One datagram in 20 lost, one in 25 sent twice, one in 10 held back until the next
    /// has gone (by a fixed sequence, whichever way they travel).
    const ROUGH: u8 = 1;
    /// Every datagram lost.
    const DARK: u8 = 2;

    /// A UDP path between one client and a server through a relay on a local port.
    struct Relay {
        addr: SocketAddr,
        weather: Arc<std::sync::atomic::AtomicU8>,
        /// Datagrams carried, lost, sent twice and held back.
        tally: Arc<[AtomicUsize; 4]>,
        task: JoinHandle<()>,
    }

    impl Relay {
        fn set(&self, weather: u8) {
            self.weather.store(weather, Ordering::Relaxed);
        }

        fn tally(&self) -> [usize; 4] {
            self.tally.each_ref().map(|n| n.load(Ordering::Relaxed))
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A relay to `server` on a fresh local port: the first address to send it a datagram
    /// is the client, whose datagrams go to `server` and the server's back to it.
    fn relay(server: SocketAddr, weather: u8) -> Relay {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
        let addr = socket.local_addr().unwrap();
        let weather = Arc::new(std::sync::atomic::AtomicU8::new(weather));
        let tally: Arc<[AtomicUsize; 4]> = Arc::default();
        let task = tokio::spawn({
            let (weather, tally) = (weather.clone(), tally.clone());
            async move {
                let mut client = None;
                let mut held: Option<(Vec<u8>, SocketAddr)> = None;
                let mut state = 0x9E37_79B9_7F4A_7C15u64;
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let to = if from == server {
                        match client {
                            Some(c) => c,
                            None => continue,
                        }
                    } else {
                        client = Some(from);
                        server
                    };
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let roll = state % 100;
                    let datagram = &buf[..n];
                    let mut copies = 1;
                    match weather.load(Ordering::Relaxed) {
                        DARK => copies = 0,
                        ROUGH if roll < 5 => copies = 0,
                        ROUGH if roll < 9 => copies = 2,
                        ROUGH if roll < 19 && held.is_none() => {
                            held = Some((datagram.to_vec(), to));
                            tally[3].fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        _ => {}
                    }
                    match copies {
                        0 => tally[1].fetch_add(1, Ordering::Relaxed),
                        2 => tally[2].fetch_add(1, Ordering::Relaxed),
                        _ => tally[0].fetch_add(1, Ordering::Relaxed),
                    };
                    for _ in 0..copies {
                        let _ = socket.send_to(datagram, to).await;
                    }
                    if copies > 0
                        && let Some((d, t)) = held.take()
                    {
                        let _ = socket.send_to(&d, t).await;
                    }
                }
            }
        });
        Relay {
            addr,
            weather,
            tally,
            task,
        }
    }

    #[tokio::test]
    async fn every_byte_arrives_through_loss_duplication_and_reordering() {
        let (server, client_config) = configs();
        let cap = OpenConnections::new(usize::MAX);
        let (addr, _) = serve_port(server, 1, &cap);
        let path = relay(addr, ROUGH);
        let client = client(client_config);
        // The handshake goes through the same weather as the streams.
        let transfers = async {
            let conn = client
                .connect(path.addr, "localhost")
                .unwrap()
                .await
                .unwrap();
            let sizes = [1usize, 1_400, 65_000, 300_000, 1 << 20, 2 << 20];
            let fetches: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(seed, &len)| {
                    let c = conn.clone();
                    tokio::spawn(async move { (fetch(&c, seed as u8, len).await, seed, len) })
                })
                .collect();
            for fetched in fetches {
                let (got, seed, len) = fetched.await.unwrap();
                assert!(
                    got == pattern(seed as u8, len),
                    "stream {seed} ({len} bytes)"
                );
            }
        };
        tokio::time::timeout(Duration::from_secs(60), transfers)
            .await
            .expect("lost datagrams are sent again and the streams finish");
        let [carried, lost, doubled, held] = path.tally();
        assert!(
            lost > 20 && doubled > 20 && held > 20,
            "the weather was rough: {carried} carried, {lost} lost, {doubled} doubled, {held} held back"
        );
    }

    #[tokio::test]
    async fn a_connection_rides_out_a_dark_spell_and_is_let_go_when_its_peer_is_gone() {
        let (server, client_config) = configs();
        let cap = OpenConnections::new(usize::MAX);
        let (addr, _) = serve_port(server, 1, &cap);

        // A transfer whose path goes dark for 1.5 s, well within the 30 s idle timeout.
        let path = relay(addr, CLEAR);
        let listener = client(client_config.clone());
        let conn = listener
            .connect(path.addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let len = 6 << 20;
        let transfer = tokio::spawn({
            let c = conn.clone();
            async move { fetch(&c, 5, len).await }
        });
        while path.tally()[0] < 300 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        path.set(DARK);
        assert!(!transfer.is_finished(), "the path went dark mid-transfer");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!transfer.is_finished(), "nothing crosses a dark path");
        path.set(CLEAR);
        let got = tokio::time::timeout(Duration::from_secs(30), transfer)
            .await
            .expect("the transfer resumes once the path is back")
            .unwrap();
        assert!(got == pattern(5, len), "every byte, in order");

        // A client that asked for a 2 s idle timeout goes dark for good: the edge lets the
        // connection go and gives its place back, and the other client is still served.
        let mut short = client_config;
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(2).try_into().unwrap()));
        short.transport_config(Arc::new(transport));
        let gone_path = relay(addr, CLEAR);
        let gone = client(short);
        let doomed = gone
            .connect(gone_path.addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        assert_eq!(fetch(&doomed, 6, 1000).await, pattern(6, 1000));
        assert_eq!(cap.count(), 2);
        gone_path.set(DARK);
        let went_dark = Instant::now();
        held_at_most(
            &cap,
            1,
            Duration::from_secs(15),
            "a connection whose peer is gone is let go at its idle timeout",
        )
        .await;
        assert!(
            went_dark.elapsed() >= Duration::from_millis(1500),
            "not before its idle timeout ({:?})",
            went_dark.elapsed()
        );
        assert_eq!(fetch(&conn, 7, 70_000).await, pattern(7, 70_000));
    }

    #[tokio::test]
    async fn a_connection_with_no_request_for_the_keepalive_time_is_closed_pings_or_not() {
        let (server, client_config) = configs();
        let cap = OpenConnections::new(usize::MAX);
        let endpoints = local_endpoints(server, 1, &cap);
        endpoints[0].close_idle_after(Duration::from_millis(600));
        let (addr, _) = serve(endpoints);
        // Clients that PING every 100 ms, so QUIC's idle timeout never closes them.
        let mut pinging = client_config;
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_millis(100)));
        pinging.transport_config(Arc::new(transport));
        let client = client(pinging);
        let connect = || async { client.connect(addr, "localhost").unwrap().await.unwrap() };
        let (idle, busy, asking) = (connect().await, connect().await, connect().await);
        assert_eq!(fetch(&idle, 1, 1000).await, pattern(1, 1000));
        // One request open all along.
        let _held = hold_open(&busy).await;
        // One request every 200 ms for 2 s.
        let began = Instant::now();
        let asker = tokio::spawn(async move {
            for n in 0..10 {
                assert_eq!(fetch(&asking, n, 100).await, pattern(n, 100));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            asking
        });
        closed_with_no_error(
            &idle,
            "closed once the keep-alive time passed with no request",
        )
        .await;
        assert!(
            began.elapsed() >= Duration::from_millis(500),
            "{:?}",
            began.elapsed()
        );
        let asking = asker.await.unwrap();
        assert!(asking.close_reason().is_none(), "a connection in use stays");
        assert!(
            busy.close_reason().is_none(),
            "a connection with a request open stays"
        );
        assert_eq!(fetch(&busy, 3, 100).await, pattern(3, 100));
        assert_eq!(cap.kept_alive_out(), 1);
    }
}
