//! TLS set-up: one crypto provider (ring), self-signed certificates for the embedded setup,
//! PEM loading for operators' certificates, and client configurations.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate PEM holds no certificate, or one that does not parse.
    #[error("no usable certificate in the PEM: {0}")]
    Certificate(String),
    /// The key PEM holds no private key, or one that does not parse.
    #[error("no usable private key in the PEM: {0}")]
    PrivateKey(String),
    /// rustls refused the certificate and key.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate could not be generated.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A session-ticket key is unusable.
    #[error("session-ticket key refused: {0}")]
    TicketKey(String),
}

/// Installs ring as the process-wide rustls provider. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertPem {
    /// The certificate chain.
    pub cert: String,
    /// The PKCS#8 private key.
    pub key: String,
}

impl std::fmt::Debug for CertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertPem(..)")
    }
}

/// A self-signed certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[&str]) -> Result<CertPem, TlsError> {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names)?;
    Ok(CertPem {
        cert: certified.cert.pem(),
        key: certified.signing_key.serialize_pem(),
    })
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Certificate("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// A server configuration offering HTTP/2 and HTTP/1.1 by ALPN, with stateless session
/// tickets (nginx's `ssl_session_tickets on`, its default; keys made at start and rotated by
/// rustls): a returning client resumes without a certificate and its signature, however many
/// clients came between. rustls's default keeps sessions in a 256-entry cache instead, which
/// a busy edge turns over in well under a second.
pub fn server_config(pem: &CertPem) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = base_config(pem, &[b"h2", b"http/1.1"])?;
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Sessions a QUIC listener keeps for resumption ([`quic_server_config`]). rustls stores two
/// per handshake, each a 32-byte key and a value of about 90 bytes for a TCP session (a QUIC
/// one adds its transport parameters): some 300–400 bytes an entry with the map's and
/// allocator's overhead, 5–7 MiB when full. A client finds its session again if it returns
/// within the last eight thousand or so handshakes.
pub const QUIC_SESSIONS: usize = 16_384;

/// A server configuration for HTTP/3 that accepts 0-RTT: a client resuming a session sends
/// its first request with its first packet (QUIC allows no early-data size but this one).
/// rustls allows early data only with sessions the server holds and gives out once (RFC 8446
/// §8.1: a stateless ticket could be replayed), so resumption goes through a bounded session
/// cache ([`QUIC_SESSIONS`]) and no tickets are issued. Early data must only ever carry
/// requests a replay cannot turn into a side effect (the edge answers GET and HEAD).
pub fn quic_server_config(pem: &CertPem) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = base_config(pem, &[b"h3"])?;
    config.max_early_data_size = u32::MAX;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(QUIC_SESSIONS);
    Ok(Arc::new(config))
}

/// A server configuration offering the given ALPN protocols, with rustls's defaults for
/// resumption.
pub fn server_config_with_alpn(
    pem: &CertPem,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(Arc::new(base_config(pem, alpn)?))
}

