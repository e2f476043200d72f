//! Who may call the ICAE services, and as which tenant. An interceptor on the Encoder and
//! Decoder services (never on health) reads `authorization: Bearer <token>`; a client
//! certificate verified by --tls-client-ca names the tenant when no token is sent. The tenant
//! goes into the request's extensions, where the pipelines find it with `tenant_of`.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::CertificateDer;
use thiserror::Error;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::{error, info};

use crate::security::auth_tokens::{TokenFileError, TokenTable};
use crate::security::cert_names::first_dns_name;
use crate::security::file_stamp::FileStamp;
use crate::security::identity::Tenant;
use crate::security::security_args::SecurityArgs;
use crate::text::shown;

/// Why a call was refused (UNAUTHENTICATED). No variant carries the token.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("this call needs `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("the authorization metadata is not of the form `Bearer <token>`")]
    Malformed,
    #[error("the bearer token is not known to this server")]
    UnknownToken,
    #[error("this server takes no bearer tokens: identify with the client certificate")]
    TokensNotAccepted,
    #[error("the client certificate has no DNS name (subjectAltName) to name a tenant")]
    NoCertificateName,
    #[error("the client certificate's DNS name is not a tenant name: {0}")]
    BadCertificateName(String),
}

/// How often the tokens file's stamp is compared (SIGHUP reloads at once).
const TOKENS_FILE_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// Tokens swapped whole on reload: a call sees the old table or the new one.
type SharedTable = Arc<RwLock<Arc<TokenTable>>>;

/// The authentication policy of one server; cheap to clone (one per connection).
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// No --auth-tokens-file and no --tls-client-ca: every call passes without a tenant
    /// (trusted networks only).
    Open,
    Required {
        /// None: mTLS only, identities come from client certificates.
        tokens: Option<SharedTable>,
        tokens_file: Option<PathBuf>,
    },
}

impl Authenticator {
    /// The policy the flags ask for; a tokens file that does not load is an error naming it.
    pub fn from_args(args: &SecurityArgs) -> Result<Authenticator, TokenFileError> {
        if !args.authenticates() {
            return Ok(Authenticator::Open);
        }
        let tokens = match &args.auth_tokens_file {
            None => None,
            Some(path) => {
                let table = TokenTable::load(path)?;
                info!(tokens = table.len(), file = %path.display(), "bearer tokens loaded");
                Some(Arc::new(RwLock::new(Arc::new(table))))
            }
        };
        Ok(Authenticator::Required {
            tokens,
            tokens_file: args.auth_tokens_file.clone(),
        })
    }

    /// Re-read the tokens file on SIGHUP, and when it changes (checked every few seconds, so
    /// that an updated Kubernetes Secret applies by itself). A file that does not load
    /// keeps the previous tokens and is logged. Nothing to do without a tokens file.
    pub fn watch_tokens_file(&self) -> Result<(), String> {
        let Authenticator::Required {
            tokens: Some(tokens),
            tokens_file: Some(path),
        } = self
        else {
            return Ok(());
        };
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups =
            signal(SignalKind::hangup()).map_err(|e| format!("listening for SIGHUP: {e}"))?;
        let (tokens, path) = (tokens.clone(), path.clone());
        let mut stamp = FileStamp::of(&path);
        let mut poll = tokio::time::interval(TOKENS_FILE_POLL);
        tokio::spawn(async move {
            loop {
                let why = tokio::select! {
                    Some(()) = hangups.recv() => "SIGHUP",
                    _ = poll.tick() => {
                        let now = FileStamp::of(&path);
                        if now == stamp {
                            continue;
                        }
                        "the tokens file changed"
                    }
                };
                stamp = FileStamp::of(&path);
                match TokenTable::load(&path) {
                    Ok(table) => {
                        info!(tokens = table.len(), file = %path.display(), "{why}: bearer tokens reloaded");
                        *tokens.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
                    }
                    Err(e) => {
                        error!(error = %e, "{why}: the tokens file does not load; keeping the previous tokens")
                    }
                }
            }
        });
        Ok(())
    }

    /// The caller's tenant, or None when authentication is off.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Option<Tenant>, AuthError> {
        let Authenticator::Required { tokens, .. } = self else {
            return Ok(None);
        };
        match bearer_token(request)? {
            Some(token) => {
                let Some(tokens) = tokens else {
                    return Err(AuthError::TokensNotAccepted);
                };
                let table = tokens
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                table.tenant(token).map(Some).ok_or(AuthError::UnknownToken)
            }
            None => match request.peer_certs() {
                // Verified by the handshake against --tls-client-ca, so its name is trusted.
                Some(certs) if !certs.is_empty() => certificate_tenant(&certs[0]).map(Some),
                _ => Err(AuthError::Missing),
            },
        }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(tenant) = self.authenticate(&request).map_err(Status::from)? {
            request.extensions_mut().insert(tenant);
        }
        Ok(request)
    }
}

/// The token of `authorization: Bearer <token>` (scheme case-insensitive), None if absent.
fn bearer_token<T>(request: &Request<T>) -> Result<Option<&str>, AuthError> {
    let Some(value) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(token))
}

