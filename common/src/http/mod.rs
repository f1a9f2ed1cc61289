//! HTTP plumbing written once for every Cadenza service and client.
//!
//! - [`serve`]: accept loop with TLS and ALPN (HTTP/2 or HTTP/1.1 on one port), a connection
//!   limit, header-read and handshake timeouts, and graceful shutdown.
//! - [`ApiError`]: the one JSON error shape clients see; each service maps its own error enum
//!   into it in exactly one place.
//! - [`tls`]: self-signed certificates for the embedded setup, PEM loading, client configs.
//! - [`client`]: a pooled HTTPS client (HTTP/2 when the server offers it) and JSON helpers.

mod body;
pub mod client;
mod client_cap;
pub mod coalesce;
mod cors;
mod deadline;
mod error;
pub mod h1;
mod idle;
pub mod lean_tls;
pub mod proxy_protocol;
mod ranges;
mod server;
mod shutdown;
pub mod tls;

pub use body::{
    Body, BoxError, bearer_token, empty, file_body, full, health, json_response, read_body,
    read_json, require_bearer, secrets_match,
};
pub use client_cap::{ClientAtLimit, ClientCap, ClientSlot};
pub use cors::{Cors, CorsOrigins};
pub use deadline::{Deadlines, MinRate};
pub use error::ApiError;
pub use idle::{IdleQueue, sweep_every};
pub use proxy_protocol::ProxyProtocol;
pub use ranges::{Plan, plan_span, range_plan, ranged_response};
pub use server::{ConnInfo, Handler, Listening, OpenConnections, ServerLimits, serve_on};
pub use shutdown::{Shutdown, ShutdownTrigger};