fn base_config(pem: &CertPem, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    install_crypto_provider();
    let chain = certs(pem.cert.as_bytes())?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|e| TlsError::PrivateKey(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Session-ticket keys shared by the edges of a region (nginx's `ssl_session_ticket_key`), so
/// a player that reconnects to another edge resumes its session there. Each secret (a key
/// file's contents, at least 32 random bytes: `openssl rand 80`, as for nginx, or
/// `head -c 32 /dev/urandom`) is hashed into an AES-256-GCM key; the first key seals new
/// tickets and every key opens them, so a rotation lists the new key first and keeps the old
/// one until its tickets have expired (12 hours). Nonces are random, so rotate well before
/// 2³² tickets (daily, as nginx's documentation advises).
pub struct TicketKeys {
    /// Each key's name (the first 16 bytes of SHA-256 over the key), which a ticket starts
    /// with, and the key; the first seals.
    keys: Vec<([u8; 16], ring::aead::LessSafeKey)>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKeys({} keys)", self.keys.len())
    }
}

/// A shared secret's least length, bytes.
pub const TICKET_SECRET_MIN: usize = 32;
/// How long a ticket resumes a session, seconds.
const TICKET_LIFETIME: u32 = 12 * 60 * 60;
const NONCE: usize = 12;

impl TicketKeys {
    /// Keys from `secrets`, the first sealing (see the type's documentation).
    pub fn new(secrets: &[Vec<u8>]) -> Result<Arc<Self>, TlsError> {
        use ring::digest::{SHA256, digest};
        if secrets.is_empty() {
            return Err(TlsError::TicketKey("no key given".into()));
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.iter().enumerate() {
            if secret.len() < TICKET_SECRET_MIN {
                return Err(TlsError::TicketKey(format!(
                    "key {} holds {} bytes; at least {TICKET_SECRET_MIN} random bytes are needed",
                    i + 1,
                    secret.len()
                )));
            }
            let key = digest(&SHA256, secret);
            let mut name = [0u8; 16];
            name.copy_from_slice(&digest(&SHA256, key.as_ref()).as_ref()[..16]);
            let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.as_ref())
                .map_err(|_| TlsError::TicketKey("AES-256-GCM refused the key".into()))?;
            keys.push((name, ring::aead::LessSafeKey::new(unbound)));
        }
        Ok(Arc::new(Self { keys }))
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME
    }

    /// `name ‖ nonce ‖ sealed state ‖ tag`, the name bound in as associated data.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (name, key) = self.keys.first()?;
        let nonce = crate::crypto::random_bytes::<NONCE>();
        let mut ticket = Vec::with_capacity(16 + NONCE + plain.len() + 16);
        ticket.extend_from_slice(name);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(name),
            &mut sealed,
        )
        .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (name, rest) = ticket.split_first_chunk::<16>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE>()?;
        let (_, key) = self.keys.iter().find(|(n, _)| n == name)?;
        let mut opened = sealed.to_vec();
        let plain = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(name),
                &mut opened,
            )
            .ok()?;
        let len = plain.len();
        opened.truncate(len);
        Some(opened)
    }
}

/// `config` with its session tickets sealed by `keys` instead of keys of its own.
pub fn with_ticket_keys(
    config: &Arc<rustls::ServerConfig>,
    keys: Arc<TicketKeys>,
) -> Arc<rustls::ServerConfig> {
    let mut config = (**config).clone();
    config.ticketer = keys;
    Arc::new(config)
}

/// A client configuration trusting exactly the certificates in `ca_pem`.
///
/// The embedded setup trusts its own self-signed certificate this way; a deployment with
/// certificates from a public CA passes that CA's bundle.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn ticket_keys_open_their_own_tickets_and_an_older_key_s_after_a_rotation() {
        let (old, new) = (vec![1u8; 32], vec![2u8; 80]);
        let before = TicketKeys::new(std::slice::from_ref(&old)).unwrap();
        let ticket = before.encrypt(b"session state").unwrap();
        assert_eq!(before.decrypt(&ticket).unwrap(), b"session state");
        // Rotated: the new key seals, the old one still opens.
        let rotated = TicketKeys::new(&[new.clone(), old]).unwrap();
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"session state");
        let fresh = rotated.encrypt(b"next").unwrap();
        assert_ne!(fresh[..16], ticket[..16], "sealed under the new key's name");
        assert!(before.decrypt(&fresh).is_none(), "a key it does not hold");
        // Once the old key is gone, its tickets no longer open.
        let after = TicketKeys::new(&[new]).unwrap();
        assert!(after.decrypt(&ticket).is_none());
        assert_eq!(after.decrypt(&fresh).unwrap(), b"next");
    }

    #[test]
    fn a_damaged_or_short_ticket_opens_to_nothing_and_a_short_secret_is_refused() {
        let keys = TicketKeys::new(&[vec![7u8; 32]]).unwrap();
        let ticket = keys.encrypt(b"session state").unwrap();
        for at in [0, 16, 30, ticket.len() - 1] {
            let mut damaged = ticket.clone();
            damaged[at] ^= 1;
            assert!(keys.decrypt(&damaged).is_none(), "flipped byte {at}");
        }
        for len in 0..28 {
            assert!(keys.decrypt(&ticket[..len]).is_none(), "{len} bytes");
        }
        assert!(TicketKeys::new(&[vec![7u8; 31]]).is_err());
        assert!(TicketKeys::new(&[]).is_err());
    }

    #[test]
    fn self_signed_certificate_builds_both_ends() {
        let pem = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        server_config(&pem).unwrap();
        client_config(pem.cert.as_bytes()).unwrap();
        assert!(client_config(b"not a pem").is_err());
        let broken = CertPem {
            cert: pem.cert.clone(),
            key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
        };
        assert!(server_config(&broken).is_err());
    }
}
