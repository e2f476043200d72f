//! The Decoder gRPC service: validates requests, fetches and checks slots, and streams the
//! scheduler's events. Errors become statuses only through `ServiceError` (icae-core).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use icae_core::service::telemetry::{continue_trace, link_to};
use icae_core::service::{common_limits, deadline, info_response, Admission, Permit, ServiceError};
use icae_core::slots::decode_slots;
use icae_core::store::SlotStore;
use icae_core::tokenizer::TextTokenizer;
use icae_core::{check_token_ids, FinishReason, InputError, Mode, SamplingParams};
use icae_proto::v1::decoder_server::Decoder;
use icae_proto::v1::{
    generate_request, generate_response, slot_ref, FinishReason as ProtoFinish, GenerateFinal,
    GenerateOnceResponse, GenerateRequest, GenerateResponse, InfoRequest, InfoResponse, Limits,
    Mode as ProtoMode, Timings, TokenDelta,
};
use tch::Tensor;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{debug, info_span, Instrument, Span};

use crate::worker::{Context, Deadline, Event, Finished, Job, Worker};
use crate::Config;

/// Tokens a prompt may have.
const MAX_PROMPT_TOKENS: usize = 4096;
/// max_new_tokens when a request leaves it 0 (capped by the server limit).
const DEFAULT_NEW_TOKENS: usize = 256;

pub struct DecoderService {
    store: Arc<SlotStore>,
    tokenizer: Arc<TextTokenizer>,
    worker: Worker,
    admission: Admission,
    max_input_tokens: usize,
    max_new_tokens: usize,
    max_spans: usize,
    limits: Limits,
}

/// A validated request, before its slots are fetched.
struct Validated {
    mode: Mode,
    prompt_ids: Option<Vec<u32>>,
    params: SamplingParams,
}

impl DecoderService {
    pub fn new(
        config: &Config,
        store: Arc<SlotStore>,
        tokenizer: Arc<TextTokenizer>,
        worker: Worker,
        admission: Admission,
    ) -> Self {
        DecoderService {
            store,
            tokenizer,
            worker,
            admission,
            max_input_tokens: config.common.max_input_tokens,
            max_new_tokens: config.common.max_new_tokens,
            max_spans: config.max_spans,
            limits: Limits {
                max_spans: config.max_spans as u32,
                ..common_limits(&config.common)
            },
        }
    }

