//! The server's TLS configuration from PEM files (--tls-cert, --tls-key, --tls-client-ca),
//! re-read when the files change: each new connection compares the files' stamps (cheap
//! `stat` calls), so a renewed certificate (cert-manager, a rotated Kubernetes
//! Secret) is served to new connections without a restart, and open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use thiserror::Error;
use tracing::{error, info};

use crate::security::file_stamp::FileStamp;

/// Where the server's certificate, key and (for mTLS) client CA live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path} holds no PEM {what}")]
    Missing {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{flag} {path} is not valid PEM: {source}")]
    Pem {
        flag: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-client-ca {path}: {problem}")]
    ClientCa { path: PathBuf, problem: String },
    #[error("--tls-cert {cert} with --tls-key {key}: {source}")]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The one crypto provider (ring), named explicitly: rustls's process default would panic
/// if another crate ever compiled a second provider in.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            flag,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            flag,
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            flag: "--tls-key",
            path: path.to_owned(),
            what: "private key",
        },
        source => TlsError::Pem {
            flag: "--tls-key",
            path: path.to_owned(),
            source,
        },
    })
}

impl TlsFiles {
    /// Read the files into a server configuration (HTTP/2 only, as gRPC needs).
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let chain = certificates("--tls-cert", &self.cert)?;
        let key = private_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| self.key_pair_error(source))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates("--tls-client-ca", path)? {
                    roots.add(cert).map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        problem: e.to_string(),
                    })?;
                }
                // Certificates are required: a client without one fails the handshake.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: path.clone(),
                            problem: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|source| self.key_pair_error(source))?;
        // grpcio (C core) refuses a TLS connection that did not negotiate h2 by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn key_pair_error(&self, source: rustls::Error) -> TlsError {
        TlsError::KeyPair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        }
    }

    fn stamp(&self) -> Vec<FileStamp> {
        let mut stamp = vec![FileStamp::of(&self.cert), FileStamp::of(&self.key)];
        if let Some(ca) = &self.client_ca {
            stamp.push(FileStamp::of(ca));
        }
        stamp
    }
}

/// The configuration for new connections, reloaded when the files change. A reload that
/// fails (a half-written file) keeps the previous configuration and is logged once per
/// change of the files.
pub struct ReloadingTls {
    files: TlsFiles,
    current: Mutex<Loaded>,
}

struct Loaded {
    stamp: Vec<FileStamp>,
    config: Arc<ServerConfig>,
}

impl ReloadingTls {
    /// Load the files now: a problem at start is fatal, with its file named.
    pub fn load(files: TlsFiles) -> Result<ReloadingTls, TlsError> {
        let stamp = files.stamp();
        let config = Arc::new(files.server_config()?);
        Ok(ReloadingTls {
            files,
            current: Mutex::new(Loaded { stamp, config }),
        })
    }

    /// The configuration a new connection gets.
    pub fn current(&self) -> Arc<ServerConfig> {
        let stamp = self.files.stamp();
        let mut loaded = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if stamp != loaded.stamp {
            loaded.stamp = stamp;
            match self.files.server_config() {
                Ok(config) => {
                    loaded.config = Arc::new(config);
                    info!(cert = %self.files.cert.display(), "TLS certificate files changed: reloaded");
                }
                Err(e) => {
                    error!(error = %e, "TLS certificate files changed but do not load; keeping the previous ones")
                }
            }
        }
        loaded.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = files(dir.path()).server_config().unwrap_err().to_string();
        assert!(err.starts_with("cannot read --tls-cert "), "{err}");
        assert!(err.contains("cert.pem"), "{err}");
    }

    #[test]
    fn a_file_without_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").unwrap();
        let err = files(dir.path()).server_config().unwrap_err().to_string();
        assert!(err.contains("cert.pem holds no PEM certificate"), "{err}");
    }

    #[test]
    fn a_broken_pem_block_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cert.pem"),
            "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = files(dir.path()).server_config().unwrap_err().to_string();
        assert!(
            err.contains("--tls-cert") && err.contains("not valid PEM"),
            "{err}"
        );
    }
}
