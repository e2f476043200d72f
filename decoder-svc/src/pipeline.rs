//! The generate pipeline in domain types: validate → tokenize the prompt → fetch and check
//! the slots (or tokenize the baseline text) → scheduler. The gRPC handler only converts to
//! and from these types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use icae_core::slots::{decode_slots, SlotError};
use icae_core::tokenizer::TextTokenizer;
use icae_core::{check_token_ids, InputError, Mode, ModelSummary, SamplingParams};
use icae_serving::store::{SlotKey, SlotStore};
use icae_serving::telemetry::link_to;
use icae_serving::{check_text_bytes, Limits, ServiceError, Tenant};
use tch::Tensor;
use tokio::sync::mpsc;
use tracing::{debug, Span};

use crate::scheduler::{ContextSource, Deadline, Event, GenerationRequest, Scheduler};

/// One slot set as the client named it.
pub enum SlotSource {
    Key(String),
    Inline(Vec<u8>),
    /// Neither a key nor inline slots.
    Missing,
}

/// What to generate from, as the client sent it.
pub enum ContextInput {
    Slots(Vec<SlotSource>),
    BaselineText(String),
    Missing,
}

/// Sampling as the client sent it: 0 means "the default" for max_new_tokens and top_p.
#[derive(Default)]
pub struct SamplingInput {
    pub max_new_tokens: u32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u64,
    pub stop: Vec<String>,
}

pub struct GenerateInput {
    pub mode: Mode,
    pub prompt: String,
    pub sampling: SamplingInput,
    pub context: ContextInput,
    pub deadline: Option<Duration>,
    /// The authenticated caller: it reads only its own tenant's keys.
    pub tenant: Option<Tenant>,
}

/// A generation handed to the scheduler: its events, and the time spent fetching slots.
pub struct Started {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub store_seconds: f64,
}

pub struct GeneratePipeline {
    pub store: Arc<SlotStore>,
    pub tokenizer: Arc<TextTokenizer>,
    pub scheduler: Scheduler,
    pub limits: Limits,
}

impl GeneratePipeline {
    /// Check everything, fetch the slots, and hand the generation to the scheduler.
    pub async fn start(&self, input: GenerateInput) -> Result<Started, ServiceError> {
        let summary = self.scheduler.summary()?.clone();
        let deadline = input.deadline.map(|d| Deadline {
            at: Instant::now() + d,
            seconds: d.as_secs_f64(),
        });
        let params = self.sampling(input.sampling)?;
        let prompt_ids = self.prompt(input.mode, input.prompt).await?;

        let fetch_started = Instant::now();
        let context = match input.context {
            ContextInput::Slots(sources) => {
                let max = self.limits.max_slot_sets;
                if sources.is_empty() || sources.len() > max {
                    return Err(InputError::BadParameter {
                        name: "slots",
                        value: format!("{} slot sets", sources.len()),
                        expected: format!("must hold 1..={max} slot sets"),
                    }
                    .into());
                }
                let mut slot_sets = Vec::with_capacity(sources.len());
                for (index, source) in sources.into_iter().enumerate() {
                    let tenant = input.tenant.as_ref();
                    slot_sets.push(self.fetch(index, source, &summary, tenant).await?);
                }
                ContextSource::Slots(slot_sets)
            }
            ContextInput::BaselineText(text) => {
                check_text_bytes("baseline_text", &text, self.limits.max_input_bytes())?;
                let ids = self.tokenize(text).await?;
                check_token_ids(&ids, self.limits.max_input_tokens, summary.vocab_size)?;
                ContextSource::Baseline(ids)
            }
            ContextInput::Missing => {
                return Err(InputError::BadParameter {
                    name: "context",
                    value: "missing".into(),
                    expected: "set slots (keys or inline slots) or baseline_text".into(),
                }
                .into())
            }
        };
        let store_seconds = fetch_started.elapsed().as_secs_f64();
        let request = GenerationRequest {
            context,
            mode: input.mode,
            prompt_ids,
            params,
        };
        let events = self.scheduler.generate(request, deadline)?;
        Ok(Started {
            events,
            store_seconds,
        })
    }

