//! A pooled HTTPS client for service-to-service calls and the player.
//!
//! It speaks HTTP/2 when the server offers it by ALPN (one connection, many streams), else
//! HTTP/1.1, and sets `TCP_NODELAY` so small requests are not held back by delayed ACKs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Body, empty, full};

/// The client type.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse.
    #[error("bad URL {0:?}")]
    Url(String),
    /// Connecting or exchanging the request failed.
    #[error("request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The response body broke off.
    #[error("reading the response from {url} failed: {source}")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    /// The server answered with an error status; `body` is its (truncated) error body.
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    /// The response is not the JSON expected.
    #[error("{url} sent JSON that does not parse: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The request did not finish in time.
    #[error("{url} did not answer within {0:?}", .timeout)]
    Timeout { url: String, timeout: Duration },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client trusting the roots in `tls`.
pub fn https_client(tls: Arc<rustls::ClientConfig>) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    // hyper-rustls sets ALPN itself from the enabled protocols.
    let mut tls = (*tls).clone();
    tls.alpn_protocols.clear();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// Builds a request; `bearer` adds an `Authorization` header.
pub fn request(
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: Body,
) -> Result<Request<Body>, ClientError> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder
        .body(body)
        .map_err(|_| ClientError::Url(url.to_owned()))
}

/// Sends a request, turning error statuses into [`ClientError::Status`].
pub async fn send(
    client: &HttpClient,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, ClientError> {
    let url = req.uri().to_string();
    let resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(source)) => return Err(ClientError::Transport { url, source }),
        Err(_) => return Err(ClientError::Timeout { url, timeout }),
    };
    if resp.status().is_client_error() || resp.status().is_server_error() {
        let status = resp.status();
        let body = read_all(resp.into_body(), &url).await.unwrap_or_default();
        let body = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        return Err(ClientError::Status { url, status, body });
    }
    Ok(resp)
}

/// Reads a whole response body.
pub async fn read_all(body: Incoming, url: &str) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|source| ClientError::Body {
            url: url.to_owned(),
            source,
        })
}

/// Sends a JSON request (or none) and parses a JSON response.
pub async fn call_json<Req: Serialize, Resp: DeserializeOwned>(
    client: &HttpClient,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<&Req>,
    timeout: Duration,
) -> Result<Resp, ClientError> {
    let body = match body {
        Some(v) => full(serde_json::to_vec(v).unwrap_or_default()),
        None => empty(),
    };
    let mut req = request(method, url, bearer, body)?;
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let resp = send(client, req, timeout).await?;
    let bytes = read_all(resp.into_body(), url).await?;
    serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
        url: url.to_owned(),
        source,
    })
}
