//! A GET with a bearer token and an optional `Range`, answered whole: the status, the
//! headers and the body (the tests of a stack's edge read all three).

use cadenza_common::http::client::{self, HttpClient};
use cadenza_common::http::empty;
use http::{Method, StatusCode};

pub async fn get_headed(
    client: &HttpClient,
    url: &str,
    token: &str,
    range: Option<&str>,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut req = client::request(Method::GET, url, Some(token), empty()).unwrap();
    if let Some(range) = range {
        req.headers_mut()
            .insert(http::header::RANGE, range.parse().unwrap());
    }
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = client::read_all(body, url).await.unwrap().to_vec();
    (parts.status, parts.headers, body)
}
