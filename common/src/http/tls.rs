//! TLS set-up: one crypto provider (ring), self-signed certificates for the embedded setup,
//! PEM loading for operators' certificates, and client configurations.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::follow::{FileStamp, file_stamp};

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
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
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

/// The certificate a server presents, replaceable while it serves: every handshake asks for
/// the one in place, so a renewed certificate reaches new connections without a restart while
/// connections already open keep theirs. Its [`ServingCert::watch`] form follows a certificate
/// and key file pair, as nginx's `reload` or Caddy's renewals do.
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// The files it was loaded from, and their stamps (modification time, length) when last
    /// looked at; `None` for a certificate given as PEM.
    files: Option<CertFiles>,
}

struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    seen: Mutex<(FileStamp, FileStamp)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.files {
            Some(files) => write!(f, "ServingCert({})", files.cert.display()),
            None => f.write_str("ServingCert(..)"),
        }
    }
}

fn read_pem(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A chain and its key, checked to belong together.
fn certified(pem: &CertPem) -> Result<CertifiedKey, TlsError> {
    install_crypto_provider();
    let chain = certs(pem.cert.as_bytes())?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|e| TlsError::PrivateKey(e.to_string()))?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).map_err(|e| {
        match e {
            // rustls's words are a client's ("invalid peer certificate"); this one is ours.
            rustls::Error::InvalidCertificate(why) => {
                TlsError::Certificate(format!("the chain does not parse ({why:?})"))
            }
            other => TlsError::Rustls(other),
        }
    })
}

