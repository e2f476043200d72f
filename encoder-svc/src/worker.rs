//! The model thread: one OS thread owns the model (libtorch tensors never cross threads
//! while in use) and compresses the queued documents in batches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use icae_core::service::runtime::{CommonArgs, Readiness};
use icae_core::service::ServiceError;
use icae_core::{IcaeModel, ModelSummary};
use tch::Tensor;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, info_span};

/// One compressed document, on the CPU.
pub struct CompressedDoc {
    pub slots: Tensor,
    pub num_tokens: usize,
    pub num_segments: usize,
}

/// The documents of one request, with the time they waited and the model's time.
pub struct CompressedBatch {
    pub docs: Vec<CompressedDoc>,
    pub queue_seconds: f64,
    pub model_seconds: f64,
}

pub type CompressReply = Result<CompressedBatch, ServiceError>;

struct Job {
    docs: Vec<Vec<u32>>,
    reply: oneshot::Sender<CompressReply>,
    enqueued: Instant,
}

/// State the server reads without touching the model.
#[derive(Default)]
pub struct WorkerState {
    pub summary: OnceLock<ModelSummary>,
    queued: AtomicUsize,
    active: AtomicUsize,
}

impl WorkerState {
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct WorkerHandle {
    tx: mpsc::Sender<Job>,
    pub state: Arc<WorkerState>,
}

impl WorkerHandle {
    /// The loaded model's summary, or UNAVAILABLE while it loads.
    pub fn summary(&self) -> Result<&ModelSummary, ServiceError> {
        self.state
            .summary
            .get()
            .ok_or_else(|| ServiceError::ModelUnavailable("the model is still loading".into()))
    }

    /// Queue documents; the reply arrives on the returned channel with the queue time.
    pub fn submit(
        &self,
        docs: Vec<Vec<u32>>,
    ) -> Result<oneshot::Receiver<CompressReply>, ServiceError> {
        self.summary()?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job {
                docs,
                reply,
                enqueued: Instant::now(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ServiceError::QueueFull {
                    limit: self.tx.max_capacity(),
                },
                mpsc::error::TrySendError::Closed(_) => {
                    ServiceError::ModelUnavailable("the model thread stopped".into())
                }
            })?;
        let queued = self.state.queued.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("icae_queue_size", "service" => "encoder").set(queued as f64);
        Ok(rx)
    }
}

/// Start the model thread; it loads the model, flips readiness, then serves jobs.
pub fn spawn(
    common: CommonArgs,
    max_batch_documents: usize,
    queue_capacity: usize,
    readiness: Readiness,
) -> WorkerHandle {
    let (tx, rx) = mpsc::channel(queue_capacity);
    let state = Arc::new(WorkerState::default());
    let thread_state = state.clone();
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("icae-encoder-model".into())
        .spawn(move || {
            let started = Instant::now();
            let model = match IcaeModel::load(&common.model, &common.adapter, &common.load_options(), common.device) {
                Ok(model) => model,
                Err(e) => {
                    error!(error = %e, "loading the model failed");
                    std::process::exit(1);
                }
            };
            let summary = model.summary(&common.model, &common.adapter);
            if !summary.adapter_trained {
                tracing::warn!(adapter = %summary.adapter, "the adapter is UNTRAINED: its slots carry no information");
            }
            info!(seconds = started.elapsed().as_secs_f64(), fingerprint = %summary.fingerprint, device = %summary.device, "model loaded");
            let _ = thread_state.summary.set(summary);
            handle.block_on(readiness.set_ready());
            serve_jobs(&model, rx, &thread_state, max_batch_documents);
        })
        .expect("spawning the model thread");
    WorkerHandle { tx, state }
}

fn serve_jobs(
    model: &IcaeModel,
    mut rx: mpsc::Receiver<Job>,
    state: &WorkerState,
    max_batch_documents: usize,
) {
    let _guard = tch::no_grad_guard();
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut docs = jobs[0].docs.len();
        while docs < max_batch_documents {
            match rx.try_recv() {
                Ok(job) => {
                    docs += job.docs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let taken = jobs.len();
        let queued = state
            .queued
            .fetch_sub(taken, Ordering::Relaxed)
            .saturating_sub(taken);
        metrics::gauge!("icae_queue_size", "service" => "encoder").set(queued as f64);
        // A client that went away does not need its documents compressed.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let model_started = Instant::now();
        let queue_seconds: Vec<f64> = jobs
            .iter()
            .map(|job| job.enqueued.elapsed().as_secs_f64())
            .collect();
        for seconds in &queue_seconds {
            metrics::histogram!("icae_queue_seconds", "service" => "encoder").record(*seconds);
        }
        let all: Vec<&[u32]> = jobs
            .iter()
            .flat_map(|j| j.docs.iter().map(Vec::as_slice))
            .collect();
        state.active.store(all.len(), Ordering::Relaxed);
        metrics::histogram!("icae_batch_size", "service" => "encoder").record(all.len() as f64);
        let span = info_span!("compress_batch", documents = all.len());
        let _enter = span.enter();
        let result = catch_unwind(AssertUnwindSafe(|| model.compress_many(&all)));
        state.active.store(0, Ordering::Relaxed);
        let mut results = match result {
            Ok(Ok(compressed)) => compressed
                .into_iter()
                .map(|c| {
                    Ok(CompressedDoc {
                        slots: c.slots.to_device(tch::Device::Cpu),
                        num_tokens: c.num_tokens,
                        num_segments: c.num_segments,
                    })
                })
                .collect::<Vec<_>>(),
            Ok(Err(e)) => {
                let message = e.to_string();
                error!(error = %message, "compression failed");
                all.iter().map(|_| Err(message.clone())).collect()
            }
            Err(_) => {
                error!("compression panicked");
                all.iter()
                    .map(|_| Err("the model failed on this batch".to_string()))
                    .collect()
            }
        }
        .into_iter();
        let model_seconds = model_started.elapsed().as_secs_f64();
        for (job, queue_seconds) in jobs.into_iter().zip(queue_seconds) {
            let mine: Result<Vec<CompressedDoc>, String> =
                results.by_ref().take(job.docs.len()).collect();
            let reply = mine
                .map(|docs| CompressedBatch {
                    docs,
                    queue_seconds,
                    model_seconds,
                })
                .map_err(ServiceError::Internal);
            let _ = job.reply.send(reply);
        }
    }
}
