//! Opening encoder and decoder clients with a deadline, a message size limit, TLS for
//! `https://` addresses and a bearer token.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use icae_proto::v1::decoder_service_client::DecoderServiceClient;
use icae_proto::v1::encoder_service_client::EncoderServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::credentials::{BearerToken, ClientTls};

/// How long to wait for the TCP/HTTP2 connection itself, so that a wrong address fails
/// quickly instead of hanging until the request deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection settings. The default is tonic's: no deadline, 4 MiB messages, web PKI
/// roots for `https://`, no token.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Deadline of every call, sent as `grpc-timeout` so the server stops work the client
    /// has given up on.
    pub timeout: Option<Duration>,
    /// Largest message accepted from the server, in bytes (slots returned inline can be
    /// larger than tonic's 4 MiB default).
    pub max_message_bytes: Option<usize>,
    /// TLS settings for `https://` addresses (None: trust the web PKI roots).
    pub tls: Option<ClientTls>,
    /// Sent with every call as `authorization: Bearer <token>`.
    pub token: Option<BearerToken>,
}

/// Puts the connection's deadline and bearer token on every call.
#[derive(Debug, Clone, Default)]
pub struct PerCall {
    timeout: Option<Duration>,
    token: Option<BearerToken>,
}

impl PerCall {
    fn of(options: &ConnectOptions) -> Self {
        PerCall {
            timeout: options.timeout,
            token: options.token.clone(),
        }
    }
}

impl Interceptor for PerCall {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.header());
        }
        Ok(request)
    }
}

/// An encoder-svc client whose calls carry the connection's deadline and token.
pub type Encoder = EncoderServiceClient<InterceptedService<Channel, PerCall>>;
/// A decoder-svc client whose calls carry the connection's deadline and token.
pub type Decoder = DecoderServiceClient<InterceptedService<Channel, PerCall>>;

/// A connection to `url`: TLS for `https://` (with `options.tls`, or the web PKI roots).
pub async fn channel(url: &str, options: &ConnectOptions) -> Result<Channel> {
    endpoint(url, options)?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// [`channel`], connected on first use (and again after the connection is lost).
pub fn lazy_channel(url: &str, options: &ConnectOptions) -> Result<Channel> {
    Ok(endpoint(url, options)?.connect_lazy())
}

fn endpoint(url: &str, options: &ConnectOptions) -> Result<Endpoint> {
    let mut endpoint = Channel::from_shared(url.to_string())
        .with_context(|| format!("invalid address {url}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    let https = endpoint.uri().scheme_str() == Some("https");
    match (&options.tls, https) {
        (Some(_), false) => {
            bail!("TLS options (--tls-ca, --tls-cert) need an https:// address, got {url}")
        }
        (tls, true) => {
            let config = tls.clone().unwrap_or_default().config();
            endpoint = endpoint
                .tls_config(config)
                .with_context(|| format!("TLS settings for {url}"))?;
        }
        (None, false) => {}
    }
    Ok(endpoint)
}

/// Connect to encoder-svc at `url`, e.g. `http://127.0.0.1:50051`.
pub async fn connect_encoder(url: &str, options: &ConnectOptions) -> Result<Encoder> {
    Ok(encoder_on(channel(url, options).await?, options))
}

/// Connect to decoder-svc at `url`, e.g. `http://127.0.0.1:50052`.
pub async fn connect_decoder(url: &str, options: &ConnectOptions) -> Result<Decoder> {
    Ok(decoder_on(channel(url, options).await?, options))
}

/// An encoder client on `channel` with the options' per-call settings and message limit.
pub(crate) fn encoder_on(channel: Channel, options: &ConnectOptions) -> Encoder {
    let client = EncoderServiceClient::with_interceptor(channel, PerCall::of(options));
    match options.max_message_bytes {
        Some(limit) => client.max_decoding_message_size(limit),
        None => client,
    }
}

/// A decoder client on `channel`, as [`encoder_on`].
pub(crate) fn decoder_on(channel: Channel, options: &ConnectOptions) -> Decoder {
    let client = DecoderServiceClient::with_interceptor(channel, PerCall::of(options));
    match options.max_message_bytes {
        Some(limit) => client.max_decoding_message_size(limit),
        None => client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_sent_as_grpc_timeout() {
        let options = ConnectOptions {
            timeout: Some(Duration::from_millis(1500)),
            ..Default::default()
        };
        let request = PerCall::of(&options).call(Request::new(())).unwrap();
        assert!(request.metadata().get("grpc-timeout").is_some());
    }

    #[test]
    fn no_deadline_and_no_token_leave_the_request_alone() {
        let request = PerCall::default().call(Request::new(())).unwrap();
        assert!(request.metadata().get("grpc-timeout").is_none());
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn the_token_is_sent_as_a_bearer() {
        let options = ConnectOptions {
            token: Some(BearerToken::new("abc").unwrap()),
            ..Default::default()
        };
        let request = PerCall::of(&options).call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer abc"
        );
    }

    #[tokio::test]
    async fn tls_options_on_a_plaintext_address_are_refused() {
        let options = ConnectOptions {
            tls: Some(ClientTls::default()),
            ..Default::default()
        };
        let err = connect_encoder("http://127.0.0.1:1", &options)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("need an https:// address"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_bad_address_names_itself() {
        let err = connect_encoder("not a url", &ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("invalid address not a url"),
            "{err:#}"
        );
    }
}
