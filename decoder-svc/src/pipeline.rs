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
                let tenant = input.tenant.as_ref();
                ContextSource::Slots(self.fetch_all(sources, &summary, tenant).await?)
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

    /// Every slot set, in order: from Redis (only keys of our schema, of the caller's
    /// tenant) or inline, decoded and checked against our fingerprint and width. Stored data
    /// that is unusable is DATA_LOSS; inline data that is unusable is the client's
    /// INVALID_ARGUMENT.
    ///
    /// All keys are read in one round trip, yet the error is the one the first failing slot
    /// set gives, as if they were read one by one: the sources are checked in order up to
    /// the first one that is unusable without reading anything, only the keys before it are
    /// read, and a failed read is reported at the first key.
    async fn fetch_all(
        &self,
        sources: Vec<SlotSource>,
        summary: &ModelSummary,
        tenant: Option<&Tenant>,
    ) -> Result<Vec<Tensor>, ServiceError> {
        let mut plans = Vec::with_capacity(sources.len());
        for (index, source) in sources.into_iter().enumerate() {
            let plan = plan(index, source, &summary.fingerprint, tenant);
            let refused = plan.is_err();
            plans.push(plan);
            if refused {
                break;
            }
        }
        let keys: Vec<String> = plans
            .iter()
            .filter_map(|plan| match plan {
                Ok(Planned::Key(key)) => Some(key.key.clone()),
                _ => None,
            })
            .collect();
        // No keys (inline slots only): no round trip at all.
        let mut values = self.store.get_many(&keys).await.map(Vec::into_iter);
        let mut slot_sets = Vec::with_capacity(plans.len());
        for (index, plan) in plans.into_iter().enumerate() {
            let (value, key) = match plan? {
                Planned::Key(key) => {
                    let value = match &mut values {
                        Ok(values) => values.next().ok_or_else(|| {
                            ServiceError::Internal("Redis returned fewer replies than keys".into())
                        })??,
                        Err(e) => return Err(e.clone().into()),
                    };
                    let value = value.ok_or_else(|| ServiceError::NotFound {
                        key: key.key.clone(),
                    })?;
                    (Fetched::Stored(value), key.key)
                }
                Planned::Inline(value) => {
                    (Fetched::Inline(value), format!("inline slot set {index}"))
                }
            };
            slot_sets.push(check(index, value, key, summary)?);
        }
        Ok(slot_sets)
    }
}

/// A slot set checked as far as possible without reading Redis.
enum Planned {
    Key(SlotKey),
    Inline(Vec<u8>),
}

/// Where a slot value came from: it decides whose fault an unusable value is.
enum Fetched {
    Stored(Vec<u8>),
    Inline(Vec<u8>),
}

/// Check what can be checked before reading: the key's schema, tenant and model.
fn plan(
    index: usize,
    source: SlotSource,
    fingerprint: &str,
    tenant: Option<&Tenant>,
) -> Result<Planned, ServiceError> {
    match source {
        SlotSource::Key(raw) => {
            let key = SlotKey::parse(&raw, tenant)?;
            // The key names the model that made it: no need to read another model's.
            if key.fingerprint != fingerprint {
                return Err(ServiceError::WrongModel {
                    key: key.key,
                    found: key.fingerprint,
                    expected: fingerprint.to_string(),
                });
            }
            Ok(Planned::Key(key))
        }
        SlotSource::Inline(value) => Ok(Planned::Inline(value)),
        SlotSource::Missing => Err(InputError::BadParameter {
            name: "slots",
            value: format!("item {index} is empty"),
            expected: "each item needs a key or inline_slots".into(),
        }
        .into()),
    }
}

/// Decode one slot set and check it against our fingerprint and width; `key` names it in
/// errors.
fn check(
    index: usize,
    value: Fetched,
    key: String,
    summary: &ModelSummary,
) -> Result<Tensor, ServiceError> {
    let (slots, meta) = match value {
        Fetched::Stored(value) => {
            let corrupt = |source| ServiceError::Corrupt {
                key: key.clone(),
                source,
            };
            let (slots, meta) = decode_slots(&value).map_err(corrupt)?;
            check_width(&slots, summary.hidden_size).map_err(corrupt)?;
            (slots, meta)
        }
        Fetched::Inline(value) => {
            let invalid = |source| ServiceError::BadInlineSlots { index, source };
            let (slots, meta) = decode_slots(&value).map_err(invalid)?;
            check_width(&slots, summary.hidden_size).map_err(invalid)?;
            (slots, meta)
        }
    };
    if meta.fingerprint != summary.fingerprint {
        return Err(ServiceError::WrongModel {
            key,
            found: meta.fingerprint,
            expected: summary.fingerprint.clone(),
        });
    }
    // Link this request's trace to the encoder request that made the slots.
    if let Some(encoder_trace) = &meta.traceparent {
        link_to(&Span::current(), encoder_trace);
    }
    debug!(key = %key, encoder_traceparent = meta.traceparent.as_deref().unwrap_or(""), "slots fetched");
    Ok(slots)
}

/// Slots are `[n, hidden]` with this model's hidden size.
fn check_width(slots: &Tensor, hidden: usize) -> Result<(), SlotError> {
    let shape: Vec<usize> = slots.size().iter().map(|&d| d as usize).collect();
    if shape.get(1) != Some(&hidden) {
        return Err(SlotError::BadShape(shape));
    }
    Ok(())
}
