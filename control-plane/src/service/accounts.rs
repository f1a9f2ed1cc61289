//! Account and OAuth 2.0 routes (RFC 6749): sign-up, the token endpoint (password,
//! refresh-token and client-credentials grants), and a user's own data (export, delete).

use std::collections::HashMap;
use std::time::Instant;

use cadenza_common::http::{ApiError, Body, ConnInfo, bearer_token, json_response, read_body};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::{ControlPlane, JSON_LIMIT, now_secs, percent_decode};
use crate::auth::{AccessClaims, Subject};
use crate::store::{ClientKind, Refreshed};

#[derive(serde::Deserialize)]
struct SignUp {
    email: String,
    password: String,
}

/// 429 with `Retry-After`.
fn slow_down(wait: std::time::Duration) -> Response<Body> {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests from this client; retry later",
    )
    .into_response();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The token endpoint's parameters: a form body (RFC 6749) or, for convenience, JSON.
fn token_params(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<HashMap<String, String>, ApiError> {
    let bad = |m: &str| ApiError::bad_request("invalid_request", m.to_owned());
    if content_type.is_some_and(|c| c.starts_with("application/json")) {
        let map: HashMap<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|_| bad("the body is not a JSON object"))?;
        return Ok(map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
            .collect());
    }
    let text = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // RFC 6749 §3.2: parameters must not repeat.
        if out.insert(percent_decode(k)?, percent_decode(v)?).is_some() {
            return Err(bad("a parameter is repeated"));
        }
    }
    Ok(out)
}

impl ControlPlane {
    /// `POST /v1/accounts {"email", "password"}`: 201 with the user id.
    pub(super) async fn sign_up(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, ApiError> {
        let address = self.client_ip(&req, conn).to_string();
        if let Err(wait) = self.signup_limiter.check(&address, Instant::now()) {
            return Ok(slow_down(wait));
        }
        let body: SignUp = cadenza_common::http::read_json(req.into_body(), JSON_LIMIT).await?;
        let user = self
            .store
            .create_user(&body.email, &body.password, now_secs())
            .await?;
        Ok(json_response(
            StatusCode::CREATED,
            &serde_json::json!({ "user_id": user }),
        ))
    }

    /// `POST /oauth/token`.
    pub(super) async fn token(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let address = self.client_ip(&req, conn).to_string();
        let body = read_body(req.into_body(), 16 * 1024).await?;
        let p = token_params(content_type.as_deref(), &body)?;
        let get = |k: &str| p.get(k).map(String::as_str);
        let client_id = get("client_id")
            .ok_or_else(|| ApiError::bad_request("invalid_request", "client_id is required"))?;
        // Per client and address, so a client that does not exist is limited too.
        if let Err(wait) = self
            .token_limiter
            .check(&format!("{client_id}@{address}"), Instant::now())
        {
            return Ok(slow_down(wait));
        }
        let kind = self
            .store
            .verify_client(client_id, get("client_secret"))
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "unknown client or wrong secret",
                )
            })?;
        let now = now_secs();
        let auth = &self.config.auth;
        let invalid_grant = |m: &str| ApiError::bad_request("invalid_grant", m.to_owned());
        let (sub, subject, refresh) = match (get("grant_type"), kind) {
            (Some("password"), ClientKind::FirstParty) => {
                let (Some(user), Some(pass)) = (get("username"), get("password")) else {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        "username and password are required",
                    ));
                };
                let user = self
                    .store
                    .sign_in(user, pass)
                    .await?
                    .ok_or_else(|| invalid_grant("wrong email or password"))?;
                let refresh = self
                    .store
                    .issue_refresh(&user, client_id, now, auth.refresh_ttl.as_secs())
                    .await?;
                (user, Subject::User, Some(refresh))
            }
            (Some("refresh_token"), ClientKind::FirstParty) => {
                let token = get("refresh_token").ok_or_else(|| {
                    ApiError::bad_request("invalid_request", "refresh_token is required")
                })?;
                match self
                    .store
                    .use_refresh(token, client_id, now, auth.refresh_ttl.as_secs())
                    .await?
                {
                    Refreshed::Rotated { user_id, token } => (user_id, Subject::User, Some(token)),
                    Refreshed::Refused => {
                        return Err(invalid_grant(
                            "the refresh token is unknown, used or expired",
                        ));
                    }
                }
            }
            (Some("client_credentials"), ClientKind::Service) => {
                (client_id.to_owned(), Subject::Service, None)
            }
            (Some("password" | "refresh_token" | "client_credentials"), _) => {
                return Err(ApiError::bad_request(
                    "unauthorized_client",
                    "this client may not use this grant",
                ));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "unsupported_grant_type",
                    "grant_type is password, refresh_token or client_credentials",
                ));
            }
        };
        let access = self.tokens.issue(&AccessClaims {
            sub,
            kind: subject,
            client: client_id.to_owned(),
            exp: now + auth.access_ttl.as_secs(),
        });
        let mut out = serde_json::json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": auth.access_ttl.as_secs(),
        });
        if let Some(r) = refresh {
            out["refresh_token"] = serde_json::Value::String(r);
        }
        Ok(json_response(StatusCode::OK, &out))
    }

    /// The user an access token speaks for (checked without the store).
    pub(super) fn user_of(&self, req: &Request<Incoming>) -> Result<String, ApiError> {
        bearer_token(req.headers())
            .and_then(|t| self.tokens.verify(t, now_secs()))
            .filter(|c| c.kind == Subject::User)
            .map(|c| c.sub)
            .ok_or_else(ApiError::unauthorized)
    }

    /// `GET /v1/me/export`: everything stored about the caller.
    pub(super) async fn export_me(
        &self,
        req: &Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let user = self.user_of(req)?;
        let export = self
            .store
            .export_user(&user)
            .await?
            .ok_or_else(|| ApiError::not_found("no such account"))?;
        Ok(json_response(StatusCode::OK, &export))
    }

    /// `DELETE /v1/me`: the caller's account and sessions, gone.
    pub(super) async fn delete_me(
        &self,
        req: &Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let user = self.user_of(req)?;
        if !self.store.delete_user(&user).await? {
            return Err(ApiError::not_found("no such account"));
        }
        tracing::info!(user = %user, "account deleted");
        let mut resp = Response::new(cadenza_common::http::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }
}
