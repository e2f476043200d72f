//! gRPC helpers for the tests: [`icae_client`] with the tests' shorthands, and assertions.

use std::time::Duration;

use icae_client::{compress_one, generate_request, slot_keys, ConnectOptions};
use icae_proto::v1::{
    CompressOptions, CompressResponse, GenerateRequest, InfoRequest, InfoResponse, Mode, Sampling,
};
use tonic::{Code, Status};

pub use icae_client::{greedy, text_document as text_doc, Decoder, Encoder, Generated};

pub async fn encoder(url: &str) -> Encoder {
    icae_client::connect_encoder(url, &ConnectOptions::default())
        .await
        .unwrap()
}

pub async fn decoder(url: &str) -> Decoder {
    icae_client::connect_decoder(url, &ConnectOptions::default())
        .await
        .unwrap()
}

/// Compress one text; `ttl_seconds` 0 leaves the TTL unset (the server's default).
pub async fn compress(url: &str, text: &str, ttl_seconds: u32) -> Result<CompressResponse, Status> {
    let options = CompressOptions {
        ttl: ttl(ttl_seconds),
        ..Default::default()
    };
    encoder(url)
        .await
        .compress(compress_one(text, options))
        .await
        .map(|r| r.into_inner())
}

/// `CompressOptions.ttl` of whole seconds; 0: unset.
pub fn ttl(seconds: u32) -> Option<icae_proto::time::Duration> {
    (seconds > 0).then(|| icae_proto::time::seconds(seconds.into()))
}

pub async fn compress_key(url: &str, text: &str) -> String {
    let response = compress(url, text, 0).await.unwrap();
    response.documents[0].handle.as_ref().unwrap().key.clone()
}

pub fn from_keys(keys: &[&str], mode: Mode, prompt: &str, sampling: Sampling) -> GenerateRequest {
    generate_request(slot_keys(keys), mode, prompt, sampling)
}

/// Run Generate to the end.
pub async fn generate(url: &str, request: GenerateRequest) -> Result<Generated, Status> {
    icae_client::generate(&mut decoder(url).await, request).await
}

pub async fn decoder_info(url: &str) -> InfoResponse {
    decoder(url)
        .await
        .info(InfoRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Assert a status code and that the message contains every fragment.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    fragments: &[&str],
) {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "message: {}", status.message());
    for fragment in fragments {
        assert!(
            status.message().contains(fragment),
            "{:?} does not contain {fragment:?}",
            status.message()
        );
    }
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The status of `service` on a plaintext `--health-port` (what a kubelet probe sees).
pub async fn plaintext_health(
    port: u16,
    service: &str,
) -> tonic_health::pb::health_check_response::ServingStatus {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    status.try_into().unwrap()
}
