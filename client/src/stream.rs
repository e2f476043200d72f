//! Running a streamed generation to its end and collecting what it produced.

use std::time::Instant;

use anyhow::{Context, Result};
use icae_proto::v1::{
    generate_response, FinishReason, GenerateFinal, GenerateRequest, GenerateResponse,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{IntoRequest, Status};

use crate::connect::Decoder;
use crate::names::finish_reason;

/// What a Generate stream produced, with the client's view of its latency.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// The server's closing message (finish reason, counts, server timings); `None` when
    /// the stream ended without one.
    pub last: Option<GenerateFinal>,
    /// Seconds from the call to the first token, as the client saw it (0 without tokens).
    pub first_token_seconds: f64,
    /// Seconds from the call to the closing message (or to the end of the stream).
    pub seconds: f64,
}

impl Generated {
    /// Whether the server closed the stream with its final message.
    pub fn finished(&self) -> bool {
        self.last.is_some()
    }

    /// The closing message, or an error: a stream that stops early lost its finish reason.
    pub fn completed(&self) -> Result<&GenerateFinal> {
        self.last
            .as_ref()
            .context("the stream ended without a final message")
    }

    pub fn finish_reason(&self) -> FinishReason {
        self.last
            .as_ref()
            .map_or(FinishReason::Unspecified, |last| {
                finish_reason(last.finish_reason)
            })
    }

    /// Seconds per generated token after the first.
    pub fn per_token_seconds(&self) -> f64 {
        (self.seconds - self.first_token_seconds)
            / self.token_ids.len().saturating_sub(1).max(1) as f64
    }
}

/// Run Generate to the end of its stream.
pub async fn generate(
    decoder: &mut Decoder,
    request: impl IntoRequest<GenerateRequest>,
) -> Result<Generated, Status> {
    generate_with(decoder, request, |_| {}).await
}

/// Run Generate to the end of its stream, handing each piece of text to `on_text` as it
/// arrives (to print it live).
pub async fn generate_with(
    decoder: &mut Decoder,
    request: impl IntoRequest<GenerateRequest>,
    on_text: impl FnMut(&str),
) -> Result<Generated, Status> {
    // Latencies count from before the call: connection set-up of the stream included.
    let started = Instant::now();
    let stream = decoder.generate(request).await?.into_inner();
    collect(stream, started, on_text).await
}

/// Collect a Generate stream that was started at `started`. Reads to the end of the
/// stream, so an error the server sends after the last token is not lost.
pub async fn collect<S>(
    mut stream: S,
    started: Instant,
    mut on_text: impl FnMut(&str),
) -> Result<Generated, Status>
where
    S: Stream<Item = Result<GenerateResponse, Status>> + Unpin,
{
    let mut out = Generated::default();
    let mut first_token = None;
    while let Some(message) = stream.next().await {
        match message?.event {
            Some(generate_response::Event::Delta(delta)) => {
                first_token.get_or_insert_with(|| started.elapsed().as_secs_f64());
                on_text(&delta.text);
                out.token_ids.extend(delta.token_ids);
                out.text.push_str(&delta.text);
            }
            Some(generate_response::Event::Final(last)) => {
                out.seconds = started.elapsed().as_secs_f64();
                out.last = Some(last);
            }
            None => {}
        }
    }
    if out.last.is_none() {
        out.seconds = started.elapsed().as_secs_f64();
    }
    out.first_token_seconds = first_token.unwrap_or_default();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use icae_proto::v1::TokenDelta;
    use tonic::Code;

    fn delta(ids: &[u32], text: &str) -> Result<GenerateResponse, Status> {
        Ok(GenerateResponse {
            event: Some(generate_response::Event::Delta(TokenDelta {
                token_ids: ids.to_vec(),
                text: text.into(),
            })),
        })
    }

    fn last(reason: FinishReason, generated_tokens: u32) -> Result<GenerateResponse, Status> {
        Ok(GenerateResponse {
            event: Some(generate_response::Event::Final(GenerateFinal {
                finish_reason: reason as i32,
                prompt_positions: 33,
                generated_tokens,
                timings: None,
            })),
        })
    }

    #[tokio::test]
    async fn collects_text_ids_and_the_final_message() {
        let stream = tokio_stream::iter(vec![
            delta(&[1, 2], "Hel"),
            delta(&[3], "lo"),
            last(FinishReason::Length, 3),
        ]);
        let mut seen = Vec::new();
        let out = collect(stream, Instant::now(), |text| seen.push(text.to_string()))
            .await
            .unwrap();
        assert_eq!(out.text, "Hello");
        assert_eq!(out.token_ids, [1, 2, 3]);
        assert_eq!(seen, ["Hel", "lo"]);
        assert!(out.finished());
        assert_eq!(out.finish_reason(), FinishReason::Length);
        let last = out.completed().unwrap();
        assert_eq!((last.prompt_positions, last.generated_tokens), (33, 3));
        assert!(out.first_token_seconds <= out.seconds);
    }

    #[tokio::test]
    async fn a_stream_without_a_final_message_is_not_completed() {
        let stream = tokio_stream::iter(vec![delta(&[7], "x")]);
        let out = collect(stream, Instant::now(), |_| {}).await.unwrap();
        assert_eq!(out.token_ids, [7]);
        assert!(!out.finished());
        assert_eq!(out.finish_reason(), FinishReason::Unspecified);
        assert_eq!(
            out.completed().unwrap_err().to_string(),
            "the stream ended without a final message"
        );
    }

    #[tokio::test]
    async fn an_error_in_the_stream_is_returned() {
        let stream = tokio_stream::iter(vec![
            delta(&[1], "a"),
            Err(Status::deadline_exceeded("deadline of 0.500s")),
        ]);
        let status = collect(stream, Instant::now(), |_| {}).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn per_token_seconds_excludes_the_first_token() {
        let out = Generated {
            token_ids: vec![1, 2, 3, 4, 5],
            first_token_seconds: 1.0,
            seconds: 3.0,
            ..Default::default()
        };
        assert_eq!(out.per_token_seconds(), 0.5);
        let one = Generated {
            token_ids: vec![1],
            first_token_seconds: 1.0,
            seconds: 1.5,
            ..Default::default()
        };
        assert_eq!(one.per_token_seconds(), 0.5);
    }
}
