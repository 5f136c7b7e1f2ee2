//! TLS for the webhook: certificates read from PEM files and re-read when the
//! files change, so a rotated certificate is served without a restart and
//! without dropping open connections.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("the certificate and key do not form a usable pair: {0}")]
    Pair(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a certified key from PEM bytes.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let ck = CertifiedKey::from_der(certs, key, &provider())?;
    Ok(ck)
}

struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
}

/// Where the served certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// Two PEM files someone else keeps current (cert-manager, a mounted Secret).
    Files { cert: PathBuf, key: PathBuf },
    /// PEM bytes handed over by the program (the operator's own Secret).
    Memory,
}

/// Serves the certificate last read from two PEM files, or last set from PEM
/// bytes (a Secret). Handshakes read it without locking.
pub struct ReloadingCert {
    source: CertSource,
    current: ArcSwap<Loaded>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").field("source", &self.source).finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// How the certificate and key are named in errors.
fn names(source: &CertSource) -> (PathBuf, PathBuf) {
    match source {
        CertSource::Files { cert, key } => (cert.clone(), key.clone()),
        CertSource::Memory => (PathBuf::from("the certificate"), PathBuf::from("the key")),
    }
}

impl ReloadingCert {
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let (cert, key) = (cert_path.into(), key_path.into());
        let (cert_pem, key_pem) = (read(&cert)?, read(&key)?);
        Self::with_source(CertSource::Files { cert, key }, &cert_pem, &key_pem)
    }

    /// A certificate given as PEM bytes; change it with [`ReloadingCert::set_pem`].
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Self::with_source(CertSource::Memory, cert_pem, key_pem)
    }

    fn with_source(source: CertSource, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let (cert_name, key_name) = names(&source);
        let key = Arc::new(certified_key(cert_pem, key_pem, &cert_name, &key_name)?);
        Ok(ReloadingCert {
            source,
            current: ArcSwap::from_pointee(Loaded {
                cert_pem: cert_pem.to_vec(),
                key_pem: key_pem.to_vec(),
                key,
            }),
        })
    }

    pub fn source(&self) -> &CertSource {
        &self.source
    }

    /// Serves a new certificate from the next handshake on, when it differs and is valid.
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<bool, TlsError> {
        let current = self.current.load();
        if current.cert_pem == cert_pem && current.key_pem == key_pem {
            return Ok(false);
        }
        let (cert_name, key_name) = names(&self.source);
        let key = Arc::new(certified_key(cert_pem, key_pem, &cert_name, &key_name)?);
        self.current.store(Arc::new(Loaded {
            cert_pem: cert_pem.to_vec(),
            key_pem: key_pem.to_vec(),
            key,
        }));
        Ok(true)
    }

    /// Re-reads the files; swaps the certificate when they changed and form a
    /// valid pair. Returns whether it swapped. A half-written pair is an error
    /// and the old certificate stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let CertSource::Files { cert, key } = &self.source else {
            return Ok(false);
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        self.set_pem(&cert_pem, &key_pem)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// A rustls server configuration (HTTP/2 and HTTP/1.1) that serves whatever `certs` resolves.
pub fn server_config(certs: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
