//! A load client for the edge that speaks HTTP/2 over TLS or HTTP/3 with the same loop, so
//! the two protocols are compared by one client rather than by two tools of different
//! efficiency (h2load has no HTTP/3).
//!
//! ```text
//! proto_load h2|h3 ADDR CA_PEM TOKENS OBJECT_BYTES [CONNS] [SECS] [RANGE]
//! ```
//!
//! `TOKENS` holds `file_id token` lines (`cadenza token` writes them). Each of CONNS
//! connections asks, one request at a time for SECS seconds, for a random RANGE-byte range
//! (default 128 KiB) of a random object, and reads the whole answer. Runs on one thread
//! (pin it with `taskset`). Prints one line: `RESULT requests bytes errors p50_ms p99_ms`.
//!
//! Environment: `QUIC_MAX_UDP_PAYLOAD` (HTTP/3: the largest datagram accepted);
//! `H2_MAX_FRAME` (HTTP/2: the SETTINGS_MAX_FRAME_SIZE announced, 16,384 by default, up to
//! 16,777,215), which sets how large a DATA frame, and so a write, the server may make;
//! `TLS_FIRST` (a suite's name, e.g. `TLS13_AES_256_GCM_SHA384`: offered first, so the edge,
//! which follows the client's order, takes it; by default the order of `tls::client_config`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/3 client socket's receive buffer (see where it is set).
const CLIENT_UDP_RCVBUF: usize = 4 << 20;

struct Plan {
    addr: SocketAddr,
    objects: Vec<(String, String)>,
    object_bytes: u64,
    range: u64,
    until: Instant,
}

/// What one connection did.
#[derive(Default)]
struct Tally {
    requests: u64,
    bytes: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

/// A small, seeded generator: the benchmark needs spread, not quality.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

impl Plan {
    /// The next request: a random object and a random range of it.
    fn next(&self, rng: &mut XorShift) -> http::Request<()> {
        let (id, token) = &self.objects[rng.below(self.objects.len() as u64) as usize];
        let start = rng.below(self.object_bytes - self.range);
        http::Request::get(format!("https://localhost:{}/a/{id}", self.addr.port()))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(
                http::header::RANGE,
                format!("bytes={start}-{}", start + self.range - 1),
            )
            .body(())
            .unwrap_or_default()
    }
}

fn record(tally: &mut Tally, started: Instant, status: http::StatusCode, got: u64, want: u64) {
    tally.requests += 1;
    tally.bytes += got;
    if status != http::StatusCode::PARTIAL_CONTENT || got != want {
        tally.errors += 1;
    }
    let us = started.elapsed().as_micros();
    tally
        .latencies_us
        .push(u32::try_from(us).unwrap_or(u32::MAX));
}

async fn h2_connection(
    plan: Arc<Plan>,
    tls: Arc<rustls::ClientConfig>,
    max_frame: Option<u32>,
    seed: u64,
) -> Result<Tally, BoxError> {
    let tcp = tokio::net::TcpStream::connect(plan.addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(n) = max_frame {
        builder.max_frame_size(n);
    }
    let (mut send, conn) = builder
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await?;
    tokio::spawn(conn);
    let mut rng = XorShift(seed);
    let mut tally = Tally::default();
    while Instant::now() < plan.until {
        let (parts, ()) = plan.next(&mut rng).into_parts();
        let started = Instant::now();
        let resp = send
            .send_request(http::Request::from_parts(parts, Empty::new()))
            .await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                got += data.len() as u64;
            }
        }
        record(&mut tally, started, status, got, plan.range);
    }
    Ok(tally)
}

async fn h3_connection(
    plan: Arc<Plan>,
    endpoint: quinn::Endpoint,
    seed: u64,
) -> Result<Tally, BoxError> {
    let conn = endpoint.connect(plan.addr, "localhost")?.await?;
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let mut rng = XorShift(seed);
    let mut tally = Tally::default();
    while Instant::now() < plan.until {
        let req = plan.next(&mut rng);
        let started = Instant::now();
        let mut stream = send.send_request(req).await?;
        stream.finish().await?;
        let status = stream.recv_response().await?.status();
        let mut got = 0u64;
        while let Some(chunk) = stream.recv_data().await? {
            got += chunk.remaining() as u64;
        }
        record(&mut tally, started, status, got, plan.range);
    }
    drive.abort();
    Ok(tally)
}