impl ServingCert {
    /// Presents `pem` (a chain and its key, which must match).
    pub fn new(pem: &CertPem) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified(pem)?)),
            files: None,
        }))
    }

    /// Presents the chain in `cert` with the key in `key` (PEM files), both good now, and
    /// follows them through [`ServingCert::reload_if_changed`].
    pub fn watch(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let seen = (file_stamp(cert), file_stamp(key));
        let pem = CertPem {
            cert: read_pem(cert)?,
            key: read_pem(key)?,
        };
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified(&pem)?)),
            files: Some(CertFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                seen: Mutex::new(seen),
            }),
        }))
    }

    /// The chain presented now.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().cert.clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Presents `pem` from the next handshake on; refused (the old one staying) unless its
    /// chain parses and its key matches.
    pub fn replace(&self, pem: &CertPem) -> Result<(), TlsError> {
        let new = Arc::new(certified(pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// Loads the watched files again if either changed (modification time or length) since
    /// the last look: `Ok(true)` when a new certificate went into service. A pair that does
    /// not load — a renewal caught between writing the chain and the key, a damaged file — is
    /// refused and the certificate in service stays; it is tried again once either file
    /// changes again. Always `Ok(false)` for a certificate not loaded from files.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let now = (file_stamp(&files.cert), file_stamp(&files.key));
        {
            let mut seen = files.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let pem = CertPem {
            cert: read_pem(&files.cert)?,
            key: read_pem(&files.key)?,
        };
        self.replace(&pem)?;
        Ok(true)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What a server configuration presents: a PEM pair as it stands, or a [`ServingCert`]
/// shared by the listeners that present it (and replaced under them).
pub trait Presents {
    /// The certificate to present.
    fn serving(&self) -> Result<Arc<ServingCert>, TlsError>;
}

impl Presents for CertPem {
    fn serving(&self) -> Result<Arc<ServingCert>, TlsError> {
        ServingCert::new(self)
    }
}

impl Presents for Arc<ServingCert> {
    fn serving(&self) -> Result<Arc<ServingCert>, TlsError> {
        Ok(self.clone())
    }
}

/// A server configuration offering HTTP/2 and HTTP/1.1 by ALPN, with stateless session
/// tickets (nginx's `ssl_session_tickets on`, its default; keys made at start and rotated by
/// rustls): a returning client resumes without a certificate and its signature, however many
/// clients came between. rustls's default keeps sessions in a 256-entry cache instead, which
/// a busy edge turns over in well under a second.
pub fn server_config(pem: &impl Presents) -> Result<Arc<rustls::ServerConfig>, TlsError> {
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
pub fn quic_server_config(pem: &impl Presents) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = base_config(pem, &[b"h3"])?;
    config.max_early_data_size = u32::MAX;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(QUIC_SESSIONS);
    Ok(Arc::new(config))
}

/// A server configuration offering the given ALPN protocols, with rustls's defaults for
/// resumption.
pub fn server_config_with_alpn(
    pem: &impl Presents,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(Arc::new(base_config(pem, alpn)?))
}

fn base_config(pem: &impl Presents, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    install_crypto_provider();
    let serving = pem.serving()?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(serving);
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
    client_config_with(ca_pem, client_provider(aes_in_hardware()))
}

/// [`client_config`] with another provider (benchmarks use it to offer a given suite first).
pub fn client_config_with(
    ca_pem: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Whether this CPU encrypts AES in hardware (AES-NI with carry-less multiply for GCM's
/// hash on x86-64, the crypto extension on AArch64), so AES-GCM is cheaper than ChaCha20.
pub fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// ring's provider with the cipher suites a client offers in the order that costs both ends
/// least: AES-128-GCM first where the CPU has AES instructions (ten rounds a block to
/// AES-256's fourteen, the strength browsers settle for too), ChaCha20-Poly1305 first where
/// it has not; TLS 1.3's before TLS 1.2's. rustls's own default offers AES-256-GCM first,
/// and servers (the edge, rustls's default) take the client's order, so every player and
/// edge-to-origin fetch paid for AES-256 on both ends.
pub fn client_provider(aes_in_hardware: bool) -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |suite: &rustls::SupportedCipherSuite| {
        let bulk = match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
                if aes_in_hardware =>
            {
                2
            }
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => -1,
            _ => 3,
        };
        (suite.tls13().is_none(), bulk)
    };
    // Stable: suites of equal rank keep ring's order (ECDSA before RSA).
    provider.cipher_suites.sort_by_key(rank);
    Arc::new(provider)
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

    /// Moves everything `from` has to send into `to`.
    fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    /// Runs a handshake between the two configurations in memory; the suite agreed on.
    fn agreed_suite(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> rustls::CipherSuite {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(client, name).unwrap().into();
        let mut s = rustls::ServerConnection::new(server).unwrap().into();
        for _ in 0..10 {
            pump(&mut c, &mut s);
            pump(&mut s, &mut c);
            if !c.is_handshaking() && !s.is_handshaking() {
                let suite = c.negotiated_cipher_suite().unwrap().suite();
                assert_eq!(s.negotiated_cipher_suite().unwrap().suite(), suite);
                return suite;
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn our_clients_agree_on_the_cheapest_suite_the_cpu_has_and_the_server_follows_the_client() {
        use rustls::CipherSuite as S;
        let pem = self_signed(&["localhost"]).unwrap();
        let server = server_config(&pem).unwrap();
        let expected = if aes_in_hardware() {
            S::TLS13_AES_128_GCM_SHA256
        } else {
            S::TLS13_CHACHA20_POLY1305_SHA256
        };
        let ours = client_config(pem.cert.as_bytes()).unwrap();
        assert_eq!(agreed_suite(ours, server.clone()), expected);

        // Without AES instructions ChaCha20 comes first, with them AES-128-GCM; TLS 1.3's
        // suites stay ahead of TLS 1.2's either way.
        for (hardware, first) in [
            (true, S::TLS13_AES_128_GCM_SHA256),
            (false, S::TLS13_CHACHA20_POLY1305_SHA256),
        ] {
            let provider = client_provider(hardware);
            let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
            assert_eq!(suites[0], first, "{suites:?}");
            assert_eq!(
                suites.len(),
                rustls::crypto::ring::default_provider().cipher_suites.len()
            );
            // TLS 1.3's suites, then TLS 1.2's: once a 1.2 suite is offered, no 1.3 one.
            let versions: Vec<bool> = provider
                .cipher_suites
                .iter()
                .map(|s| s.tls13().is_some())
                .collect();
            assert!(versions.windows(2).all(|w| w[0] >= w[1]), "{suites:?}");
            assert!(versions.contains(&false), "{suites:?}");
            let mut roots = RootCertStore::empty();
            roots.add(der(&pem)[0].clone()).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            assert_eq!(agreed_suite(Arc::new(config), server.clone()), first);
        }

        // The server takes the client's order: rustls's default client, AES-256 first, gets it.
        let mut roots = RootCertStore::empty();
        roots.add(der(&pem)[0].clone()).unwrap();
        let default = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(
            agreed_suite(Arc::new(default), server),
            S::TLS13_AES_256_GCM_SHA384
        );
    }

    fn der(pem: &CertPem) -> Vec<CertificateDer<'static>> {
        certs(pem.cert.as_bytes()).unwrap()
    }

    #[test]
    fn a_served_certificate_is_replaced_only_by_a_pair_that_belongs_together() {
        let (a, b) = (
            self_signed(&["a.test"]).unwrap(),
            self_signed(&["b.test"]).unwrap(),
        );
        let serving = ServingCert::new(&a).unwrap();
        assert_eq!(serving.chain(), der(&a));
        let crossed = CertPem {
            cert: b.cert.clone(),
            key: a.key.clone(),
        };
        let err = serving.replace(&crossed).unwrap_err();
        assert!(
            matches!(err, TlsError::Rustls(rustls::Error::InconsistentKeys(_))),
            "{err}"
        );
        assert_eq!(
            serving.chain(),
            der(&a),
            "a refused pair leaves the old one"
        );
        serving.replace(&b).unwrap();
        assert_eq!(serving.chain(), der(&b));
        // Not loaded from files: nothing to follow.
        assert!(!serving.reload_if_changed().unwrap());
    }

    #[test]
    fn watched_files_are_followed_through_a_renewal_and_a_damaged_file() {
        let dir = std::env::temp_dir().join(format!("cadenza-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let write = |pem: &CertPem| {
            std::fs::write(&cert, &pem.cert).unwrap();
            std::fs::write(&key, &pem.key).unwrap();
        };
        let (a, b) = (
            self_signed(&["a.test"]).unwrap(),
            self_signed(&["b.test"]).unwrap(),
        );
        write(&a);
        let serving = ServingCert::watch(&cert, &key).unwrap();
        assert!(!serving.reload_if_changed().unwrap(), "nothing changed");
        // A renewal caught half-way (new chain, old key): refused, the old one serves...
        std::fs::write(&cert, format!("{}\n", b.cert)).unwrap();
        assert!(serving.reload_if_changed().is_err());
        assert_eq!(serving.chain(), der(&a));
        assert!(
            !serving.reload_if_changed().unwrap(),
            "not retried until a file changes"
        );
        // ...until the key lands too.
        std::fs::write(&key, format!("{}\n", b.key)).unwrap();
        assert!(serving.reload_if_changed().unwrap());
        assert_eq!(serving.chain(), der(&b));
        // A damaged or vanished file is refused and the renewed pair stays.
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(serving.reload_if_changed().is_err());
        std::fs::remove_file(&key).unwrap();
        assert!(serving.reload_if_changed().is_err());
        assert_eq!(serving.chain(), der(&b));
        // A pair that must be good to start with.
        assert!(ServingCert::watch(&cert, &key).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
