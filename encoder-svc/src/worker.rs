//! The model thread: one OS thread owns the model (libtorch tensors never cross threads
//! while in use) and compresses the queued documents in batches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use icae_core::service::runtime::{CommonArgs, Readiness};
use icae_core::service::{ModelState, ModelThread, ServiceError};
use icae_core::IcaeModel;
use tch::Tensor;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info_span};

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

pub struct Job {
    docs: Vec<Vec<u32>>,
    reply: oneshot::Sender<CompressReply>,
    enqueued: Instant,
}

pub type Worker = ModelThread<Job>;

/// Queue documents; the reply arrives on the returned channel.
pub fn submit(
    worker: &Worker,
    docs: Vec<Vec<u32>>,
) -> Result<oneshot::Receiver<CompressReply>, ServiceError> {
    let (reply, rx) = oneshot::channel();
    worker.submit(Job {
        docs,
        reply,
        enqueued: Instant::now(),
    })?;
    Ok(rx)
}

/// Start the model thread; it compresses the queued documents in batches of up to
/// `max_batch_documents`.
pub fn spawn(common: &CommonArgs, max_batch_documents: usize, readiness: Readiness) -> Worker {
    ModelThread::spawn("encoder", common, readiness, move |model, rx, state| {
        serve_jobs(&model, rx, &state, max_batch_documents)
    })
}

fn serve_jobs(
    model: &IcaeModel,
    mut rx: mpsc::Receiver<Job>,
    state: &ModelState,
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
        state.dequeued(jobs.len());
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
        state.set_active(all.len());
        metrics::histogram!("icae_batch_size", "service" => "encoder").record(all.len() as f64);
        let span = info_span!("compress_batch", documents = all.len());
        let _enter = span.enter();
        let result = catch_unwind(AssertUnwindSafe(|| model.compress_many(&all)));
        state.set_active(0);
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
