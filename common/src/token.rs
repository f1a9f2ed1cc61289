//! Edge tokens: what the control plane signs so an edge can serve a file without asking it.
//!
//! Format: `v1.{kid}.{claims}.{signature}` where `claims` is base64url (no padding) JSON and
//! `signature` is the base64url Ed25519 signature (RFC 8032) over `v1.{kid}.{claims}`. The key
//! id lets edges hold two public keys during a rotation. Edges hold public keys only, so a
//! compromised edge cannot mint tokens.
//!
//! Verification is pure: the caller passes `now`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::ids::FileId;
use crate::territories::Territories;

const VERSION: &str = "v1";
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 4096;

/// How far past its expiry a token is still accepted, for clock skew between machines.
pub fn verify_leeway_default() -> Duration {
    Duration::from_secs(30)
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The one file the token opens.
    #[serde(rename = "f")]
    pub file_id: FileId,
    /// Expiry, seconds since the Unix epoch.
    #[serde(rename = "exp")]
    pub expires_at: u64,
    /// Where the track is licensed.
    #[serde(rename = "t")]
    pub territories: Territories,
}

/// Why a token was refused. [`TokenError::reason`] is the short code sent to clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token is missing.
    #[error("no token")]
    Missing,
    /// The token does not have the `v1.kid.claims.sig` shape, or its parts do not decode.
    #[error("malformed token")]
    Malformed,
    /// The key id is not one this verifier holds.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not match the claims.
    #[error("bad signature")]
    BadSignature,
    /// The token expired.
    #[error("token expired")]
    Expired,
    /// The token opens a different file.
    #[error("token is for another file")]
    WrongFile,
}

impl TokenError {
    /// A short machine-readable reason for a 403 body.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Malformed => "token_malformed",
            Self::UnknownKey(_) => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::Expired => "token_expired",
            Self::WrongFile => "token_wrong_file",
        }
    }
}

/// A signed token in text form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EdgeToken(pub String);

/// The control plane's Ed25519 signing key with its key id.
pub struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 32
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl SigningKey {
    /// A new random key; returns the key and its PKCS#8 document for storage.
    pub fn generate(kid: &str) -> Result<(Self, Vec<u8>), TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| TokenError::Malformed)?;
        let key = Self::from_pkcs8(kid, doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    /// Loads a key from a PKCS#8 document.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<Self, TokenError> {
        if !valid_kid(kid) {
            return Err(TokenError::UnknownKey(kid.to_owned()));
        }
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| TokenError::Malformed)?;
        Ok(Self {
            kid: kid.to_owned(),
            pair,
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, for edges.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs claims into a token.
    pub fn sign(&self, claims: &TokenClaims) -> EdgeToken {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{VERSION}.{}.{}", self.kid, B64.encode(json));
        let sig = self.pair.sign(signed.as_bytes());
        EdgeToken(format!("{signed}.{}", B64.encode(sig.as_ref())))
    }
}

/// The public keys an edge accepts, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyingKeys {
    keys: HashMap<String, Vec<u8>>,
}

impl VerifyingKeys {
    /// Adds (or replaces) a public key.
    pub fn insert(&mut self, kid: &str, public_key: Vec<u8>) {
        self.keys.insert(kid.to_owned(), public_key);
    }

    /// Removes a key, e.g. after a rotation completes.
    pub fn remove(&mut self, kid: &str) {
        self.keys.remove(kid);
    }

    /// The key ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether there is no key (every token would be refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a token for `file_id` at `now`, accepting `leeway` past expiry.
    pub fn verify(
        &self,
        token: &str,
        file_id: &FileId,
        now: SystemTime,
        leeway: Duration,
    ) -> Result<TokenClaims, TokenError> {
        let claims = self.verify_signature(token)?;
        check_claims(&claims, file_id, now, leeway)?;
        Ok(claims)
    }

    /// The claims of a token whose signature is good, whatever they say: the expensive half
    /// of [`VerifyingKeys::verify`], whose result may be remembered per token text. The
    /// claims must still pass [`check_claims`] on every use.
    pub fn verify_signature(&self, token: &str) -> Result<TokenClaims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(claims)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let public = self
            .keys
            .get(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.chars().take(32).collect()))?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = B64.decode(claims).map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
    }
}

