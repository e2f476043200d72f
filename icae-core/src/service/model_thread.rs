//! The model thread of a service: one OS thread loads the model and then owns it (libtorch
//! tensors never cross threads while in use); requests reach it through a bounded queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::runtime::{CommonArgs, Readiness};
use super::ServiceError;
use crate::{IcaeModel, ModelSummary};

/// What the transport reads about the model thread without touching the model.
pub struct ModelState {
    service: &'static str,
    summary: OnceLock<ModelSummary>,
    queued: AtomicUsize,
    active: AtomicUsize,
}

impl ModelState {
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The model thread reports how many documents or sequences it works on.
    pub fn set_active(&self, n: usize) {
        self.active.store(n, Ordering::Relaxed);
    }

    /// The model thread took `n` jobs off the queue.
    pub fn dequeued(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        self.record_queue(before.saturating_sub(n));
    }

    fn record_queue(&self, size: usize) {
        metrics::gauge!("icae_queue_size", "service" => self.service).set(size as f64);
    }
}

/// The transport's handle on the model thread: its state and the sending end of its queue.
pub struct ModelThread<J> {
    tx: mpsc::Sender<J>,
    pub state: Arc<ModelState>,
}

impl<J> Clone for ModelThread<J> {
    fn clone(&self) -> Self {
        ModelThread {
            tx: self.tx.clone(),
            state: self.state.clone(),
        }
    }
}

impl<J: Send + 'static> ModelThread<J> {
    /// Start the thread: it loads the model (the process exits if that fails), flips
    /// readiness, then runs `serve` until the queue closes. `service` labels metrics.
    pub fn spawn(
        service: &'static str,
        common: &CommonArgs,
        readiness: Readiness,
        serve: impl FnOnce(IcaeModel, mpsc::Receiver<J>, Arc<ModelState>) + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::channel(common.max_concurrent_requests);
        let state = Arc::new(ModelState {
            service,
            summary: OnceLock::new(),
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        });
        let thread_state = state.clone();
        let runtime = tokio::runtime::Handle::current();
        let common = common.clone();
        std::thread::Builder::new()
            .name(format!("icae-{service}-model"))
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
                    warn!(adapter = %summary.adapter, "the adapter is UNTRAINED: its slots carry no information");
                }
                info!(seconds = started.elapsed().as_secs_f64(), fingerprint = %summary.fingerprint, device = %summary.device, "model loaded");
                let _ = thread_state.summary.set(summary);
                runtime.block_on(readiness.set_ready());
                serve(model, rx, thread_state);
            })
            .expect("spawning the model thread");
        ModelThread { tx, state }
    }

    /// The loaded model's summary, or UNAVAILABLE while it loads.
    pub fn summary(&self) -> Result<&ModelSummary, ServiceError> {
        self.state
            .summary
            .get()
            .ok_or_else(|| ServiceError::ModelUnavailable("the model is still loading".into()))
    }

    /// Queue a job; RESOURCE_EXHAUSTED when the queue is full.
    pub fn submit(&self, job: J) -> Result<(), ServiceError> {
        self.summary()?;
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServiceError::QueueFull {
                limit: self.tx.max_capacity(),
            },
            mpsc::error::TrySendError::Closed(_) => {
                ServiceError::ModelUnavailable("the model thread stopped".into())
            }
        })?;
        let queued = self.state.queued.fetch_add(1, Ordering::Relaxed) + 1;
        self.state.record_queue(queued);
        Ok(())
    }
}
