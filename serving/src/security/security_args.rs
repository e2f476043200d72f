//! Flags of the transport's security: TLS, mTLS, bearer tokens, reflection and the plaintext
//! health port for probes. Without any of them a service behaves as on a trusted network.

use std::path::PathBuf;

use clap::{ArgAction, Args};

use crate::security::tls::TlsFiles;

#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// PEM certificate chain of this server: gRPC is served over TLS only (give --tls-key
    /// too). The files are re-read when they change, without a restart.
    #[arg(long, env = "ICAE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ICAE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): every client must present a certificate signed by one of
    /// them (mTLS). The first DNS name of a client certificate names its tenant when the
    /// client sends no bearer token.
    #[arg(long, env = "ICAE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens, one `token tenant` per line (`#` comments allowed): calls
    /// without a known `authorization: Bearer <token>` are refused with UNAUTHENTICATED.
    /// Re-read on SIGHUP.
    #[arg(long, env = "ICAE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Serve gRPC server reflection (true|false).
    #[arg(long, env = "ICAE_REFLECTION", default_value_t = true, action = ArgAction::Set)]
    pub reflection: bool,
    /// Also serve grpc.health.v1 alone, in plaintext, on this port (same --host): for
    /// Kubernetes gRPC probes, which cannot speak TLS.
    #[arg(long, env = "ICAE_HEALTH_PORT")]
    pub health_port: Option<u16>,
}

impl SecurityArgs {
    /// The certificate files, when TLS is on.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// Whether calls must carry an identity (a token or, under mTLS, a client certificate).
    pub fn authenticates(&self) -> bool {
        self.auth_tokens_file.is_some() || self.tls_client_ca.is_some()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        security: SecurityArgs,
    }

    fn parse(args: &[&str]) -> Result<SecurityArgs, String> {
        Command::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
            .map(|c| c.security)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_trusted_network() {
        let args = parse(&[]).unwrap();
        assert!(args.tls_files().is_none());
        assert!(!args.authenticates());
        assert!(args.reflection);
        assert_eq!(args.health_port, None);
    }

    #[test]
    fn cert_and_key_come_together() {
        let err = parse(&["--tls-cert", "c.pem"]).unwrap_err();
        assert!(err.contains("--tls-key"), "{err}");
        let err = parse(&["--tls-key", "k.pem"]).unwrap_err();
        assert!(err.contains("--tls-cert"), "{err}");
        let err = parse(&["--tls-client-ca", "ca.pem"]).unwrap_err();
        assert!(err.contains("--tls-cert"), "{err}");
        let args = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(args.tls_files().unwrap().key, PathBuf::from("k.pem"));
        assert!(!args.authenticates());
    }

    #[test]
    fn reflection_can_be_turned_off() {
        assert!(!parse(&["--reflection", "false"]).unwrap().reflection);
        assert!(parse(&["--reflection", "true"]).unwrap().reflection);
        assert!(parse(&["--reflection", "maybe"]).is_err());
    }

    #[test]
    fn a_client_ca_or_a_token_file_turns_authentication_on() {
        let mtls = parse(&["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"]).unwrap();
        assert!(mtls.authenticates());
        assert!(parse(&["--auth-tokens-file", "t"]).unwrap().authenticates());
    }
}
