//! HTTP/3 (RFC 9114) over QUIC with h3 and the edge's own QUIC endpoint on `quinn-proto`
//! ([`quic`]), on the UDP side of the edge's port.
//!
//! Every request is answered by [`Edge::respond`], the same function the TCP listener uses,
//! so tokens, territories, ranges and caching behave identically on every protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cadenza_common::http::{
    ApiError, ClientCap, ConnInfo, MinRate, OpenConnections, ServerLimits, Shutdown,
};
use http::Response;
use http_body_util::BodyExt;
use tokio::task::JoinHandle;

use crate::service::Edge;

mod bounds;
mod quic;
mod transport;

pub use bounds::{FrameTooLong, FrameWatch};
pub use transport::body_bytes;

/// Concurrent requests a connection may open before it shows it wants more: 16 bidirectional
/// and 8 unidirectional streams fit quinn-proto's tables in 32 slots where 100 took 128
/// (10,000 idle connections: +300.5 → +261.5 MiB, benches/README.md); a player asks one
/// range at a time.
pub const FIRST_STREAMS: u32 = 16;

/// What a client may send on one stream before the edge has read it.
const STREAM_WINDOW: u32 = 64 * 1024;
/// What a client may send on all its streams before the edge has read it.
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Limits for HTTP/3 connections.
#[derive(Debug, Clone)]
pub struct H3Limits {
    /// Connections held at once, handshakes included. A client beyond it, once it has
    /// proven its address, takes the place of the connection idle longest; with none idle it
    /// is refused (CONNECTION_REFUSED) and may fall back to TCP.
    pub max_connections: usize,
    /// Concurrent request streams per connection. quinn-proto keeps a table slot for every
    /// stream a peer may open from the start, so an allowance is paid by idle connections
    /// too: a connection starts with [`FIRST_STREAMS`] and is raised to this (100, RFC
    /// 9114's advice for the least to allow) once it has half of those open.
    pub max_streams: u32,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// A connection with no request open this long is closed (H3_NO_ERROR), whatever PINGs
    /// its client sends to keep it alive: nginx's `keepalive_timeout`. Zero: never.
    pub keepalive_timeout: Duration,
    /// Time given to open connections to finish after shutdown.
    pub drain_timeout: Duration,
    /// Largest UDP payload path MTU discovery probes for (1452 fits Ethernet; quinn's
    /// discovery finds what the path allows below it, so a higher bound is safe where
    /// jumbo frames may exist).
    pub max_udp_payload: u16,
    /// Ask clients that support the ACK frequency extension (draft-ietf-quic-ack-frequency)
    /// to acknowledge only every this many packets (`None`: every other, the RFC 9000
    /// default). Each ACK costs the edge a packet to process: asking for every 10th took
    /// HTTP/3 from 0.40× to 0.48× of HTTP/2's throughput in `benches/edge_h3.sh`.
    pub ack_every: Option<u32>,
    /// The slowest a client may take a response: each chunk of `n` bytes must be taken
    /// within `window + n / rate`, else the stream is reset. QUIC's idle timeout does not
    /// catch a client that acknowledges packets but withholds flow-control credit.
    pub min_send_rate: MinRate,
    /// QUIC driver tasks, each with its own socket on the port (see [`quic::bind`]): one
    /// driver encrypts and decrypts every packet of its connections on one core at a time.
    /// `0` is one per core this process may run on.
    pub drivers: usize,
    /// Largest request header section, bytes as RFC 9114 counts them (each field's name
    /// and value plus 32): answered 431 past it. A request stream may deliver about twice
    /// this before it is stopped ([`bounds::request_budget`]), which is also what SETTINGS
    /// advertises (h3 enforces what it advertises, and its own refusal ends in a reset).
    pub max_field_section: u64,
    /// At most so many connections at once from one client (shared with the TCP listeners,
    /// so counted across them). Counted once the handshake completes, so packets with a
    /// spoofed source cannot use up a client's allowance; a client at it is refused
    /// (CONNECTION_REFUSED), one whose handshakes raced past it closed with
    /// H3_EXCESSIVE_LOAD.
    pub client_cap: Option<ClientCap>,
}

