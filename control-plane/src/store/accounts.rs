//! Listener accounts, OAuth clients and refresh tokens.
//!
//! Passwords are stored as argon2id PHC strings (OWASP's parameters: 19 MiB, 2 passes),
//! hashed off the async runtime. Client secrets and refresh tokens are 192-bit random secrets,
//! stored as SHA-256 hashes, as label keys are. A refresh token is used once: each use revokes
//! it and issues the next, and using a revoked one again revokes every token of that user
//! (someone else holds a copy).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use cadenza_common::http::secrets_match;
use cadenza_common::{hex_encode, random_bytes};
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, finish, secret_hash};

/// A new id: 12 random bytes, hex.
fn new_id() -> String {
    hex_encode(&random_bytes::<12>())
}

/// How an OAuth client authenticates and what it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A first-party app: the password and refresh-token grants; no secret (it cannot keep
    /// one).
    FirstParty,
    /// A service or a label's backend: the client-credentials grant, with its secret.
    Service,
}

impl ClientKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::FirstParty => "first_party",
            Self::Service => "service",
        }
    }
}

/// A client as created: its secret is shown once.
#[derive(Debug, Clone, Serialize)]
pub struct NewClient {
    pub client_id: String,
    pub name: String,
    pub kind: ClientKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// What a refresh token was good for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The next token, for `user_id`.
    Rotated { user_id: String, token: String },
    /// Unknown, expired, for another client, or already used (then every token of its user
    /// is revoked).
    Refused,
}

/// Everything stored about a user, for `GET /v1/me/export`.
#[derive(Debug, Clone, Serialize)]
pub struct UserExport {
    pub user_id: String,
    pub email: String,
    pub created_at: u64,
    /// Sessions: refresh tokens without their secrets.
    pub sessions: Vec<SessionExport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionExport {
    pub client_id: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub revoked_at: Option<u64>,
}

fn valid_email(email: &str) -> bool {
    let n = email.chars().count();
    (3..=254).contains(&n)
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Hashes `password` with a fresh salt (slow by design: call off the runtime).
pub fn hash_password(password: &str) -> Result<String, StoreError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| StoreError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Internal(format!("password hash: {e}")))
}

/// Whether `password` matches the PHC string `stored` (slow by design).
pub fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the email is unknown, so both cases take as long.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("password hashing failed: {e}")))
}