/// A quinn endpoint for `addr`'s address family speaking h3 with `tls`'s roots, its socket's
/// receive buffer enlarged; `keep_alive` pings connections that would otherwise go idle.
fn h3_endpoint(
    addr: SocketAddr,
    tls: &rustls::ClientConfig,
    keep_alive: Option<Duration>,
) -> Result<quinn::Endpoint, BoxError> {
    let mut h3_tls = tls.clone();
    h3_tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(h3_tls)?;
    // QUIC_MAX_UDP_PAYLOAD: the largest datagram this client accepts (1472 by default,
    // Ethernet's); the edge sends no larger.
    let mut endpoint_config = quinn::EndpointConfig::default();
    if let Ok(v) = std::env::var("QUIC_MAX_UDP_PAYLOAD") {
        endpoint_config.max_udp_payload_size(v.parse()?)?;
    }
    // Any address of the server's family: the server may be across a veth pair.
    let any: std::net::IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind((any, 0))?;
    // One socket carries every connection, where the HTTP/2 side has a TCP buffer per
    // connection: at the default 208 KiB, bursts from the edge overflowed it
    // (UdpRcvbufErrors), and the losses, not the server, set the pace. The kernel caps this
    // at net.core.rmem_max.
    socket2::SockRef::from(&socket).set_recv_buffer_size(CLIENT_UDP_RCVBUF)?;
    let mut endpoint =
        quinn::Endpoint::new(endpoint_config, None, socket, Arc::new(quinn::TokioRuntime))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(keep_alive);
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// `h3-idle`: opens `conns` HTTP/3 connections, a few hundred handshakes at a time, asks
/// `GET /healthz` on each, and holds them open (pinging every 10 s, inside the edge's idle
/// timeout) until stdin closes. Prints "open K" once every connection has had its answer;
/// K counts those answered 200 and still open, like benches/idle_conns.py over TCP.
async fn h3_idle(addr: SocketAddr, tls: &rustls::ClientConfig, conns: u64) -> Result<(), BoxError> {
    let endpoint = h3_endpoint(addr, tls, Some(Duration::from_secs(10)))?;
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..conns {
        let (endpoint, gate, held_tx) = (endpoint.clone(), gate.clone(), held_tx.clone());
        tokio::spawn(async move {
            let opened = async {
                let _turn = gate.acquire().await?;
                let conn = endpoint.connect(addr, "localhost")?.await?;
                let (mut driver, mut send) =
                    h3::client::new(h3_quinn::Connection::new(conn)).await?;
                let drive = tokio::spawn(async move {
                    let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
                });
                let req = http::Request::get(format!("https://localhost:{}/healthz", addr.port()))
                    .body(())?;
                let mut stream = send.send_request(req).await?;
                stream.finish().await?;
                let status = stream.recv_response().await?.status();
                while stream.recv_data().await?.is_some() {}
                if status != http::StatusCode::OK {
                    return Err(format!("answered {status}").into());
                }
                Ok::<_, BoxError>((send, drive))
            };
            // The sender half keeps the connection; dropping it would close it.
            let _ = held_tx.send(opened.await.map_err(|e| e.to_string()));
        });
    }
    drop(held_tx);
    let mut held = Vec::new();
    let mut failed = 0u64;
    while let Some(one) = held_rx.recv().await {
        match one {
            Ok(conn) => held.push(conn),
            Err(e) => {
                if failed == 0 {
                    eprintln!("an idle connection failed: {e}");
                }
                failed += 1;
            }
        }
    }
    // Those the edge closed since (to make room for later ones, at its cap) are not open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = held
        .iter()
        .filter(|(_, drive)| !drive.is_finished())
        .count();
    println!("open {open}");
    if failed > 0 {
        eprintln!("{failed} connections failed");
    }
    tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await??;
    drop(held);
    endpoint.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn usage() -> ! {
    eprintln!("usage: proto_load h2|h3 ADDR CA_PEM TOKENS OBJECT_BYTES [CONNS] [SECS] [RANGE]");
    eprintln!("       proto_load h3-idle ADDR CA_PEM CONNS");
    std::process::exit(2)
}

/// The client's TLS configuration trusting `ca`, with `TLS_FIRST`'s suite offered first if set.
fn client_tls(ca: &[u8]) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    use cadenza_common::http::tls;
    let mut provider = (*tls::client_provider(tls::aes_in_hardware())).clone();
    if let Ok(first) = std::env::var("TLS_FIRST") {
        let at = provider
            .cipher_suites
            .iter()
            .position(|s| format!("{:?}", s.suite()) == first)
            .ok_or_else(|| format!("TLS_FIRST={first}: no such suite"))?;
        let suite = provider.cipher_suites.remove(at);
        provider.cipher_suites.insert(0, suite);
    }
    Ok(tls::client_config_with(ca, Arc::new(provider))?)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("h3-idle") {
        let [_, addr, ca, conns] = args.as_slice() else {
            usage();
        };
        let addr: SocketAddr = addr.parse()?;
        let tls = client_tls(&std::fs::read(ca)?)?;
        let conns: u64 = conns.parse()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(h3_idle(addr, &tls, conns));
    }
    if args.len() < 5 {
        usage();
    }
    let proto = args[0].as_str();
    let addr: SocketAddr = args[1].parse()?;
    let ca = std::fs::read(&args[2])?;
    let objects: Vec<(String, String)> = std::fs::read_to_string(&args[3])?
        .lines()
        .filter_map(|l| {
            let (id, token) = l.split_once(' ')?;
            Some((id.to_owned(), token.trim().to_owned()))
        })
        .collect();
    let object_bytes: u64 = args[4].parse()?;
    let arg = |i: usize, default: u64| -> Result<u64, BoxError> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let conns = arg(5, 64)?;
    let secs = arg(6, 15)?;
    let range = arg(7, 128 * 1024)?;
    if objects.is_empty() || object_bytes <= range {
        usage();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let plan = Arc::new(Plan {
            addr,
            objects,
            object_bytes,
            range,
            until: Instant::now() + Duration::from_secs(secs),
        });
        let tls = client_tls(&ca)?;
        let mut tasks = Vec::new();
        match proto {
            "h2" => {
                let mut h2_tls = (*tls).clone();
                h2_tls.alpn_protocols = vec![b"h2".to_vec()];
                let h2_tls = Arc::new(h2_tls);
                // H2_MAX_FRAME: the SETTINGS_MAX_FRAME_SIZE announced (hyper's default when
                // unset), which bounds the server's DATA frames and so its writes.
                let max_frame = match std::env::var("H2_MAX_FRAME") {
                    Ok(v) => Some(v.parse::<u32>()?),
                    Err(_) => None,
                };
                for c in 0..conns {
                    let plan = plan.clone();
                    let tls = h2_tls.clone();
                    let seed = 0x9E37_79B9 + c;
                    tasks.push(tokio::spawn(h2_connection(plan, tls, max_frame, seed)));
                }
            }
            "h3" => {
                let endpoint = h3_endpoint(addr, &tls, None)?;
                for c in 0..conns {
                    let plan = plan.clone();
                    tasks.push(tokio::spawn(h3_connection(
                        plan,
                        endpoint.clone(),
                        0x9E37_79B9 + c,
                    )));
                }
            }
            _ => usage(),
        }
        let mut all = Tally::default();
        for task in tasks {
            match task.await? {
                Ok(t) => {
                    all.requests += t.requests;
                    all.bytes += t.bytes;
                    all.errors += t.errors;
                    all.latencies_us.extend(t.latencies_us);
                }
                Err(e) => {
                    eprintln!("connection failed: {e}");
                    all.errors += 1;
                }
            }
        }
        all.latencies_us.sort_unstable();
        println!(
            "RESULT {} {} {} {:.3} {:.3}",
            all.requests,
            all.bytes,
            all.errors,
            percentile(&all.latencies_us, 0.5),
            percentile(&all.latencies_us, 0.99)
        );
        Ok::<_, BoxError>(())
    })
}
