//! The generation scheduler: one OS thread owns the backend and steps every active sequence
//! together (one batched decoding step per iteration), admitting new requests between
//! steps and dropping sequences whose client went away or whose deadline passed.
//!
//! New requests are prefilled in chunks: each iteration runs at most
//! `max_prefill_tokens_per_step` prompt positions (of one or several new requests, oldest
//! first) before the decoding step, so a long prompt delays the running streams' next
//! token by one chunk, not by its whole prefill.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use icae_core::{FinishReason, ModelSummary};
use icae_serving::metrics as names;
use icae_serving::model_threads::spawn_model_thread;
use icae_serving::{
    JobQueue, LoadFailure, ModelStartup, ModelState, QueuePlace, Queued, Readiness, ServiceError,
};
use tokio::sync::mpsc;
use tracing::{debug_span, error, info_span, Span};

use crate::backend::DecodeBackend;
use crate::request::GenerationRequest;

/// The client's deadline: when it passes, and how long it was.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub seconds: f64,
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

struct Job {
    request: GenerationRequest,
    deadline: Option<Deadline>,
    events: mpsc::UnboundedSender<Event>,
    enqueued: Instant,
    /// The request's span: prefill runs in it, decoding steps follow from it.
    span: Span,
}

/// How the model thread divides its iterations.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    /// Most sequences prefilling or decoding at once.
    pub max_batch_sequences: usize,
    /// Most prompt positions prefilled per iteration, over all new requests.
    pub max_prefill_tokens_per_step: usize,
}

/// The pipeline's handle on the scheduler thread.
#[derive(Clone)]
pub struct Scheduler {
    queue: JobQueue<Job>,
}

impl Scheduler {
    /// Start the thread: it runs `load`, then generates until every handle is dropped and
    /// every sequence has finished. A load error reaches the server through `LoadFailure`.
    pub fn spawn<B, L>(
        queue_capacity: usize,
        limits: StepLimits,
        readiness: Readiness,
        load: L,
    ) -> (Scheduler, LoadFailure)
    where
        B: DecodeBackend + 'static,
        L: FnOnce() -> Result<(B, ModelSummary), String> + Send + 'static,
    {
        let (queue, rx) = JobQueue::new("decoder", queue_capacity);
        let (startup, load_failure) = ModelStartup::new(queue.state.clone(), readiness);
        let state = queue.state.clone();
        spawn_model_thread("icae-decoder-model", move || {
            if let Some(backend) = startup.load(load) {
                Steps {
                    backend: &backend,
                    state: &state,
                    limits,
                    prefilling: VecDeque::new(),
                    active: Vec::new(),
                }
                .run(rx);
            }
        });
        (Scheduler { queue }, load_failure)
    }

    pub fn summary(&self) -> Result<&ModelSummary, ServiceError> {
        self.queue.summary()
    }

    pub fn state(&self) -> &ModelState {
        &self.queue.state
    }

    /// Queue `request`; its tokens arrive on the returned channel, which ends with
    /// `Finished` or `Failed`. Dropping the receiver cancels the generation; dropping the
    /// queue place while the request waits takes it out of the queue count.
    pub fn generate(
        &self,
        request: GenerationRequest,
        deadline: Option<Deadline>,
    ) -> Result<(mpsc::UnboundedReceiver<Event>, QueuePlace), ServiceError> {
        let (events, rx) = mpsc::unbounded_channel();
        let place = self.queue.submit(Job {
            request,
            deadline,
            events,
            enqueued: Instant::now(),
            span: Span::current(),
        })?;
        Ok((rx, place))
    }
}

struct Active<S> {
    sequence: S,
    events: mpsc::UnboundedSender<Event>,
    deadline: Option<Deadline>,
    enqueued: Instant,
    started: Instant,
    first_token: Option<f64>,
    span: Span,
}

/// The scheduler's loop on the model thread.
struct Steps<'a, B: DecodeBackend> {
    backend: &'a B,
    state: &'a ModelState,
    limits: StepLimits,
    /// Requests whose prompt is not fully in the cache yet, oldest first.
    prefilling: VecDeque<Active<B::Sequence>>,
    /// Sequences that choose a token at every iteration.
    active: Vec<Active<B::Sequence>>,
}

