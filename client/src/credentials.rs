//! What a client proves and trusts: the CA that signed the server's certificate, a client
//! certificate for mTLS, and a bearer token. Files are read once, with errors naming them.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// TLS settings of a connection to an `https://` address.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM CA certificate(s) to trust; None: the web PKI roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key (mTLS).
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the server's certificate against, when not the address's host.
    pub domain: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity_pem.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

fn read_pem(flag: &str, path: &Path, marker: &str) -> Result<Vec<u8>> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains(marker) {
        bail!("{flag} {} holds no PEM {marker:?} block", path.display());
    }
    Ok(pem)
}

impl ClientTls {
    /// From PEM files: `ca` (--tls-ca), and `cert` with `key` (--tls-cert, --tls-key) for mTLS.
    pub fn from_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self> {
        let ca_pem = ca
            .map(|path| read_pem("--tls-ca", path, "-----BEGIN CERTIFICATE-----"))
            .transpose()?;
        let identity_pem = match (cert, key) {
            (Some(cert), Some(key)) => Some((
                read_pem("--tls-cert", cert, "-----BEGIN CERTIFICATE-----")?,
                read_pem("--tls-key", key, "PRIVATE KEY-----")?,
            )),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together (the client certificate and its key)"),
        };
        Ok(ClientTls {
            ca_pem,
            identity_pem,
            domain: None,
        })
    }

    pub(crate) fn config(&self) -> ClientTlsConfig {
        let mut config = match &self.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity_pem {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

/// A bearer token, sent as `authorization: Bearer <token>`; never printed.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    pub fn new(token: &str) -> Result<Self> {
        let token = token.trim();
        if token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()) {
            bail!("a bearer token is non-empty visible ASCII (no spaces)");
        }
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .context("the bearer token is not valid in gRPC metadata")?;
        value.set_sensitive(true);
        Ok(BearerToken(value))
    }

    /// The token in a file (a mounted Secret); surrounding whitespace is ignored.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?;
        Self::new(&text).with_context(|| format!("--token-file {}", path.display()))
    }

    pub(crate) fn header(&self) -> MetadataValue<Ascii> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let token = BearerToken::new("  s3cr3t-t0ken\n").unwrap();
        assert_eq!(token.header().to_str().unwrap(), "Bearer s3cr3t-t0ken");
        assert_eq!(format!("{token:?}"), "BearerToken(..)");
        assert!(BearerToken::new("two words").is_err());
        assert!(BearerToken::new("").is_err());
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.pem");
        let err = ClientTls::from_files(Some(&missing), None, None).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot read --tls-ca "),
            "{err:#}"
        );
        std::fs::write(&missing, "hello").unwrap();
        let err = ClientTls::from_files(Some(&missing), None, None).unwrap_err();
        assert!(format!("{err:#}").contains("holds no PEM"), "{err:#}");
        let err = ClientTls::from_files(None, Some(&missing), None).unwrap_err();
        assert!(format!("{err:#}").contains("go together"), "{err:#}");
        let err = BearerToken::from_file(&dir.path().join("token")).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot read --token-file "),
            "{err:#}"
        );
    }
}
