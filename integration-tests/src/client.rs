//! gRPC helpers for the tests.

use std::time::Duration;

use icae_proto::v1::decoder_client::DecoderClient;
use icae_proto::v1::encoder_client::EncoderClient;
use icae_proto::v1::{
    document, generate_request, generate_response, slot_ref, CompressOptions, CompressRequest,
    CompressResponse, Document, GenerateRequest, InfoRequest, InfoResponse, Mode, Sampling,
    SlotList, SlotRef,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

pub async fn encoder(url: &str) -> EncoderClient<Channel> {
    EncoderClient::connect(url.to_string()).await.unwrap()
}

pub async fn decoder(url: &str) -> DecoderClient<Channel> {
    DecoderClient::connect(url.to_string()).await.unwrap()
}

pub fn text_doc(text: &str) -> Document {
    Document {
        content: Some(document::Content::Text(text.into())),
    }
}

pub async fn compress(url: &str, text: &str, ttl_seconds: u32) -> Result<CompressResponse, Status> {
    let request = CompressRequest {
        documents: vec![text_doc(text)],
        options: Some(CompressOptions {
            ttl_seconds,
            ..Default::default()
        }),
    };
    encoder(url)
        .await
        .compress(request)
        .await
        .map(|r| r.into_inner())
}

pub async fn compress_key(url: &str, text: &str) -> String {
    let response = compress(url, text, 0).await.unwrap();
    response.documents[0].handle.as_ref().unwrap().key.clone()
}

pub fn greedy(max_new_tokens: u32) -> Sampling {
    Sampling {
        max_new_tokens,
        ..Default::default()
    }
}

pub fn from_keys(keys: &[&str], mode: Mode, prompt: &str, sampling: Sampling) -> GenerateRequest {
    GenerateRequest {
        context: Some(generate_request::Context::Slots(SlotList {
            items: keys
                .iter()
                .map(|k| SlotRef {
                    source: Some(slot_ref::Source::Key(k.to_string())),
                })
                .collect(),
        })),
        mode: mode as i32,
        prompt: prompt.into(),
        sampling: Some(sampling),
    }
}

/// The outcome of a streamed generation.
#[derive(Debug, Default)]
pub struct Streamed {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finished: bool,
}

/// Run Generate to the end.
pub async fn generate(url: &str, request: GenerateRequest) -> Result<Streamed, Status> {
    let mut stream = decoder(url).await.generate(request).await?.into_inner();
    let mut out = Streamed::default();
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(generate_response::Event::Delta(d)) => {
                out.token_ids.extend(d.token_ids);
                out.text.push_str(&d.text);
            }
            Some(generate_response::Event::Final(_)) => out.finished = true,
            None => {}
        }
    }
    Ok(out)
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
