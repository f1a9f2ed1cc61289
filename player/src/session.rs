//! A listener's session with the control plane: OAuth 2.0 tokens from `/oauth/token`,
//! renewed before they expire.

use std::time::{Duration, Instant};

use cadenza_common::http::client::{self, ClientError, HttpClient};
use http::Method;
use tokio::sync::Mutex;

use crate::PlayError;

/// What a listener signs in with: a first-party app's OAuth client id, an email and a
/// password.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Login {
    pub client_id: String,
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.client_id)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// A token is renewed this long before the control plane says it expires, so a grant asked
/// for just before expiry does not race it.
const RENEW_MARGIN: Duration = Duration::from_secs(30);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
    refresh_token: Option<String>,
}

struct Tokens {
    access: String,
    refresh: Option<String>,
    renew_at: Instant,
}

pub(crate) struct Session {
    login: Login,
    // Held across the renewal request: refresh tokens are single use, and the control plane
    // revokes every session of a user whose refresh token is used twice, so two renewals
    // must never run at once.
    tokens: Mutex<Tokens>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

async fn token_request(
    client: &HttpClient,
    control_plane: &str,
    params: serde_json::Value,
) -> Result<Tokens, ClientError> {
    let url = format!("{control_plane}/oauth/token");
    let asked = Instant::now();
    let answer: TokenAnswer = client::call_json(
        client,
        Method::POST,
        &url,
        None,
        Some(&params),
        TOKEN_TIMEOUT,
    )
    .await?;
    let life = Duration::from_secs(answer.expires_in);
    Ok(Tokens {
        access: answer.access_token,
        refresh: answer.refresh_token,
        // A token with less life than the margin is used once and renewed on the next call.
        renew_at: asked + life.saturating_sub(RENEW_MARGIN),
    })
}

fn password_grant(login: &Login) -> serde_json::Value {
    serde_json::json!({
        "grant_type": "password",
        "client_id": login.client_id,
        "username": login.email,
        "password": login.password,
    })
}

impl Session {
    pub(crate) async fn sign_in(
        client: &HttpClient,
        control_plane: &str,
        login: &Login,
    ) -> Result<Self, PlayError> {
        let tokens = token_request(client, control_plane, password_grant(login))
            .await
            .map_err(|e| PlayError::SignIn(e.to_string()))?;
        Ok(Self {
            login: login.clone(),
            tokens: Mutex::new(tokens),
        })
    }

    /// The current access token, renewed first if it is near its end: with the refresh
    /// token, or by signing in again when the control plane refuses that.
    pub(crate) async fn access_token(
        &self,
        client: &HttpClient,
        control_plane: &str,
    ) -> Result<String, PlayError> {
        let mut tokens = self.tokens.lock().await;
        if Instant::now() < tokens.renew_at {
            return Ok(tokens.access.clone());
        }
        let refreshed = match tokens.refresh.take() {
            Some(refresh) => token_request(
                client,
                control_plane,
                serde_json::json!({
                    "grant_type": "refresh_token",
                    "client_id": self.login.client_id,
                    "refresh_token": refresh,
                }),
            )
            .await
            .ok(),
            None => None,
        };
        let fresh = match refreshed {
            Some(t) => t,
            None => token_request(client, control_plane, password_grant(&self.login))
                .await
                .map_err(|e| PlayError::SignIn(e.to_string()))?,
        };
        *tokens = fresh;
        Ok(tokens.access.clone())
    }

    /// Marks `token` as no longer accepted, so the next call renews it (unless another
    /// caller already has).
    pub(crate) async fn forget(&self, token: &str) {
        let mut tokens = self.tokens.lock().await;
        if tokens.access == token {
            tokens.renew_at = Instant::now();
        }
    }
}