/// The tenant a verified client certificate names: the first DNS name of its
/// subjectAltName, in lower case (DNS names are case-insensitive). A first name that is not
/// a tenant name (`*.acme`) is refused, not skipped for a later one.
pub fn certificate_tenant(cert: &CertificateDer<'_>) -> Result<Tenant, AuthError> {
    let name = first_dns_name(cert.as_ref()).ok_or(AuthError::NoCertificateName)?;
    Tenant::new(&name.to_ascii_lowercase())
        .map_err(|e| AuthError::BadCertificateName(format!("{}: {e}", shown(&name))))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TOKEN: &str = "0123456789abcdef-acme";

    fn with_tokens() -> Authenticator {
        let table = TokenTable::parse(&format!("{TOKEN} acme\n"), Path::new("t")).unwrap();
        Authenticator::Required {
            tokens: Some(Arc::new(RwLock::new(Arc::new(table)))),
            tokens_file: None,
        }
    }

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn an_open_server_lets_every_call_through_without_a_tenant() {
        let mut open = Authenticator::Open;
        let passed = open.call(request(Some("Bearer whatever"))).unwrap();
        assert_eq!(crate::tenant_of(&passed), None);
    }

    #[test]
    fn a_known_token_names_its_tenant() {
        let passed = with_tokens()
            .call(request(Some(&format!("Bearer {TOKEN}"))))
            .unwrap();
        assert_eq!(crate::tenant_of(&passed).unwrap().as_str(), "acme");
        let passed = with_tokens()
            .call(request(Some(&format!("bearer  {TOKEN}"))))
            .unwrap();
        assert_eq!(crate::tenant_of(&passed).unwrap().as_str(), "acme");
    }

    #[test]
    fn missing_unknown_and_malformed_tokens_are_unauthenticated_without_echo() {
        let secret = "zzzzzzzzzzzzzzzz-secret";
        for (value, expected) in [
            (None, AuthError::Missing),
            (Some(format!("Bearer {secret}")), AuthError::UnknownToken),
            (Some(format!("Basic {secret}")), AuthError::Malformed),
            (Some("Bearer ".to_string()), AuthError::Malformed),
            (Some(secret.to_string()), AuthError::Malformed),
        ] {
            let status = with_tokens().call(request(value.as_deref())).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert_eq!(status.message(), expected.to_string());
            assert!(!status.message().contains(secret));
        }
    }

    #[test]
    fn an_mtls_only_server_refuses_tokens_and_calls_without_certificates() {
        let mtls = Authenticator::Required {
            tokens: None,
            tokens_file: None,
        };
        assert_eq!(
            mtls.authenticate(&request(Some(&format!("Bearer {TOKEN}")))),
            Err(AuthError::TokensNotAccepted)
        );
        assert_eq!(mtls.authenticate(&request(None)), Err(AuthError::Missing));
    }

    /// Self-signed, made with `openssl req -x509 -subj /CN=ignored-cn -addext
    /// subjectAltName=DNS:acme,DNS:other`.
    const NAMED: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBljCCAT2gAwIBAgIUCSvwIcaKrLdnMvPIk7knPLUwAVowCgYIKoZIzj0EAwIw\n\
FTETMBEGA1UEAwwKaWdub3JlZC1jbjAeFw0yNjExMjkwMzQyMTJaFw0yNjExMzAw\n\
MzQyMTJaMBUxEzARBgNVBAMMCmlnbm9yZWQtY24wWTATBgcqhkjOPQIBBggqhkjO\n\
PQMBBwNCAATdd96jFc6doF+znafWbG4C/D3NhRvBErs5+7tSsNbtZNV2LMWBxS6H\n\
SvaY26J98vhxDVpFTtdLfGKZ0RLb9mXMo2swaTAdBgNVHQ4EFgQUmBkc79zRTLno\n\
GLIMuufkqUE1bg4wHwYDVR0jBBgwFoAUmBkc79zRTLnoGLIMuufkqUE1bg4wDwYD\n\
VR0TAQH/BAUwAwEB/zAWBgNVHREEDzANggRhY21lggVvdGhlcjAKBggqhkjOPQQD\n\
AgNHADBEAiBiQDRqBS2s6GA74t1GgNbBtIxynd/jLVggUWB9mLnlnAIgHmQ2Yrfl\n\
ai/aeIyY71CC1WD9i7Sf42HRFOyeiVtuNZk=\n\
-----END CERTIFICATE-----";
    /// The same key with `-subj /CN=acme` and no subjectAltName.
    const NAMELESS: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBczCCARmgAwIBAgIULTTtcZQarHfJclfP5hgcAk2vP5AwCgYIKoZIzj0EAwIw\n\
DzENMAsGA1UEAwwEYWNtZTAeFw0yNjExMjkwMzQyMTJaFw0yNjExMzAwMzQyMTJa\n\
MA8xDTALBgNVBAMMBGFjbWUwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATdd96j\n\
Fc6doF+znafWbG4C/D3NhRvBErs5+7tSsNbtZNV2LMWBxS6HSvaY26J98vhxDVpF\n\
TtdLfGKZ0RLb9mXMo1MwUTAdBgNVHQ4EFgQUmBkc79zRTLnoGLIMuufkqUE1bg4w\n\
HwYDVR0jBBgwFoAUmBkc79zRTLnoGLIMuufkqUE1bg4wDwYDVR0TAQH/BAUwAwEB\n\
/zAKBggqhkjOPQQDAgNIADBFAiEAl/IjFJE5ZOh29KwHkXRRh7geBXM6m/oOYzc1\n\
mLZMoUYCIDht0OWLGePMDJMsSPEMOIz/jUKXz/8AEcskrnjDSLPz\n\
-----END CERTIFICATE-----";

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_certificate_names_its_tenant_by_its_first_dns_name_never_its_cn() {
        assert_eq!(certificate_tenant(&der(NAMED)).unwrap().as_str(), "acme");
        assert_eq!(
            certificate_tenant(&der(NAMELESS)),
            Err(AuthError::NoCertificateName)
        );
    }

    #[test]
    fn garbage_is_no_certificate_name() {
        let cert = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert_eq!(certificate_tenant(&cert), Err(AuthError::NoCertificateName));
    }
}