/// Whether signed `claims` open `file_id` at `now` (expiry allowing `leeway`): the cheap half
/// of [`VerifyingKeys::verify`].
pub fn check_claims(
    claims: &TokenClaims,
    file_id: &FileId,
    now: SystemTime,
    leeway: Duration,
) -> Result<(), TokenError> {
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    if now_secs > claims.expires_at.saturating_add(leeway.as_secs()) {
        return Err(TokenError::Expired);
    }
    if &claims.file_id != file_id {
        return Err(TokenError::WrongFile);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEEWAY: Duration = Duration::from_secs(30);

    fn setup() -> (SigningKey, VerifyingKeys, TokenClaims, SystemTime) {
        let (key, _) = SigningKey::generate("k1").unwrap();
        let mut keys = VerifyingKeys::default();
        keys.insert(key.kid(), key.public_key());
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let claims = TokenClaims {
            file_id: FileId::random(),
            expires_at: 1_800_000_600,
            territories: "GB,SE".parse().unwrap(),
        };
        (key, keys, claims, now)
    }

    #[test]
    fn a_fresh_token_verifies() {
        let (key, keys, claims, now) = setup();
        let token = key.sign(&claims);
        assert_eq!(
            keys.verify(&token.0, &claims.file_id, now, LEEWAY),
            Ok(claims)
        );
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let (key, keys, claims, _) = setup();
        let token = key.sign(&claims);
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert!(
            keys.verify(&token.0, &claims.file_id, at(1_800_000_630), LEEWAY)
                .is_ok()
        );
        assert_eq!(
            keys.verify(&token.0, &claims.file_id, at(1_800_000_631), LEEWAY),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let (key, keys, claims, now) = setup();
        let token = key.sign(&claims).0;
        let other = FileId::random();
        assert_eq!(
            keys.verify(&token, &other, now, LEEWAY),
            Err(TokenError::WrongFile)
        );

        // Tampered claims: swap in claims for another file, keep the signature.
        let forged = TokenClaims {
            file_id: other.clone(),
            ..claims.clone()
        };
        let forged_claims = B64.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("v1.k1.{forged_claims}.{}", parts[3]);
        assert_eq!(
            keys.verify(&tampered, &other, now, LEEWAY),
            Err(TokenError::BadSignature)
        );

        // A flipped signature byte.
        let mut sig = B64.decode(parts[3]).unwrap();
        sig[0] ^= 1;
        let bad_sig = format!("v1.k1.{}.{}", parts[2], B64.encode(&sig));
        assert_eq!(
            keys.verify(&bad_sig, &claims.file_id, now, LEEWAY),
            Err(TokenError::BadSignature)
        );

        // Signed by a key the edge does not hold.
        let (stranger, _) = SigningKey::generate("k9").unwrap();
        let foreign = stranger.sign(&claims).0;
        assert_eq!(
            keys.verify(&foreign, &claims.file_id, now, LEEWAY),
            Err(TokenError::UnknownKey("k9".into()))
        );
        // Same kid, different key: the signature fails.
        let (impostor, _) = SigningKey::generate("k1").unwrap();
        assert_eq!(
            keys.verify(&impostor.sign(&claims).0, &claims.file_id, now, LEEWAY),
            Err(TokenError::BadSignature)
        );

        for junk in [
            "",
            "v1",
            "v1.k1.x",
            "v2.k1.e30.AAAA",
            "v1.k1.!!.??",
            &"a".repeat(5000),
        ] {
            assert!(
                keys.verify(junk, &claims.file_id, now, LEEWAY).is_err(),
                "{junk:.20}"
            );
        }
    }

    #[test]
    fn rotation_accepts_both_keys_until_the_old_one_is_removed() {
        let (old, mut keys, claims, now) = setup();
        let (new, _) = SigningKey::generate("k2").unwrap();
        keys.insert(new.kid(), new.public_key());
        assert!(
            keys.verify(&old.sign(&claims).0, &claims.file_id, now, LEEWAY)
                .is_ok()
        );
        assert!(
            keys.verify(&new.sign(&claims).0, &claims.file_id, now, LEEWAY)
                .is_ok()
        );
        keys.remove("k1");
        assert!(matches!(
            keys.verify(&old.sign(&claims).0, &claims.file_id, now, LEEWAY),
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        let (key, doc) = SigningKey::generate("k1").unwrap();
        let again = SigningKey::from_pkcs8("k1", &doc).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert!(SigningKey::from_pkcs8("bad kid!", &doc).is_err());
    }
}
