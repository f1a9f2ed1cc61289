//! What the server's integration tests share: a server on a free port, in the clear or over
//! TLS with a fresh self-signed certificate, and the client TLS config that trusts it.

// Each test file builds this module on its own and uses part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use cadenza_common::http::{
    Handler, OpenConnections, ServerLimits, Shutdown, ShutdownTrigger, serve_on, tls,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Server {
    pub addr: SocketAddr,
    /// Trusts the server's certificate (ALPN h2 and http/1.1); `None` when the server speaks
    /// in the clear.
    pub client: Option<Arc<rustls::ClientConfig>>,
    /// The server's certificate (PEM) for clients outside the process (curl); `None` in the
    /// clear.
    pub cert: Option<String>,
    /// Ends once the server has drained after `stop`.
    pub task: JoinHandle<()>,
    pub stop: ShutdownTrigger,
    /// The listener's connection slots and what its cap did.
    pub connections: OpenConnections,
}

impl Server {
    /// Whether the server's task (after `stop`) ended within `within`; panics if it failed.
    pub async fn drained_within(self, within: std::time::Duration) -> bool {
        match tokio::time::timeout(within, self.task).await {
            Ok(ended) => {
                ended.unwrap();
                true
            }
            Err(_) => false,
        }
    }
}

/// Serves `handler` on 127.0.0.1, over TLS when `tls`.
pub async fn start<H: Handler>(handler: H, limits: ServerLimits, tls: bool) -> Server {
    let pem = tls::self_signed(&["localhost"]).unwrap();
    let config = tls.then(|| tls::server_config(&pem).unwrap());
    start_on(handler, limits, &pem, config).await
}

/// Serves `handler` on 127.0.0.1 over `config`, which presents `pem`, or in the clear
/// without one.
pub async fn start_on<H: Handler>(
    handler: H,
    limits: ServerLimits,
    pem: &tls::CertPem,
    config: Option<Arc<rustls::ServerConfig>>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, shutdown) = Shutdown::new();
    let tls = config.is_some();
    let listening = serve_on(listener, config, limits, Arc::new(handler), shutdown).unwrap();
    Server {
        addr: listening.addr,
        client: tls.then(|| tls::client_config(pem.cert.as_bytes()).unwrap()),
        cert: tls.then(|| pem.cert.clone()),
        task: listening.task,
        stop,
        connections: listening.connections,
    }
}