impl Store {
    /// Signs a user up; returns the user id. The email is compared without case.
    pub async fn create_user(
        &self,
        email: &str,
        password: &str,
        now: u64,
    ) -> Result<String, StoreError> {
        let email = email.trim().to_lowercase();
        if !valid_email(&email) {
            return Err(StoreError::Invalid("that is not an email address".into()));
        }
        if !(8..=256).contains(&password.chars().count()) {
            return Err(StoreError::Invalid(
                "a password is 8 to 256 characters".into(),
            ));
        }
        let password = password.to_owned();
        let hash = blocking(move || hash_password(&password)).await??;
        let id = new_id();
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(&id)
        .bind(&email)
        .bind(&hash)
        .bind(now as i64)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(
                "an account with that email exists".into(),
            ));
        }
        Ok(id)
    }

    /// The user whose email and password these are.
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE email = $1")
            .bind(email.trim().to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        let (id, stored) = match &row {
            Some(r) => (
                Some(r.try_get::<String, _>("id")?),
                r.try_get::<String, _>("password_hash")?,
            ),
            None => (None, decoy_hash().to_owned()),
        };
        let password = password.to_owned();
        let ok = blocking(move || password_matches(&password, &stored)).await?;
        Ok(id.filter(|_| ok))
    }

    /// A new OAuth client.
    pub async fn create_client(
        &self,
        name: &str,
        kind: ClientKind,
        now: u64,
    ) -> Result<NewClient, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 128 {
            return Err(StoreError::Invalid(
                "a client name is 1–128 characters".into(),
            ));
        }
        let id = format!("cl_{}", new_id());
        let secret = (kind == ClientKind::Service).then(|| hex_encode(&random_bytes::<24>()));
        sqlx::query(
            "INSERT INTO oauth_clients (id, name, kind, secret_sha256, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(kind.as_str())
        .bind(secret.as_deref().map(secret_hash))
        .bind(now as i64)
        .execute(&self.pool)
        .await?;
        Ok(NewClient {
            client_id: id,
            name: name.to_owned(),
            kind,
            client_secret: secret,
        })
    }

    /// The kind of client `id`, if it exists and `secret` is right (first-party clients have
    /// none and must send none).
    pub async fn verify_client(
        &self,
        id: &str,
        secret: Option<&str>,
    ) -> Result<Option<ClientKind>, StoreError> {
        let Some(row) = sqlx::query("SELECT kind, secret_sha256 FROM oauth_clients WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let kind = match row.try_get::<String, _>("kind")?.as_str() {
            "first_party" => ClientKind::FirstParty,
            "service" => ClientKind::Service,
            other => return Err(super::corrupt(format!("client kind {other:?}"))),
        };
        let stored: Option<String> = row.try_get("secret_sha256")?;
        let ok = match (stored, secret) {
            (None, None) => true,
            (Some(h), Some(s)) => secrets_match(h.as_bytes(), secret_hash(s).as_bytes()),
            _ => false,
        };
        Ok(ok.then_some(kind))
    }

    /// A refresh token for `user` through `client`, valid for `ttl` seconds.
    pub async fn issue_refresh(
        &self,
        user: &str,
        client: &str,
        now: u64,
        ttl: u64,
    ) -> Result<String, StoreError> {
        let mut tx = self.write_tx().await?;
        let out = issue_in(&mut tx, user, client, now, ttl).await;
        finish(tx, out).await
    }

    /// Uses a refresh token once: revokes it and issues the next.
    pub async fn use_refresh(
        &self,
        token: &str,
        client: &str,
        now: u64,
        ttl: u64,
    ) -> Result<Refreshed, StoreError> {
        let Some((id, secret)) = token.strip_prefix("rt_").and_then(|t| t.split_once('_')) else {
            return Ok(Refreshed::Refused);
        };
        let mut tx = self.write_tx().await?;
        let out = async {
            let sql = format!(
                "SELECT user_id, client_id, secret_sha256, expires_at, revoked_at FROM refresh_tokens WHERE id = $1{}",
                self.for_update()
            );
            let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(Refreshed::Refused);
            };
            let stored: String = row.try_get("secret_sha256")?;
            if !secrets_match(stored.as_bytes(), secret_hash(secret).as_bytes()) {
                return Ok(Refreshed::Refused);
            }
            let user: String = row.try_get("user_id")?;
            if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
                // A used token came back: whoever has it copied it. End every session.
                sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
                    .bind(now as i64)
                    .bind(&user)
                    .execute(&mut *tx)
                    .await?;
                return Ok(Refreshed::Refused);
            }
            let expired = row.try_get::<i64, _>("expires_at")? <= now as i64;
            if expired || row.try_get::<String, _>("client_id")? != client {
                return Ok(Refreshed::Refused);
            }
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE id = $2")
                .bind(now as i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let token = issue_in(&mut tx, &user, client, now, ttl).await?;
            Ok(Refreshed::Rotated {
                user_id: user,
                token,
            })
        }
        .await;
        finish(tx, out).await
    }

    /// Everything stored about `user`, or `None` when there is no such user.
    pub async fn export_user(&self, user: &str) -> Result<Option<UserExport>, StoreError> {
        let Some(row) = sqlx::query("SELECT email, created_at FROM users WHERE id = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let sessions = sqlx::query(
            "SELECT client_id, created_at, expires_at, revoked_at FROM refresh_tokens
             WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(SessionExport {
                client_id: r.try_get("client_id")?,
                created_at: r.try_get::<i64, _>("created_at")? as u64,
                expires_at: r.try_get::<i64, _>("expires_at")? as u64,
                revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(|t| t as u64),
            })
        })
        .collect::<Result<_, StoreError>>()?;
        Ok(Some(UserExport {
            user_id: user.to_owned(),
            email: row.try_get("email")?,
            created_at: row.try_get::<i64, _>("created_at")? as u64,
            sessions,
        }))
    }

    /// Deletes `user` and what is theirs; returns whether there was such a user.
    pub async fn delete_user(&self, user: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let out = async {
            sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1")
                .bind(user)
                .execute(&mut *tx)
                .await?;
            let gone = sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(user)
                .execute(&mut *tx)
                .await?;
            Ok(gone.rows_affected() > 0)
        }
        .await;
        finish(tx, out).await
    }
}

async fn issue_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user: &str,
    client: &str,
    now: u64,
    ttl: u64,
) -> Result<String, StoreError> {
    let id = new_id();
    let secret = hex_encode(&random_bytes::<24>());
    sqlx::query(
        "INSERT INTO refresh_tokens (id, secret_sha256, user_id, client_id, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(secret_hash(&secret))
    .bind(user)
    .bind(client)
    .bind((now + ttl) as i64)
    .bind(now as i64)
    .execute(&mut **tx)
    .await?;
    Ok(format!("rt_{id}_{secret}"))
}
