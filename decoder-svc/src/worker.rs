//! The generation scheduler: one OS thread owns the model and steps every active sequence
//! together (one batched decoding step per iteration), admitting new requests between
//! steps and dropping sequences whose client went away.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use icae_core::generate::{decode_batch, Sequence};
use icae_core::service::runtime::{CommonArgs, Readiness};
use icae_core::service::{ModelState, ModelThread, ServiceError};
use icae_core::{FinishReason, IcaeError, IcaeModel, Mode, SamplingParams};
use tch::Tensor;
use tokio::sync::mpsc;
use tracing::error;

/// What the decoder reads: slot sets (in order) or, for the baseline, the document's tokens.
pub enum Context {
    Slots(Vec<Tensor>),
    Baseline(Vec<u32>),
}

/// The client's deadline: when it passes, and how long it was.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub seconds: f64,
}

pub struct Job {
    pub context: Context,
    pub mode: Mode,
    pub prompt_ids: Option<Vec<u32>>,
    pub params: SamplingParams,
    pub deadline: Option<Deadline>,
    pub events: mpsc::UnboundedSender<Event>,
    pub enqueued: Instant,
}

pub struct Finished {
    pub finish_reason: FinishReason,
    pub prompt_positions: usize,
    pub generated_tokens: usize,
    pub queue_seconds: f64,
    pub time_to_first_token_seconds: f64,
    pub model_seconds: f64,
}

pub enum Event {
    /// A generated token (None for the end-of-sequence token) and the text it completed.
    Token {
        token_id: Option<u32>,
        text: String,
    },
    Finished(Finished),
    Failed(ServiceError),
}

pub type Worker = ModelThread<Job>;

/// Start the generation scheduler on the model thread.
pub fn spawn(common: &CommonArgs, max_batch: usize, readiness: Readiness) -> Worker {
    ModelThread::spawn("decoder", common, readiness, move |model, rx, state| {
        Scheduler {
            model: &model,
            state: &state,
            max_batch,
            active: Vec::new(),
        }
        .run(rx)
    })
}

struct Active {
    sequence: Sequence,
    events: mpsc::UnboundedSender<Event>,
    deadline: Option<Deadline>,
    enqueued: Instant,
    started: Instant,
    first_token: Option<f64>,
}

struct Scheduler<'a> {
    model: &'a IcaeModel,
    state: &'a ModelState,
    max_batch: usize,
    active: Vec<Active>,
}

impl Scheduler<'_> {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let _guard = tch::no_grad_guard();
        loop {
            if self.active.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => self.admit(job),
                    None => return,
                }
            }
            while self.active.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            self.drop_abandoned();
            self.step();
            self.state.set_active(self.active.len());
        }
    }

    /// Prefill a new request (its first logits come out of the prefill).
    fn admit(&mut self, job: Job) {
        self.state.dequeued(1);
        if job.events.is_closed() {
            return;
        }
        let started = Instant::now();
        metrics::histogram!("icae_queue_seconds", "service" => "decoder")
            .record(job.enqueued.elapsed().as_secs_f64());
        let model = self.model;
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<Sequence, IcaeError> {
            let prompt = job.prompt_ids.as_deref();
            let embeds = match &job.context {
                Context::Slots(spans) => model.decoder_input(spans, job.mode, prompt)?,
                Context::Baseline(ids) => model.baseline_input(ids, job.mode, prompt)?,
            };
            Sequence::start(&model.base, &embeds, job.params.clone(), model.eos_ids())
        }));
        match result {
            Ok(Ok(sequence)) => {
                self.active.push(Active {
                    sequence,
                    events: job.events,
                    deadline: job.deadline,
                    enqueued: job.enqueued,
                    started,
                    first_token: None,
                });
                self.state.set_active(self.active.len());
            }
            Ok(Err(e)) => {
                let _ = job.events.send(Event::Failed(e.into()));
            }
            Err(_) => {
                error!("prefill panicked");
                let _ = job.events.send(Event::Failed(ServiceError::Internal(
                    "the model failed on this request".into(),
                )));
            }
        }
    }

    /// Free the sequences whose client is gone (cancelled or dropped stream) or whose
    /// deadline passed.
    fn drop_abandoned(&mut self) {
        let now = Instant::now();
        self.active.retain(|a| {
            if a.events.is_closed() {
                metrics::counter!("icae_cancelled_total", "service" => "decoder").increment(1);
                return false;
            }
            if let Some(deadline) = a.deadline.filter(|d| now >= d.at) {
                let _ = a.events.send(Event::Failed(ServiceError::DeadlineExceeded(
                    deadline.seconds,
                )));
                return false;
            }
            true
        });
    }

    /// Sample one token for every active sequence, report it, then run the survivors'
    /// tokens through the model as one batch.
    fn step(&mut self) {
        let tokenizer = &self.model.tokenizer;
        let mut keep = Vec::with_capacity(self.active.len());
        for a in &mut self.active {
            let step = match a.sequence.choose(tokenizer) {
                Ok(step) => step,
                Err(e) => {
                    let _ = a.events.send(Event::Failed(e.into()));
                    keep.push(false);
                    continue;
                }
            };
            let elapsed = a.enqueued.elapsed().as_secs_f64();
            if a.first_token.is_none() {
                a.first_token = Some(elapsed);
                metrics::histogram!("icae_time_to_first_token_seconds").record(elapsed);
            }
            let token_id = (step.finished != Some(FinishReason::Eos)).then_some(step.token_id);
            let _ = a.events.send(Event::Token {
                token_id,
                text: step.text_delta,
            });
            if let Some(finish_reason) = step.finished {
                let generated = a.sequence.generated().len();
                metrics::counter!("icae_generated_tokens_total").increment(generated as u64);
                let _ = a.events.send(Event::Finished(Finished {
                    finish_reason,
                    prompt_positions: a.sequence.prompt_len(),
                    generated_tokens: generated,
                    queue_seconds: a.started.duration_since(a.enqueued).as_secs_f64(),
                    time_to_first_token_seconds: a.first_token.unwrap_or(elapsed),
                    model_seconds: a.started.elapsed().as_secs_f64(),
                }));
            }
            keep.push(step.finished.is_none());
        }
        let mut keep = keep.into_iter();
        self.active.retain(|_| keep.next().unwrap_or(false));
        self.state.set_active(self.active.len());
        if self.active.is_empty() {
            return;
        }
        metrics::histogram!("icae_batch_size", "service" => "decoder")
            .record(self.active.len() as f64);
        let step_started = Instant::now();
        let model = self.model;
        let mut sequences: Vec<&mut Sequence> =
            self.active.iter_mut().map(|a| &mut a.sequence).collect();
        let result = catch_unwind(AssertUnwindSafe(|| {
            decode_batch(&model.base, &mut sequences)
        }));
        metrics::histogram!("icae_inter_token_seconds")
            .record(step_started.elapsed().as_secs_f64());
        if !matches!(result, Ok(Ok(()))) {
            error!("a decoding step failed; failing its sequences");
            for a in self.active.drain(..) {
                let _ = a.events.send(Event::Failed(ServiceError::Internal(
                    "the model failed while decoding".into(),
                )));
            }
        }
    }
}
