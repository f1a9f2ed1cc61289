//! Access tokens and rate limits for the OAuth endpoints.
//!
//! An access token is `at1.<claims>.<tag>`: base64url JSON claims and an HMAC-SHA256 tag over
//! them, under a key the control planes of a deployment share. It is checked without a
//! database round trip, so it stays valid until it expires (15 minutes by default) even if the
//! account is deleted; refresh tokens, which are checked in the store, are what sign-out and
//! deletion revoke.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

/// How accounts and tokens are set up.
#[derive(Clone)]
pub struct AuthConfig {
    /// Signs access tokens; shared by every control plane of a deployment.
    pub access_token_key: Vec<u8>,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
    /// Token-endpoint requests a client may burst.
    pub token_burst: u32,
    /// Token-endpoint requests a client may make per second, sustained.
    pub token_rate: f64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("token_burst", &self.token_burst)
            .field("token_rate", &self.token_rate)
            .finish()
    }
}

impl Default for AuthConfig {
    /// A random signing key (fine for one control plane), 15-minute access tokens, 30-day
    /// refresh tokens, 10 token requests at once and one every 6 s after.
    fn default() -> Self {
        Self {
            access_token_key: cadenza_common::random_bytes::<32>().to_vec(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            token_burst: 10,
            token_rate: 1.0 / 6.0,
        }
    }
}

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// A listener, through a first-party app.
    User,
    /// A service or label backend, by client credentials.
    Service,
}

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id, or the client id for a service.
    pub sub: String,
    pub kind: Subject,
    /// The client the token was issued to.
    pub client: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Issues and checks access tokens.
pub struct AccessTokens {
    key: ring::hmac::Key,
}

impl AccessTokens {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    pub fn issue(&self, claims: &AccessClaims) -> String {
        let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let tag = ring::hmac::sign(&self.key, body.as_bytes());
        format!("at1.{body}.{}", B64.encode(tag.as_ref()))
    }

    /// The claims of a good, unexpired token.
    pub fn verify(&self, token: &str, now: u64) -> Option<AccessClaims> {
        if token.len() > 2048 {
            return None;
        }
        let (body, tag) = token.strip_prefix("at1.")?.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        ring::hmac::verify(&self.key, body.as_bytes(), &tag).ok()?;
        let claims: AccessClaims = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        (claims.exp > now).then_some(claims)
    }
}

/// Keys tracked before the oldest are forgotten, bounding the limiter's memory.
const MAX_BUCKETS: usize = 100_000;

/// A token bucket per key (a client id, or an address).
pub struct RateLimiter {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_sec: f64) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_sec: per_sec.max(1e-6),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's token for `key`, or says how long until one is there.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Full buckets forget nothing useful: drop those refilled to the brim.
            let (burst, rate) = (self.burst, self.per_sec);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_unaltered_and_unexpired() {
        let tokens = AccessTokens::new(b"k");
        let claims = AccessClaims {
            sub: "u1".into(),
            kind: Subject::User,
            client: "c".into(),
            exp: 100,
        };
        let t = tokens.issue(&claims);
        assert_eq!(tokens.verify(&t, 99), Some(claims.clone()));
        assert_eq!(tokens.verify(&t, 100), None, "expired");
        assert_eq!(
            AccessTokens::new(b"other").verify(&t, 0),
            None,
            "another key"
        );
        // Claims swapped under the old tag.
        let forged = AccessClaims {
            sub: "u2".into(),
            ..claims
        };
        let (_, tag) = t.rsplit_once('.').unwrap();
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(tokens.verify(&format!("at1.{body}.{tag}"), 0), None);
        for junk in ["", "at1.", "at1.x.y", "bearer", "at1.@@.@@"] {
            assert_eq!(tokens.verify(junk, 0), None, "{junk:?}");
        }
    }

    #[test]
    fn the_limiter_allows_a_burst_then_the_rate() {
        let l = RateLimiter::new(3, 1.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("c", t0).is_ok());
        }
        let wait = l.check("c", t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(l.check("other", t0).is_ok(), "keys are separate");
        assert!(l.check("c", t0 + Duration::from_millis(1_001)).is_ok());
        assert!(l.check("c", t0 + Duration::from_millis(1_002)).is_err());
    }
}