impl Default for H3Limits {
    fn default() -> Self {
        Self {
            max_connections: ServerLimits::default().max_connections,
            max_streams: 100,
            idle_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            drain_timeout: Duration::from_secs(10),
            max_udp_payload: 1452,
            ack_every: Some(10),
            min_send_rate: ServerLimits::default().min_send_rate,
            drivers: 0,
            max_field_section: ServerLimits::default().max_header_bytes as u64,
            client_cap: None,
        }
    }
}

/// Why the HTTP/3 endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    /// The TLS configuration cannot do QUIC (it needs TLS 1.3).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running HTTP/3 endpoint.
#[derive(Debug)]
pub struct H3Listening {
    /// The UDP address.
    pub addr: SocketAddr,
    /// Ends after shutdown once connections have drained.
    pub task: JoinHandle<()>,
    /// Its open connections (handshakes included), under [`H3Limits::max_connections`].
    pub connections: OpenConnections,
}

/// Serves `edge` over HTTP/3 on UDP `addr` with `tls` (whose ALPN must be `h3`;
/// `tls::quic_server_config` makes one that also accepts 0-RTT).
pub fn serve_h3(
    (addr, inherited): (SocketAddr, Option<std::net::UdpSocket>),
    tls: Arc<rustls::ServerConfig>,
    limits: H3Limits,
    edge: Arc<Edge>,
    shutdown: Shutdown,
) -> Result<H3Listening, H3Error> {
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| H3Error::Tls(e.to_string()))?;
    let mut config = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn_proto::TransportConfig::default();
    transport.max_concurrent_bidi_streams(limits.max_streams.min(FIRST_STREAMS).into());
    transport.max_concurrent_uni_streams(8u32.into());
    // Requests are a few hundred bytes and the edge reads no request body: what a client may
    // send ahead of the edge's reading is kept small (quinn's defaults: 1.25 MB a stream and
    // no bound for the connection), so a stream left unread (a request's body, QPACK streams
    // h3 never reads) pins little.
    transport.stream_receive_window(STREAM_WINDOW.into());
    transport.receive_window(CONNECTION_WINDOW.into());
    transport.max_idle_timeout(limits.idle_timeout.try_into().ok());
    let mut mtu = quinn_proto::MtuDiscoveryConfig::default();
    mtu.upper_bound(limits.max_udp_payload);
    transport.mtu_discovery_config(Some(mtu));
    if let Some(every) = limits.ack_every {
        let mut acks = quinn_proto::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(every.saturating_sub(1).into());
        transport.ack_frequency_config(Some(acks));
    }
    config.transport_config(Arc::new(transport));
    let mut endpoint_config = quinn_proto::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(limits.max_udp_payload.clamp(1200, 65527))
        .map_err(|e| H3Error::Tls(e.to_string()))?;
    let drivers = match limits.drivers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let connections =
        OpenConnections::new(limits.max_connections).with_client_cap(limits.client_cap.clone());
    let endpoints = quic::bind(
        addr,
        inherited,
        drivers,
        endpoint_config,
        Arc::new(config),
        &connections,
    )
    .map_err(|source| H3Error::Bind { addr, source })?;
    for endpoint in &endpoints {
        endpoint.grow_streams_to(limits.max_streams);
        endpoint.close_idle_after(limits.keepalive_timeout);
    }
    let addr = endpoints
        .first()
        .map_or(addr, |endpoint| endpoint.local_addr());
    let accepting: Vec<JoinHandle<()>> = endpoints
        .into_iter()
        .map(|endpoint| {
            tokio::spawn(accept(
                endpoint,
                edge.clone(),
                limits.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    let task = tokio::spawn(async move {
        for task in accepting {
            let _ = task.await;
        }
    });
    Ok(H3Listening {
        addr,
        task,
        connections,
    })
}

/// Serves the connections `endpoint` accepts until `shutdown`. Then each connection says
/// GOAWAY, finishes the requests it has accepted and closes once their responses are
/// delivered; after the drain timeout the endpoint closes whatever is left.
async fn accept(
    mut endpoint: quic::Endpoint,
    edge: Arc<Edge>,
    limits: H3Limits,
    mut shutdown: Shutdown,
) {
    let open = Arc::new(InFlight::default());
    loop {
        let conn = tokio::select! {
            _ = shutdown.wait() => break,
            conn = endpoint.accept() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let edge = edge.clone();
        let min_rate = limits.min_send_rate;
        let field_section = limits.max_field_section;
        let (counted, shutdown) = (open.start(), shutdown.clone());
        tokio::spawn(async move {
            let _counted = counted;
            if let Err(e) = connection(conn, edge, min_rate, field_section, shutdown).await {
                tracing::debug!(error = %e, "HTTP/3 connection ended with an error");
            }
        });
    }
    let deadline = tokio::time::Instant::now() + limits.drain_timeout;
    if tokio::time::timeout_at(deadline, open.none())
        .await
        .is_err()
    {
        tracing::warn!("HTTP/3 connections still open after the drain timeout");
    }
    endpoint.close(quic::NO_ERROR, b"shutting down");
    // A moment for the closes to leave, even when the drain took all its time.
    let closing = tokio::time::Instant::now() + Duration::from_secs(1);
    let _ = tokio::time::timeout_at(deadline.max(closing), endpoint.wait_idle()).await;
}

async fn connection(
    conn: quic::Connection,
    edge: Arc<Edge>,
    min_rate: MinRate,
    field_section: u64,
    mut shutdown: Shutdown,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tokio::select! {
        shaken = conn.handshake() => shaken?,
        // No request can have begun: nothing to finish.
        () = shutdown.wait() => return Ok(()),
    }
    let info = ConnInfo {
        peer: SocketAddr::new(
            conn.remote_address().ip().to_canonical(),
            conn.remote_address().port(),
        ),
        tls: true,
    };
    let quic = conn.clone();
    // Boxed: the set-up future (2,200 B) would otherwise keep its room in every idle
    // connection's task.
    let budget = bounds::request_budget(field_section);
    // h3 answers a header section over its limit with a 431 head and then drops the stream,
    // which the transport resets (a response cut short): the limit it enforces is the one
    // the stream's bytes are held to, and `request` answers 431 itself past the operator's.
    let mut h3: h3::server::Connection<transport::Connection, Bytes> = Box::pin(
        h3::server::builder()
            .max_field_section_size(budget)
            .build(transport::Connection::new(conn, budget)),
    )
    .await?;
    let answering = Arc::new(InFlight::default());
    let mut going_away = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let (edge, quic, counted) = (edge.clone(), quic.clone(), answering.start());
                    tokio::spawn(async move {
                        let _counted = counted;
                        let answered = request(resolver, edge, info, min_rate, field_section, &quic);
                        if let Err(e) = answered.await {
                            tracing::debug!(error = %e, "HTTP/3 request failed");
                        }
                    });
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
            () = shutdown.wait(), if !going_away => {
                going_away = true;
                // No request after the last one accepted: a client retries those elsewhere.
                h3.shutdown(0).await?;
            }
            () = answering.none(), if going_away => {
                quic.close(quic::NO_ERROR, b"shutting down");
                return Ok(());
            }
        }
    }
}

/// Work still under way (an endpoint's connections, a connection's requests), so what is
/// told to go away ends once the last piece has, and not before.
#[derive(Default)]
struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    none_left: tokio::sync::Notify,
}

impl InFlight {
    /// Counts one more piece until the guard is dropped.
    fn start(self: &Arc<Self>) -> Started {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Started(self.clone())
    }

    /// Resolves when nothing is under way.
    async fn none(&self) {
        loop {
            // Made before the look, so a last piece ending in between still wakes it.
            let none_left = self.none_left.notified();
            if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            none_left.await;
        }
    }
}

/// One piece of work under way ([`InFlight`]), until dropped.
struct Started(Arc<InFlight>);

impl Drop for Started {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.none_left.notify_waiters();
        }
    }
}

