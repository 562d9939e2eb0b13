//! TLS on the TCP listener: the certificate chain and key come from PEM files and are swapped
//! in place on SIGHUP, so a renewed certificate is served without closing the listener or the
//! connections it holds. The crypto is rustls with ring, the provider the bkg_db sync's TLS
//! already builds (bkg-agent/src/sync/connect.rs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("--tls-key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("--tls-key {key} does not go with --tls-cert {cert}: {reason}")]
    Mismatch { cert: String, key: String, reason: String },
    #[error("the TLS configuration: {0}")]
    Config(String),
}

/// The served certificate, read again from its files on demand.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Reads `cert_path` (a PEM chain, leaf first) and `key_path` (a PEM private key).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read_pair(cert_path, key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again; on any error the certificate served so far stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = read_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The acceptor of the TCP listener, serving whatever certificate is current.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner())))
    }
}

fn read_pair(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate { path: cert_path.display().to_string(), reason };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|error| cert_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| cert_error(error.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|error| TlsError::Key { path: key_path.display().to_string(), reason: error.to_string() })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| TlsError::Mismatch {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
        reason: error.to_string(),
    })
}

/// Reloads `cert` on every SIGHUP for the agent's lifetime. The handler is installed before
/// this returns, so a SIGHUP sent once the listener is up never falls to the default action
/// (which ends the process).
pub fn reload_on_hangup(cert: Arc<ReloadableCert>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match cert.reload() {
                Ok(()) => {
                    tracing::info!(cert = %cert.cert_path.display(), "SIGHUP: serving the reloaded TLS certificate")
                }
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: the TLS certificate was not reloaded; the previous one stays")
                }
            }
        }
    });
    Ok(())
}

/// An HTTP client builder for the agent's own calls out (webhooks, OTLP): https is verified
/// against the system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` choose others), with ring.
pub fn client_builder() -> Result<reqwest::ClientBuilder, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config))
}
