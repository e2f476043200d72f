//! The batcher: one OS thread owns the backend (libtorch tensors never cross threads while
//! in use) and compresses the queued documents in batches of up to `max_batch_documents`
//! and `max_batch_tokens` (a larger job runs alone), skipping the jobs whose client has
//! gone — before the batch starts and, within it, between model calls.
//!
//! Jobs that refine (or score) their slots go on after their compression as refinements,
//! one optimiser step at a time, taking turns (refining.rs). New jobs come first: between
//! two refinement steps the thread compresses whatever has been queued, so a plain Compress
//! waits for at most one step of a refinement, never a whole one.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use icae_core::slots::SlotFidelity;
use icae_core::{Compressed, ModelSummary, RefineOptions, ToCompress};
use icae_serving::metrics as names;
use icae_serving::model_threads::spawn_model_thread;
use icae_serving::{
    JobQueue, LoadFailure, ModelStartup, ModelState, Queued, Readiness, ServiceError,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info_span, Span};

use crate::backend::CompressBackend;
use crate::compressing::{CompressingJob, Progress, SEGMENTS_PER_CALL};
use crate::job::{CompressedBatch, Job};
use crate::refining::{RefiningJob, Stepped};

/// How much one batch may hold.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_documents: usize,
    pub max_tokens: usize,
}

/// The pipeline's handle on the batcher thread.
#[derive(Clone)]
pub struct Batcher {
    queue: JobQueue<Job>,
}

impl Batcher {
    /// Start the thread: it runs `load`, then compresses batches until every handle is
    /// dropped. A load error reaches the server through the returned `LoadFailure`.
    pub fn spawn<B, L>(
        queue_capacity: usize,
        limits: BatchLimits,
        readiness: Readiness,
        load: L,
    ) -> (Batcher, LoadFailure)
    where
        B: CompressBackend + 'static,
        L: FnOnce() -> Result<(B, ModelSummary), String> + Send + 'static,
    {
        let (queue, rx) = JobQueue::new("encoder", queue_capacity);
        let (startup, load_failure) = ModelStartup::new(queue.state.clone(), readiness);
        let state = queue.state.clone();
        spawn_model_thread("icae-encoder-model", move || {
            if let Some(backend) = startup.load(load) {
                run_batches(&backend, rx, &state, limits);
            }
        });
        (Batcher { queue }, load_failure)
    }

    pub fn summary(&self) -> Result<&ModelSummary, ServiceError> {
        self.queue.summary()
    }

    pub fn state(&self) -> &ModelState {
        &self.queue.state
    }

    /// Compress `docs` (token ids) with `slots_per_segment` slots per segment in the next
    /// batch, then refine or score them when `refine` says so; the caller's span is carried
    /// along.
    pub async fn compress(
        &self,
        docs: Vec<Vec<u32>>,
        slots_per_segment: usize,
        refine: Option<RefineOptions>,
    ) -> Result<CompressedBatch, ServiceError> {
        let (reply, rx) = oneshot::channel();
        // Held while this request waits: if it is dropped (the client went away), the job
        // leaves the queue count at once.
        let _place = self.queue.submit(Job {
            docs,
            slots_per_segment,
            refine,
            reply,
            enqueued: Instant::now(),
            span: Span::current(),
        })?;
        rx.await.map_err(|_| {
            ServiceError::ModelUnavailable("the model thread dropped the request".into())
        })?
    }
}

fn run_batches<B: CompressBackend>(
    backend: &B,
    mut rx: mpsc::Receiver<Queued<Job>>,
    state: &Arc<ModelState>,
    limits: BatchLimits,
) {
    // A job that did not fit the previous batch starts the next one.
    let mut held: Option<Job> = None;
    // Long compressions take one model call each in turn, then refinements one step each,
    // behind any newly queued job.
    let mut compressing: VecDeque<CompressingJob> = VecDeque::new();
    let mut refining: VecDeque<RefiningJob<B::Refining>> = VecDeque::new();
    loop {
        let next = match held.take() {
            Some(job) => Some(job),
            None if refining.is_empty() && compressing.is_empty() => match rx.blocking_recv() {
                Some(job) => Some(job.take()),
                None => break,
            },
            // Nothing queued (or no handle left): go on with the long work.
            None => rx.try_recv().ok().map(Queued::take),
        };
        if let Some(first) = next {
            let mut jobs = vec![first];
            let (mut docs, mut tokens) = (jobs[0].docs.len(), jobs[0].tokens());
            while docs < limits.max_documents {
                let Ok(job) = rx.try_recv().map(Queued::take) else {
                    break;
                };
                if docs + job.docs.len() > limits.max_documents
                    || tokens + job.tokens() > limits.max_tokens
                {
                    held = Some(job);
                    break;
                }
                docs += job.docs.len();
                tokens += job.tokens();
                jobs.push(job);
            }
            // A client that went away does not need its documents compressed.
            jobs.retain(|job| !job.reply.is_closed());
            // The model is loaded before this loop runs, so its summary is there.
            let summary = state.summary().ok();
            let mut short = Vec::new();
            for job in jobs {
                let segments: Vec<usize> = job
                    .docs
                    .iter()
                    .map(|ids| summary.map_or(1, |s| s.num_segments(ids.len())))
                    .collect();
                if segments.iter().sum::<usize>() > SEGMENTS_PER_CALL {
                    let queue_seconds = queued_for(&job);
                    compressing.push_back(CompressingJob::new(job, segments, queue_seconds));
                } else {
                    short.push(job);
                }
            }
            if !short.is_empty() {
                refining.extend(compress_batch(backend, short, state));
            }
        } else if let Some(mut long) = compressing.pop_front() {
            match long.step(backend, state) {
                Progress::More => compressing.push_back(long),
                Progress::Done(docs) => {
                    let (queue_seconds, model_seconds) = (long.queue_seconds, long.model_seconds);
                    refining.extend(deliver(
                        backend,
                        long.job,
                        Ok(docs),
                        queue_seconds,
                        model_seconds,
                    ));
                }
                Progress::Abandoned => {}
                Progress::Failed(message) => {
                    let _ = long.job.reply.send(Err(ServiceError::Internal(message)));
                }
            }
        } else if let Some(mut job) = refining.pop_front() {
            match job.step(backend, state) {
                Stepped::More => refining.push_back(job),
                Stepped::Done => job.finish(backend),
                Stepped::Abandoned => {}
                Stepped::Failed(message) => job.fail(message),
            }
        }
    }
}