    fn sampling(&self, sampling: SamplingInput) -> Result<SamplingParams, ServiceError> {
        let params = SamplingParams {
            max_new_tokens: match sampling.max_new_tokens {
                0 => self.limits.default_new_tokens,
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
        params.validate(self.limits.max_new_tokens)?;
        Ok(params)
    }

    /// The prompt's token ids (None when there is no prompt; ANSWER needs one).
    async fn prompt(&self, mode: Mode, prompt: String) -> Result<Option<Vec<u32>>, ServiceError> {
        // A question of only whitespace is no question.
        if mode == Mode::Answer && prompt.trim().is_empty() {
            return Err(InputError::MissingPrompt.into());
        }
        if prompt.is_empty() {
            return Ok(None);
        }
        check_text_bytes("prompt", &prompt, self.limits.max_prompt_bytes())?;
        let ids = self.tokenize(prompt).await?;
        let max = self.limits.max_prompt_tokens;
        if ids.len() > max {
            return Err(InputError::BadParameter {
                name: "prompt",
                value: format!("{} tokens", ids.len()),
                expected: format!("must have at most {max} tokens"),
            }
            .into());
        }
        Ok(Some(ids))
    }

    async fn tokenize(&self, text: String) -> Result<Vec<u32>, ServiceError> {
        let tokenizer = self.tokenizer.clone();
        tokio::task::spawn_blocking(move || tokenizer.encode_fragment(&text))
            .await
            .map_err(|e| ServiceError::Internal(format!("tokenizer task: {e}")))?
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// One slot set: from Redis (only keys of our schema, of the caller's tenant) or
    /// inline, decoded and checked against our fingerprint and width. Stored data that is
    /// unusable is DATA_LOSS; inline data that is unusable is the client's INVALID_ARGUMENT.
    async fn fetch(
        &self,
        index: usize,
        source: SlotSource,
        summary: &ModelSummary,
        tenant: Option<&Tenant>,
    ) -> Result<Tensor, ServiceError> {
        let fingerprint = &summary.fingerprint;
        let wrong_model = |key: String, found: String| ServiceError::WrongModel {
            key,
            found,
            expected: fingerprint.clone(),
        };
        let (slots, meta, key) = match source {
            SlotSource::Key(raw) => {
                let key = SlotKey::parse(&raw, tenant)?;
                // The key names the model that made it: no need to read another model's.
                if &key.fingerprint != fingerprint {
                    return Err(wrong_model(key.key, key.fingerprint));
                }
                let value =
                    self.store
                        .get(&key.key)
                        .await?
                        .ok_or_else(|| ServiceError::NotFound {
                            key: key.key.clone(),
                        })?;
                let corrupt = |source| ServiceError::Corrupt {
                    key: key.key.clone(),
                    source,
                };
                let (slots, meta) = decode_slots(&value).map_err(corrupt)?;
                check_width(&slots, summary.hidden_size).map_err(corrupt)?;
                (slots, meta, key.key)
            }
            SlotSource::Inline(value) => {
                let invalid = |source| ServiceError::BadInlineSlots { index, source };
                let (slots, meta) = decode_slots(&value).map_err(invalid)?;
                check_width(&slots, summary.hidden_size).map_err(invalid)?;
                (slots, meta, format!("inline slot set {index}"))
            }
            SlotSource::Missing => {
                return Err(InputError::BadParameter {
                    name: "slots",
                    value: format!("item {index} is empty"),
                    expected: "each item needs a key or inline_slots".into(),
                }
                .into())
            }
        };
        if &meta.fingerprint != fingerprint {
            return Err(wrong_model(key, meta.fingerprint));
        }
        // Link this request's trace to the encoder request that made the slots.
        if let Some(encoder_trace) = &meta.traceparent {
            link_to(&Span::current(), encoder_trace);
        }
        debug!(key = %key, encoder_traceparent = meta.traceparent.as_deref().unwrap_or(""), "slots fetched");
        Ok(slots)
    }
}

/// Slots are `[n, hidden]` with this model's hidden size.
fn check_width(slots: &Tensor, hidden: usize) -> Result<(), SlotError> {
    let shape: Vec<usize> = slots.size().iter().map(|&d| d as usize).collect();
    if shape.get(1) != Some(&hidden) {
        return Err(SlotError::BadShape(shape));
    }
    Ok(())
}
