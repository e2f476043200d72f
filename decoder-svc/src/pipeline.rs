//! The generate pipeline in domain types: validate → tokenize the prompt → fetch and check
//! the slots (or tokenize the baseline text) → scheduler. The gRPC handler only converts to
//! and from these types.

use std::sync::Arc;
use std::time::Instant;

use icae_core::tokenizer::TextTokenizer;
use icae_core::{check_token_ids, InputError, Mode, SamplingParams};
use icae_serving::{
    check_text_bytes, is_blank, DecoderLimits, QueuePlace, RequestDeadline, ServiceError, Tenant,
};
use tokio::sync::mpsc;

use crate::request::{ContextSource, GenerationRequest};
use crate::scheduler::{Deadline, Event, Scheduler};
use crate::slot_reads::{SlotReader, SlotSource};

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
    pub deadline: Option<RequestDeadline>,
    /// The authenticated caller: it reads only its own tenant's keys.
    pub tenant: Option<Tenant>,
}

/// A generation handed to the scheduler: its events, its place in the queue (held while
/// it waits there), and the time spent fetching slots.
pub struct Started {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub queue_place: QueuePlace,
    pub store_seconds: f64,
}

pub struct GeneratePipeline {
    pub slot_reader: SlotReader,
    pub tokenizer: Arc<TextTokenizer>,
    pub scheduler: Scheduler,
    pub limits: DecoderLimits,
}

impl GeneratePipeline {
    /// Check everything, fetch the slots, and hand the generation to the scheduler.
    pub async fn start(&self, input: GenerateInput) -> Result<Started, ServiceError> {
        let summary = self.scheduler.summary()?.clone();
        let deadline = input.deadline.map(|d| Deadline {
            at: d.at,
            seconds: d.seconds,
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
                let others = prompt_ids.as_ref().map_or(0, Vec::len) + params.max_new_tokens;
                let reader = &self.slot_reader;
                ContextSource::Slots(reader.read(sources, &summary, tenant, others).await?)
            }
            ContextInput::BaselineText(text) => {
                check_text_bytes("baseline_text", &text, self.limits.shared.max_input_bytes())?;
                let ids = self.tokenize(text).await?;
                check_token_ids(
                    &ids,
                    self.limits.shared.max_input_tokens,
                    summary.vocab_size,
                )?;
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
        let (events, queue_place) = self.scheduler.generate(request, deadline)?;
        Ok(Started {
            events,
            queue_place,
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
        // A question of only whitespace (or invisible characters) is no question.
        if mode == Mode::Answer && is_blank(&prompt) {
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
}