    /// Check everything, fetch the slots, and hand the job to the scheduler.
    async fn start(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<(mpsc::UnboundedReceiver<Event>, Permit, f64), ServiceError> {
        let permit = self.admission.admit()?;
        let summary = self.worker.summary()?.clone();
        let deadline = deadline(request.metadata()).map(|d| Deadline {
            at: Instant::now() + d,
            seconds: d.as_secs_f64(),
        });
        let request = request.into_inner();
        let validated = self.validate(&request).await?;

        let fetch_started = Instant::now();
        let context = match request.context {
            Some(generate_request::Context::Slots(list)) => {
                if list.items.is_empty() || list.items.len() > self.max_spans {
                    return Err(InputError::BadParameter {
                        name: "slots",
                        value: format!("{} slot sets", list.items.len()),
                        expected: format!("must hold 1..={} slot sets", self.max_spans),
                    }
                    .into());
                }
                let mut spans = Vec::with_capacity(list.items.len());
                for (index, item) in list.items.into_iter().enumerate() {
                    spans.push(self.fetch(index, item.source, &summary.fingerprint).await?);
                }
                Context::Slots(spans)
            }
            Some(generate_request::Context::BaselineText(text)) => {
                let ids = self.tokenize(text).await?;
                check_token_ids(&ids, self.max_input_tokens, summary.vocab_size)?;
                Context::Baseline(ids)
            }
            None => {
                return Err(InputError::BadParameter {
                    name: "context",
                    value: "missing".into(),
                    expected: "set slots (keys or inline slots) or baseline_text".into(),
                }
                .into())
            }
        };
        let store_seconds = fetch_started.elapsed().as_secs_f64();
        let (events, rx) = mpsc::unbounded_channel();
        self.worker.submit(Job {
            context,
            mode: validated.mode,
            prompt_ids: validated.prompt_ids,
            params: validated.params,
            deadline,
            events,
            enqueued: Instant::now(),
        })?;
        Ok((rx, permit, store_seconds))
    }

    async fn validate(&self, request: &GenerateRequest) -> Result<Validated, ServiceError> {
        let mode = match ProtoMode::try_from(request.mode) {
            Ok(ProtoMode::Autoencode) => Mode::Autoencode,
            Ok(ProtoMode::Continue) => Mode::Continue,
            Ok(ProtoMode::Answer) => Mode::Answer,
            _ => {
                return Err(InputError::BadParameter {
                    name: "mode",
                    value: request.mode.to_string(),
                    expected: "must be MODE_AUTOENCODE (1), MODE_CONTINUE (2) or MODE_ANSWER (3)"
                        .into(),
                }
                .into())
            }
        };
        let sampling = request.sampling.clone().unwrap_or_default();
        let params = SamplingParams {
            max_new_tokens: match sampling.max_new_tokens {
                0 => DEFAULT_NEW_TOKENS.min(self.max_new_tokens),
                n => n as usize,
            },
            temperature: f64::from(sampling.temperature),
            top_k: sampling.top_k as usize,
            top_p: if sampling.top_p == 0.0 {
                1.0
            } else {
                f64::from(sampling.top_p)
            },
            seed: sampling.seed,
            stop: sampling.stop,
        };
        params.validate(self.max_new_tokens)?;
        let prompt_ids = if request.prompt.is_empty() {
            if mode == Mode::Answer {
                return Err(InputError::MissingPrompt.into());
            }
            None
        } else {
            let ids = self.tokenize(request.prompt.clone()).await?;
            if ids.len() > MAX_PROMPT_TOKENS {
                return Err(InputError::BadParameter {
                    name: "prompt",
                    value: format!("{} tokens", ids.len()),
                    expected: format!("must have at most {MAX_PROMPT_TOKENS} tokens"),
                }
                .into());
            }
            Some(ids)
        };
        Ok(Validated {
            mode,
            prompt_ids,
            params,
        })
    }

    async fn tokenize(&self, text: String) -> Result<Vec<u32>, ServiceError> {
        let tokenizer = self.tokenizer.clone();
        tokio::task::spawn_blocking(move || tokenizer.encode_fragment(&text))
            .await
            .map_err(|e| ServiceError::Internal(format!("tokenizer task: {e}")))?
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// One slot set: from Redis or inline, decoded and checked against our fingerprint.
    async fn fetch(
        &self,
        index: usize,
        source: Option<slot_ref::Source>,
        fingerprint: &str,
    ) -> Result<Tensor, ServiceError> {
        let (key, bytes) = match source {
            Some(slot_ref::Source::Key(key)) => {
                let bytes = self
                    .store
                    .get(&key)
                    .await?
                    .ok_or_else(|| ServiceError::NotFound { key: key.clone() })?;
                (key, bytes)
            }
            Some(slot_ref::Source::InlineSlots(bytes)) => {
                (format!("inline slot set {index}"), bytes)
            }
            None => {
                return Err(InputError::BadParameter {
                    name: "slots",
                    value: format!("item {index} is empty"),
                    expected: "each item needs a key or inline_slots".into(),
                }
                .into())
            }
        };
        let (slots, meta) = decode_slots(&bytes).map_err(|source| ServiceError::Corrupt {
            key: key.clone(),
            source,
        })?;
        if meta.fingerprint != fingerprint {
            return Err(ServiceError::WrongModel {
                key,
                found: meta.fingerprint,
                expected: fingerprint.to_string(),
            });
        }
        // Link this request's trace to the encoder request that made the slots.
        if let Some(encoder_trace) = &meta.traceparent {
            link_to(&Span::current(), encoder_trace);
        }
        debug!(key = %key, encoder_traceparent = meta.traceparent.as_deref().unwrap_or(""), "slots fetched");
        Ok(slots)
    }
}

fn proto_finish(reason: FinishReason) -> i32 {
    match reason {
        FinishReason::Eos => ProtoFinish::Eos as i32,
        FinishReason::Length => ProtoFinish::Length as i32,
        FinishReason::Stop => ProtoFinish::Stop as i32,
    }
}

fn timings(finished: &Finished, store_seconds: f64, started: Instant) -> Timings {
    Timings {
        queue_seconds: finished.queue_seconds,
        store_seconds,
        model_seconds: finished.model_seconds,
        time_to_first_token_seconds: finished.time_to_first_token_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    }
}

/// The response stream: scheduler events as messages. Dropping it (client cancelled)
/// closes the channel, and the scheduler frees the sequence at its next step.
pub struct EventStream {
    events: mpsc::UnboundedReceiver<Event>,
    store_seconds: f64,
    started: Instant,
    done: bool,
    _permit: Permit,
}

impl Stream for EventStream {
    type Item = Result<GenerateResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let event = match self.events.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(event) => event,
        };
        let item = match event {
            Some(Event::Token { token_id, text }) => Ok(GenerateResponse {
                event: Some(generate_response::Event::Delta(TokenDelta {
                    token_ids: token_id.into_iter().collect(),
                    text,
                })),
            }),
            Some(Event::Finished(finished)) => {
                self.done = true;
                metrics::histogram!("icae_request_duration_seconds", "service" => "decoder", "method" => "Generate")
                    .record(self.started.elapsed().as_secs_f64());
                Ok(GenerateResponse {
                    event: Some(generate_response::Event::Final(GenerateFinal {
                        finish_reason: proto_finish(finished.finish_reason),
                        prompt_positions: finished.prompt_positions as u32,
                        generated_tokens: finished.generated_tokens as u32,
                        timings: Some(timings(&finished, self.store_seconds, self.started)),
                    })),
                })
            }
            Some(Event::Failed(e)) => {
                self.done = true;
                Err(e.into())
            }
            None => {
                self.done = true;
                Err(
                    ServiceError::ModelUnavailable("the model thread dropped the request".into())
                        .into(),
                )
            }
        };
        Poll::Ready(Some(item))
    }
}

