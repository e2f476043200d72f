//! Opening encoder and decoder clients with a deadline and a message size limit.

use std::time::Duration;

use anyhow::{Context, Result};
use icae_proto::v1::decoder_client::DecoderClient;
use icae_proto::v1::encoder_client::EncoderClient;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// How long to wait for the TCP/HTTP2 connection itself, so that a wrong address fails
/// quickly instead of hanging until the request deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection settings. The default is tonic's: no deadline, 4 MiB messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions {
    /// Deadline of every call, sent as `grpc-timeout` so the server stops work the client
    /// has given up on.
    pub timeout: Option<Duration>,
    /// Largest message accepted from the server, in bytes (slots returned inline can be
    /// larger than tonic's 4 MiB default).
    pub max_message_bytes: Option<usize>,
}

/// Puts the connection's deadline on every call.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Option<Duration>);

impl Interceptor for Deadline {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(timeout) = self.0 {
            request.set_timeout(timeout);
        }
        Ok(request)
    }
}

/// An encoder-svc client whose calls carry the connection's deadline.
pub type Encoder = EncoderClient<InterceptedService<Channel, Deadline>>;
/// A decoder-svc client whose calls carry the connection's deadline.
pub type Decoder = DecoderClient<InterceptedService<Channel, Deadline>>;

async fn channel(url: &str) -> Result<Channel> {
    Channel::from_shared(url.to_string())
        .with_context(|| format!("invalid address {url}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Connect to encoder-svc at `url`, e.g. `http://127.0.0.1:50051`.
pub async fn connect_encoder(url: &str, options: &ConnectOptions) -> Result<Encoder> {
    let client = EncoderClient::with_interceptor(channel(url).await?, Deadline(options.timeout));
    Ok(match options.max_message_bytes {
        Some(limit) => client.max_decoding_message_size(limit),
        None => client,
    })
}

/// Connect to decoder-svc at `url`, e.g. `http://127.0.0.1:50052`.
pub async fn connect_decoder(url: &str, options: &ConnectOptions) -> Result<Decoder> {
    let client = DecoderClient::with_interceptor(channel(url).await?, Deadline(options.timeout));
    Ok(match options.max_message_bytes {
        Some(limit) => client.max_decoding_message_size(limit),
        None => client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_sent_as_grpc_timeout() {
        let request = Deadline(Some(Duration::from_millis(1500)))
            .call(Request::new(()))
            .unwrap();
        assert!(request.metadata().get("grpc-timeout").is_some());
    }

    #[test]
    fn no_deadline_leaves_the_request_alone() {
        let request = Deadline(None).call(Request::new(())).unwrap();
        assert!(request.metadata().get("grpc-timeout").is_none());
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
