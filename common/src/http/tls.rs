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

/// A server configuration offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(pem: &CertPem) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with_alpn(pem, &[b"h2", b"http/1.1"])
}

/// A server configuration offering the given ALPN protocols (`h3` for QUIC).
pub fn server_config_with_alpn(
    pem: &CertPem,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    install_crypto_provider();
    let chain = certs(pem.cert.as_bytes())?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|e| TlsError::PrivateKey(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Stateless session tickets (nginx's `ssl_session_tickets on`, its default), keys made at
    // start and rotated by rustls: a returning client resumes without a certificate and its
    // signature, however many clients came between. rustls's default keeps sessions in a
    // 256-entry cache instead, which a busy edge turns over in well under a second.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
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