#[tonic::async_trait]
impl Decoder for DecoderService {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let started = Instant::now();
        let span = info_span!("generate");
        continue_trace(&span, request.metadata());
        let (events, permit, store_seconds) = self.start(request).instrument(span).await?;
        Ok(Response::new(EventStream {
            events,
            store_seconds,
            started,
            done: false,
            _permit: permit,
        }))
    }

    async fn generate_once(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateOnceResponse>, Status> {
        let started = Instant::now();
        let span = info_span!("generate_once");
        continue_trace(&span, request.metadata());
        let (mut events, _permit, store_seconds) = self.start(request).instrument(span).await?;
        let mut response = GenerateOnceResponse::default();
        while let Some(event) = events.recv().await {
            match event {
                Event::Token { token_id, text } => {
                    response.token_ids.extend(token_id);
                    response.text.push_str(&text);
                }
                Event::Finished(finished) => {
                    response.finish_reason = proto_finish(finished.finish_reason);
                    response.prompt_positions = finished.prompt_positions as u32;
                    response.timings = Some(timings(&finished, store_seconds, started));
                    metrics::histogram!("icae_request_duration_seconds", "service" => "decoder", "method" => "GenerateOnce")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(Response::new(response));
                }
                Event::Failed(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::ModelUnavailable("the model thread dropped the request".into()).into())
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let summary = self.worker.summary()?;
        Ok(Response::new(info_response(
            icae_proto::DECODER_SERVICE,
            summary,
            self.limits,
            &self.worker,
        )))
    }
}
