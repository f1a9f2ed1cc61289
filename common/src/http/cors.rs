//! CORS for the endpoints a web player's scripts call: a player on
//! `https://player.example.com` that asks the control plane for a grant, or fetches ranges
//! from an edge with `fetch` (as Media Source Extensions players do), can read the answers
//! only if the service says its page may. Players authenticate with bearer tokens, not
//! cookies, so no answer says `Access-Control-Allow-Credentials`: a page has nothing
//! ambient to borrow, and allowing any origin lends it nothing it does not hold.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW, HeaderName, HeaderValue, VARY,
};
use http::{HeaderMap, Method, Response, StatusCode};

use super::{ApiError, Body};

/// The web origins whose scripts may read a service's answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Any page (`Access-Control-Allow-Origin: *`): a bearer token, not the page, is what
    /// opens a grant or a file.
    #[default]
    Any,
    /// Only these origins (`https://player.example.com`, lowercase), each echoed back to
    /// itself, with `Vary: Origin` on every answer so shared caches keep them apart.
    Only(Vec<String>),
}

impl CorsOrigins {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it may read.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Self::Any => Some(HeaderValue::from_static("*")),
            Self::Only(allowed) => origin
                .filter(|o| allowed.iter().any(|a| a.as_bytes() == o.as_bytes()))
                .cloned(),
        }
    }
}

/// Resource Timing's counterpart of `Access-Control-Allow-Origin` (W3C Resource Timing).
const TIMING_ALLOW_ORIGIN: HeaderName = HeaderName::from_static("timing-allow-origin");
/// How long a browser may keep a preflight's answer (Firefox's cap; Chrome keeps 2 h).
const MAX_AGE: &str = "86400";

/// What a service's cross-origin callers may do: which origins, and, besides the
/// CORS-safelisted ones, which methods and request headers they may use and which response
/// headers their scripts may read.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: CorsOrigins,
    methods: HeaderValue,
    allow: HeaderValue,
    request_headers: HeaderValue,
    exposed: HeaderValue,
}

impl Cors {
    /// `methods` and the headers are comma-separated lists (`"GET, HEAD"`).
    pub fn new(
        origins: CorsOrigins,
        methods: &'static str,
        request_headers: &'static str,
        exposed: &'static str,
    ) -> Self {
        Self {
            origins,
            methods: HeaderValue::from_static(methods),
            allow: HeaderValue::from_str(&format!("{methods}, OPTIONS"))
                .unwrap_or_else(|_| HeaderValue::from_static(methods)),
            request_headers: HeaderValue::from_static(request_headers),
            exposed: HeaderValue::from_static(exposed),
        }
    }

    /// Adds the CORS headers for a request from `origin` (its `Origin` header) to `resp`: the
    /// page may read it (and its Resource Timing in full: time to first byte, bytes
    /// transferred, which real-user monitoring reads), or, for an origin not allowed,
    /// nothing is added but `Vary`. Errors are answered so too, so a script can read why.
    pub fn apply(&self, origin: Option<&HeaderValue>, resp: &mut Response<Body>) {
        let headers = resp.headers_mut();
        if matches!(self.origins, CorsOrigins::Only(_)) {
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(allowed) = self.origins.allow(origin) {
            headers.insert(TIMING_ALLOW_ORIGIN, allowed.clone());
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, self.exposed.clone());
        }
    }

    /// Whether a request is a browser's preflight: an `OPTIONS` naming the method it asks
    /// for (a service's own `OPTIONS`, tus's discovery, names none).
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// A request's answer with the CORS headers for its `origin`: a `preflight` answered
    /// here ([`Cors::preflight`]; `answer` is then never run), anything else by `answer`.
    pub async fn around(
        &self,
        origin: Option<HeaderValue>,
        preflight: bool,
        answer: impl Future<Output = Result<Response<Body>, ApiError>>,
    ) -> Response<Body> {
        let answer = if preflight {
            self.preflight(origin.as_ref())
        } else {
            answer.await
        };
        let mut resp = answer.unwrap_or_else(ApiError::into_response);
        self.apply(origin.as_ref(), &mut resp);
        resp
    }

    /// A browser's preflight (or any `OPTIONS`): what a page's script may send. It carries
    /// no credentials; the request that follows does. An origin not allowed is told so
    /// (403 `cors_origin_not_allowed`) rather than left to guess from missing headers.
    /// [`Cors::apply`] adds the rest.
    pub fn preflight(&self, origin: Option<&HeaderValue>) -> Result<Response<Body>, ApiError> {
        if origin.is_some() && self.origins.allow(origin).is_none() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cors_origin_not_allowed",
                "web pages from that origin may not call this service",
            ));
        }
        let mut resp = Response::new(super::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let headers = resp.headers_mut();
        headers.insert(ALLOW, self.allow.clone());
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.request_headers.clone());
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(origin: &str) -> Option<HeaderValue> {
        Some(HeaderValue::from_str(origin).unwrap())
    }

    fn answered(cors: &Cors, origin: Option<HeaderValue>) -> HeaderMap {
        let mut resp = Response::new(super::super::empty());
        cors.apply(origin.as_ref(), &mut resp);
        resp.headers().clone()
    }

    #[test]
    fn any_origin_reads_and_only_the_listed_ones_when_restricted() {
        let any = Cors::new(CorsOrigins::Any, "GET", "Authorization", "ETag");
        let h = answered(&any, from("https://a.example"));
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[TIMING_ALLOW_ORIGIN], "*");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "ETag");
        assert!(!h.contains_key(VARY));
        // Without an Origin (not a browser's cross-origin request) it says the same.
        assert_eq!(answered(&any, None)[ACCESS_CONTROL_ALLOW_ORIGIN], "*");

        let only = Cors::new(
            CorsOrigins::Only(vec!["https://a.example".into()]),
            "GET, POST",
            "Authorization, Content-Type",
            "Retry-After",
        );
        let h = answered(&only, from("https://a.example"));
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(h[TIMING_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(h[VARY], "Origin");
        let h = answered(&only, from("https://b.example"));
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!h.contains_key(TIMING_ALLOW_ORIGIN));
        assert_eq!(h[VARY], "Origin");

        let ok = only.preflight(from("https://a.example").as_ref()).unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(ok.headers()[ALLOW], "GET, POST, OPTIONS");
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(
            ok.headers()[ACCESS_CONTROL_ALLOW_HEADERS],
            "Authorization, Content-Type"
        );
        let mut asks = HeaderMap::new();
        assert!(
            !Cors::is_preflight(&Method::OPTIONS, &asks),
            "names no method"
        );
        asks.insert(
            http::header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        assert!(Cors::is_preflight(&Method::OPTIONS, &asks));
        assert!(!Cors::is_preflight(&Method::GET, &asks));
        let refused = only
            .preflight(from("https://b.example").as_ref())
            .unwrap_err();
        assert_eq!(refused.into_response().status(), StatusCode::FORBIDDEN);
    }
}