async fn request(
    resolver: h3::server::RequestResolver<transport::Connection, Bytes>,
    edge: Arc<Edge>,
    info: ConnInfo,
    min_rate: MinRate,
    field_section: u64,
    quic: &quic::Connection,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (req, mut stream) = resolver.resolve_request().await?;
    let (parts, ()) = req.into_parts();
    let size = field_section_size(&parts);
    let resp = if size > field_section {
        ApiError::new(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's header section is {size} bytes, over {field_section}"),
        )
        .into_response()
    } else {
        edge.respond(&parts, info, "h3").await
    };
    let (head, mut body) = resp.into_parts();
    stream.send_response(Response::from_parts(head, ())).await?;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let Some(budget) = chunk_budget(min_rate, data.len()) else {
                transport::send_body(&mut stream, data).await?;
                continue;
            };
            match tokio::time::timeout(budget, transport::send_body(&mut stream, data)).await {
                Ok(sent) => sent?,
                Err(_) => {
                    stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                    return Err("the client reads slower than the minimum rate".into());
                }
            }
        }
    }
    stream.finish().await?;
    // The request is answered once the client has every byte (until then a connection that
    // is going away stays open for it).
    transport::delivered(&stream, quic).await;
    Ok(())
}

/// A request's header section as RFC 9114 §4.2.2 sizes it: each field's name and value,
/// pseudo-header fields included, plus 32 bytes for each.
fn field_section_size(parts: &http::request::Parts) -> u64 {
    let field = |name: usize, value: usize| (name + value + 32) as u64;
    let uri = &parts.uri;
    let pseudo = field(":method".len(), parts.method.as_str().len())
        + uri
            .scheme_str()
            .map_or(0, |s| field(":scheme".len(), s.len()))
        + uri
            .authority()
            .map_or(0, |a| field(":authority".len(), a.as_str().len()))
        + uri
            .path_and_query()
            .map_or(0, |p| field(":path".len(), p.as_str().len()));
    parts.headers.iter().fold(pseudo, |sum, (name, value)| {
        sum + field(name.as_str().len(), value.len())
    })
}