/// Compress the documents of `jobs` together and give each plain job its own share; the
/// jobs that refine come back to be stepped.
fn compress_batch<B: CompressBackend>(
    backend: &B,
    jobs: Vec<Job>,
    state: &ModelState,
) -> Vec<RefiningJob<B::Refining>> {
    let _guard = tch::no_grad_guard();
    let model_started = Instant::now();
    let queue_seconds: Vec<f64> = jobs.iter().map(queued_for).collect();
    let batch_docs: Vec<ToCompress> = jobs
        .iter()
        .flat_map(|job| {
            job.docs
                .iter()
                .map(|ids| ToCompress::whole(ids, job.slots_per_segment))
        })
        .collect();
    state.set_active(batch_docs.len());
    metrics::histogram!(names::BATCH_SIZE, "component" => "encoder")
        .record(batch_docs.len() as f64);
    let span = info_span!(parent: None, "compress_batch", documents = batch_docs.len());
    for job in &jobs {
        span.follows_from(&job.span);
    }
    // Document i of the batch belongs to job owner[i]; its client may leave mid-batch.
    let owner: Vec<usize> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| std::iter::repeat_n(j, job.docs.len()))
        .collect();
    let wanted = |doc: usize| !jobs[owner[doc]].reply.is_closed();
    let result =
        span.in_scope(|| catch_unwind(AssertUnwindSafe(|| backend.compress(&batch_docs, &wanted))));
    state.set_active(0);
    let mut results = match result {
        Ok(Ok(compressed)) => compressed
            .into_iter()
            .map(|doc| doc.ok_or_else(|| "the client went away".to_string()))
            .collect::<Vec<_>>(),
        Ok(Err(e)) => {
            let message = e.to_string();
            error!(error = %message, "compression failed");
            batch_docs.iter().map(|_| Err(message.clone())).collect()
        }
        Err(_) => {
            error!("compression panicked");
            batch_docs
                .iter()
                .map(|_| Err("the model failed on this batch".to_string()))
                .collect()
        }
    }
    .into_iter();
    let model_seconds = model_started.elapsed().as_secs_f64();
    let mut refining = Vec::new();
    for (job, queue_seconds) in jobs.into_iter().zip(queue_seconds) {
        let job_docs: Result<Vec<Compressed>, String> =
            results.by_ref().take(job.docs.len()).collect();
        refining.extend(deliver(
            backend,
            job,
            job_docs,
            queue_seconds,
            model_seconds,
        ));
    }
    refining
}

/// Seconds `job` waited in the queue, recorded as the queue-time metric.
fn queued_for(job: &Job) -> f64 {
    let seconds = job.enqueued.elapsed().as_secs_f64();
    metrics::histogram!(names::QUEUE_SECONDS, "component" => "encoder").record(seconds);
    seconds
}

/// Hand a job its compressed documents: the reply, or, when it refines, its refinement
/// (returned, to be stepped).
fn deliver<B: CompressBackend>(
    backend: &B,
    job: Job,
    docs: Result<Vec<Compressed>, String>,
    queue_seconds: f64,
    model_seconds: f64,
) -> Option<RefiningJob<B::Refining>> {
    match (docs, job.refine) {
        (Ok(docs), Some(options)) => Some(RefiningJob::start(
            backend,
            job,
            docs,
            options,
            queue_seconds,
            model_seconds,
        )),
        (docs, _) => {
            let reply = docs
                .map(|docs| CompressedBatch {
                    fidelity: vec![SlotFidelity::default(); docs.len()],
                    docs,
                    queue_seconds,
                    model_seconds,
                })
                .map_err(ServiceError::Internal);
            let _ = job.reply.send(reply);
            None
        }
    }
}

#[cfg(test)]
#[path = "batcher_tests.rs"]
mod tests;
