//! Labels and their API keys.
//!
//! A key reads `cdz_<key id>_<secret>`: 8 random bytes naming the key and 24 random bytes of
//! secret, both hex. Only the secret's SHA-256 is stored, so a copy of the database does not
//! hand out working keys; the secret has 192 bits of entropy, so a fast hash is enough (there
//! is nothing to guess a password from). Verification looks the key up by its id and compares
//! hashes in constant time.

use cadenza_common::http::secrets_match;
use cadenza_common::{LabelKey, hex_encode, random_bytes};
use sqlx::Row;

use super::{Store, StoreError, secret_hash};

const PREFIX: &str = "cdz_";

/// Splits a key into (key id, secret), or `None` when it is not one of ours.
fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 48)).then_some((id, secret))
}

/// Why a label could not be made.
fn valid_name(name: &str) -> bool {
    let n = name.trim().chars().count();
    (1..=128).contains(&n) && !name.chars().any(char::is_control)
}

impl Store {
    /// A label named `name`, created if it does not exist; returns its id.
    pub async fn ensure_label(&self, name: &str, now: u64) -> Result<String, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(
                "a label name is 1–128 printable characters".into(),
            ));
        }
        let name = name.trim();
        let id = hex_encode(&random_bytes::<8>());
        sqlx::query("INSERT INTO labels (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(&id)
            .bind(name)
            .bind(now as i64)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT id FROM labels WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("id")?)
    }

    /// A new API key for the label (others stay valid until revoked).
    pub async fn create_label_key(&self, label_id: &str, now: u64) -> Result<LabelKey, StoreError> {
        let row = sqlx::query("SELECT name FROM labels WHERE id = $1")
            .bind(label_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("no label {label_id}")))?;
        let key_id = hex_encode(&random_bytes::<8>());
        let secret = hex_encode(&random_bytes::<24>());
        sqlx::query(
            "INSERT INTO label_keys (id, label_id, secret_sha256, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key_id)
        .bind(label_id)
        .bind(secret_hash(&secret))
        .bind(now as i64)
        .execute(&self.pool)
        .await?;
        Ok(LabelKey {
            label_id: label_id.to_owned(),
            name: row.try_get("name")?,
            api_key: format!("{PREFIX}{key_id}_{secret}"),
        })
    }

    /// The label a key belongs to, or `None` for an unknown, malformed or revoked key.
    pub async fn verify_label_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        let Some((key_id, secret)) = parse_key(key) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT label_id, secret_sha256 FROM label_keys WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("secret_sha256")?;
        let given = secret_hash(&secret.to_ascii_lowercase());
        Ok(secrets_match(given.as_bytes(), stored.as_bytes())
            .then(|| row.try_get("label_id"))
            .transpose()?)
    }

    /// Revokes a key by its text; returns whether a live key was revoked.
    pub async fn revoke_label_key(&self, key: &str, now: u64) -> Result<bool, StoreError> {
        let Some((key_id, _)) = parse_key(key) else {
            return Ok(false);
        };
        let done = sqlx::query(
            "UPDATE label_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now as i64)
        .bind(key_id.to_ascii_lowercase())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_parse_strictly() {
        let good = format!("cdz_{}_{}", "a".repeat(16), "0".repeat(48));
        assert_eq!(
            parse_key(&good),
            Some(("aaaaaaaaaaaaaaaa", &*"0".repeat(48)))
        );
        for bad in [
            "".to_owned(),
            "cdz_".to_owned(),
            format!("cdz_{}_{}", "a".repeat(15), "0".repeat(48)),
            format!("cdz_{}_{}", "g".repeat(16), "0".repeat(48)),
            format!("xyz_{}_{}", "a".repeat(16), "0".repeat(48)),
            format!("cdz_{}_{}_", "a".repeat(16), "0".repeat(48)),
        ] {
            assert_eq!(parse_key(&bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn keys_verify_only_while_live_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.sqlite");
        let store = Store::open_sqlite(&db).await.unwrap();
        let a = store.ensure_label("Label A", 1).await.unwrap();
        assert_eq!(store.ensure_label(" Label A ", 2).await.unwrap(), a);
        let b = store.ensure_label("Label B", 1).await.unwrap();
        assert_ne!(a, b);
        let ka = store.create_label_key(&a, 3).await.unwrap();
        let kb = store.create_label_key(&b, 3).await.unwrap();
        assert_eq!(
            store.verify_label_key(&ka.api_key).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(store.verify_label_key(&kb.api_key).await.unwrap(), Some(b));
        // A key with the right id and a wrong secret, and garbage, verify to nothing.
        let forged = format!("{}{}", &ka.api_key[..ka.api_key.len() - 1], "x");
        assert_eq!(store.verify_label_key(&forged).await.unwrap(), None);
        assert_eq!(store.verify_label_key("nope").await.unwrap(), None);
        assert!(store.revoke_label_key(&ka.api_key, 4).await.unwrap());
        assert_eq!(store.verify_label_key(&ka.api_key).await.unwrap(), None);
        assert!(!store.revoke_label_key(&ka.api_key, 5).await.unwrap());
        assert!(store.ensure_label("", 1).await.is_err());
        drop(store);
        // The secrets never reach the database file.
        let mut bytes = std::fs::read(&db).unwrap();
        for suffix in ["-wal", "-shm"] {
            if let Ok(more) = std::fs::read(dir.path().join(format!("c.sqlite{suffix}"))) {
                bytes.extend(more);
            }
        }
        for key in [&ka.api_key, &kb.api_key] {
            let secret = key.rsplit('_').next().unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret is stored in clear"
            );
        }
    }
}