impl<B: DecodeBackend> Steps<'_, B> {
    fn run(mut self, mut rx: mpsc::Receiver<Queued<Job>>) {
        let _guard = tch::no_grad_guard();
        loop {
            if self.in_flight() == 0 {
                match rx.blocking_recv() {
                    Some(job) => self.admit(job.take()),
                    None => return,
                }
            }
            while self.in_flight() < self.limits.max_batch_sequences {
                match rx.try_recv() {
                    Ok(job) => self.admit(job.take()),
                    Err(_) => break,
                }
            }
            self.drop_abandoned();
            self.prefill();
            self.step();
            self.state.set_active(self.in_flight());
        }
    }

    /// Sequences holding a cache: prefilling or decoding.
    fn in_flight(&self) -> usize {
        self.prefilling.len() + self.active.len()
    }

    /// Build a new request's input; its prompt waits for `prefill`.
    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            return;
        }
        let started = Instant::now();
        metrics::histogram!(names::QUEUE_SECONDS, "component" => "decoder")
            .record(job.enqueued.elapsed().as_secs_f64());
        let backend = self.backend;
        let result = job.span.in_scope(|| {
            catch_unwind(AssertUnwindSafe(|| {
                backend.start(&job.request).map_err(ServiceError::from)
            }))
            .unwrap_or_else(|_| Err(panicked("start")))
        });
        match result {
            Ok(sequence) => {
                self.prefilling.push_back(Active {
                    sequence,
                    events: job.events,
                    deadline: job.deadline,
                    enqueued: job.enqueued,
                    started,
                    first_token: None,
                    span: job.span,
                });
                self.state.set_active(self.in_flight());
            }
            Err(e) => {
                let _ = job.events.send(Event::Failed(e));
            }
        }
    }

    /// Run up to `max_prefill_tokens_per_step` prompt positions, oldest request first (a
    /// request that finishes leaves the rest of the budget to the next); requests whose
    /// prompt is then fully cached start decoding.
    fn prefill(&mut self) {
        let backend = self.backend;
        let mut budget = self.limits.max_prefill_tokens_per_step;
        while budget > 0 {
            let Some(front) = self.prefilling.front_mut() else {
                return;
            };
            let result = if backend.prefill_remaining(&front.sequence) == 0 {
                Ok(0)
            } else {
                let span = info_span!(parent: &front.span, "prefill", max_positions = budget);
                span.in_scope(|| {
                    catch_unwind(AssertUnwindSafe(|| {
                        backend
                            .prefill_chunk(&mut front.sequence, budget)
                            .map_err(ServiceError::from)
                    }))
                    .unwrap_or_else(|_| Err(panicked("prefill")))
                })
            };
            match result {
                Ok(ran) if ran > 0 || backend.prefill_remaining(&front.sequence) == 0 => {
                    budget = budget.saturating_sub(ran);
                    if backend.prefill_remaining(&front.sequence) == 0 {
                        if let Some(done) = self.prefilling.pop_front() {
                            self.active.push(done);
                        }
                    }
                }
                // A chunk that makes no progress would spin forever: fail the request.
                Ok(_) => self.fail_front(ServiceError::Internal(
                    "the prefill made no progress".into(),
                )),
                Err(e) => self.fail_front(e),
            }
        }
    }

    fn fail_front(&mut self, error: ServiceError) {
        if let Some(failed) = self.prefilling.pop_front() {
            let _ = failed.events.send(Event::Failed(error));
        }
    }

    /// Free the sequences (decoding or still prefilling: between two chunks) whose client
    /// is gone (cancelled or dropped stream) or whose deadline passed.
    fn drop_abandoned(&mut self) {
        let now = Instant::now();
        let keep = |a: &Active<B::Sequence>| {
            if a.events.is_closed() {
                metrics::counter!(names::GENERATIONS_CANCELLED_TOTAL, "component" => "decoder")
                    .increment(1);
                return false;
            }
            if let Some(deadline) = a.deadline.filter(|d| now >= d.at) {
                let _ = a.events.send(Event::Failed(ServiceError::DeadlineExceeded(
                    deadline.seconds,
                )));
                return false;
            }
            true
        };
        self.active.retain(keep);
        self.prefilling.retain(keep);
    }

    /// Choose one token for every active sequence, report it, then run the survivors'
    /// tokens through the model as one batch.
    fn step(&mut self) {
        let backend = self.backend;
        let mut keep = Vec::with_capacity(self.active.len());
        for a in &mut self.active {
            let step = match backend.choose(&mut a.sequence) {
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
                metrics::histogram!(names::TIME_TO_FIRST_TOKEN).record(elapsed);
            }
            let token_id = (step.finished != Some(FinishReason::Eos)).then_some(step.token_id);
            let _ = a.events.send(Event::Token {
                token_id,
                text: step.text_delta,
            });
            if let Some(finish_reason) = step.finished {
                let generated = backend.generated_len(&a.sequence);
                metrics::counter!(names::GENERATED_TOKENS_TOTAL).increment(generated as u64);
                let _ = a.events.send(Event::Finished(Finished {
                    finish_reason,
                    prompt_positions: backend.prompt_len(&a.sequence),
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
        self.state.set_active(self.in_flight());
        if self.active.is_empty() {
            return;
        }
        metrics::histogram!(names::BATCH_SIZE, "component" => "decoder")
            .record(self.active.len() as f64);
        let span = debug_span!(parent: None, "decode_step", sequences = self.active.len());
        for a in &self.active {
            span.follows_from(&a.span);
        }
        let step_started = Instant::now();
        let mut sequences: Vec<&mut B::Sequence> =
            self.active.iter_mut().map(|a| &mut a.sequence).collect();
        let result =
            span.in_scope(|| catch_unwind(AssertUnwindSafe(|| backend.decode(&mut sequences))));
        metrics::histogram!(names::INTER_TOKEN).record(step_started.elapsed().as_secs_f64());
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

/// A model failure the request sees as INTERNAL (the panic itself is logged here).
fn panicked(what: &str) -> ServiceError {
    error!("{what} panicked");
    ServiceError::Internal("the model failed on this request".into())
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