/// How long a chunk of `len` bytes may take to be accepted at `rate`; `None` without a rate.
fn chunk_budget(rate: MinRate, len: usize) -> Option<Duration> {
    (rate.bytes_per_sec > 0)
        .then(|| rate.window + Duration::from_secs_f64(len as f64 / rate.bytes_per_sec as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle HTTP/3 connection's task holds h3's connection (896 B) and its wait for the
    /// next request; with h3's set-up future (2,200 B) inline it was 3,504 B.
    #[test]
    fn an_idle_connection_task_holds_little() {
        let task = returned_size(connection);
        eprintln!("HTTP/3 connection task {task} B");
        assert!(task <= 2304, "the task is {task} B");
    }

    #[test]
    fn a_header_section_is_sized_as_rfc_9114_counts_it() {
        let req = http::Request::get("https://edge.example/a/0011?t=v1")
            .header("range", "bytes=0-99")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        // :method GET, :scheme https, :authority edge.example, :path /a/0011?t=v1, range.
        let expected = (7 + 3) + (7 + 5) + (10 + 12) + (5 + 12) + (5 + 10) + 5 * 32;
        assert_eq!(field_section_size(&parts), expected);
    }

    #[test]
    fn a_chunk_gets_the_window_plus_its_share_of_the_rate() {
        let rate = MinRate {
            bytes_per_sec: 4096,
            window: Duration::from_secs(20),
        };
        assert_eq!(
            chunk_budget(rate, 256 * 1024),
            Some(Duration::from_secs(84))
        );
        assert_eq!(chunk_budget(MinRate::OFF, 1 << 20), None);
    }
}
