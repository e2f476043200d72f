//! The model thread's job queue and start-up. One OS thread per service loads the model and
//! then owns it (libtorch tensors never cross threads while in use); requests reach it
//! through a bounded queue. A service's batcher or scheduler creates that thread and calls
//! [`ModelStartup::load`] on it: nothing here calls back into a service.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use icae_core::adapter::untrained_warning;
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::{IcaeModel, ModelSummary};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::error::ServiceError;
use crate::health::Readiness;

/// What the transport reads about the model thread without touching the model.
pub struct ModelState {
    service: &'static str,
    summary: OnceLock<ModelSummary>,
    queued: AtomicUsize,
    active: AtomicUsize,
}

impl ModelState {
    fn new(service: &'static str) -> Self {
        ModelState {
            service,
            summary: OnceLock::new(),
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        }
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The model thread reports how many documents or sequences it works on.
    pub fn set_active(&self, n: usize) {
        self.active.store(n, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::ACTIVE_SEQUENCES, "component" => self.service)
            .set(n as f64);
    }

    /// A job left the queue: the model thread took it, or its caller gave up waiting.
    fn dequeued(&self) {
        let before = self.queued.fetch_sub(1, Ordering::Relaxed);
        self.record_queue(before.saturating_sub(1));
    }

    /// The loaded model's summary, or UNAVAILABLE while it loads.
    pub fn summary(&self) -> Result<&ModelSummary, ServiceError> {
        self.summary
            .get()
            .ok_or_else(|| ServiceError::ModelUnavailable("the model is still loading".into()))
    }

    fn record_queue(&self, size: usize) {
        metrics::gauge!(crate::metrics::QUEUE_SIZE, "component" => self.service).set(size as f64);
    }
}

/// A queued job's place in the queue count, shared by the job and its caller. It is
/// counted out once, by whichever comes first: the model thread taking the job, or the
/// caller giving up while it waits. So the queue gauge counts the jobs someone waits for,
/// not the abandoned ones still in the channel.
#[derive(Clone)]
struct Counted {
    in_count: Arc<AtomicBool>,
    state: Arc<ModelState>,
}

impl Counted {
    fn leave(&self) {
        if self.in_count.swap(false, Ordering::AcqRel) {
            self.state.dequeued();
        }
    }
}

/// What the caller keeps while its job waits: dropping it (the request abandoned) takes
/// the job out of the queue count.
pub struct QueuePlace(Counted);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A job as the model thread receives it.
pub struct Queued<J> {
    job: J,
    counted: Counted,
}

impl<J> Queued<J> {
    /// The job, counted out of the queue.
    pub fn take(self) -> J {
        self.counted.leave();
        self.job
    }
}

/// The transport's handle on the model thread: its state and the sending end of its queue.
pub struct JobQueue<J> {
    tx: mpsc::Sender<Queued<J>>,
    pub state: Arc<ModelState>,
}

impl<J> Clone for JobQueue<J> {
    fn clone(&self) -> Self {
        JobQueue {
            tx: self.tx.clone(),
            state: self.state.clone(),
        }
    }
}

impl<J> JobQueue<J> {
    /// A queue of `capacity` jobs; the receiver goes to the model thread. `service` labels
    /// the metrics.
    pub fn new(service: &'static str, capacity: usize) -> (Self, mpsc::Receiver<Queued<J>>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let state = Arc::new(ModelState::new(service));
        (JobQueue { tx, state }, rx)
    }

    pub fn summary(&self) -> Result<&ModelSummary, ServiceError> {
        self.state.summary()
    }

    /// Queue a job; UNAVAILABLE while the model loads, RESOURCE_EXHAUSTED when full. The
    /// caller keeps the returned place for as long as it waits for the job.
    pub fn submit(&self, job: J) -> Result<QueuePlace, ServiceError> {
        self.summary()?;
        // Counted before it is sent: the model thread may take it (and count it out) before
        // `try_send` returns.
        self.state.queued.fetch_add(1, Ordering::Relaxed);
        let counted = Counted {
            in_count: Arc::new(AtomicBool::new(true)),
            state: self.state.clone(),
        };
        let place = QueuePlace(counted.clone());
        if let Err(e) = self.tx.try_send(Queued { job, counted }) {
            drop(place);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => ServiceError::QueueFull {
                    limit: self.tx.max_capacity(),
                },
                mpsc::error::TrySendError::Closed(_) => {
                    ServiceError::ModelUnavailable("the model thread stopped".into())
                }
            });
        }
        self.state.record_queue(self.state.queued());
        Ok(place)
    }
}

/// Resolves with the error when the model fails to load; never resolves otherwise.
pub struct LoadFailure(oneshot::Receiver<String>);

impl LoadFailure {
    /// The load error, or None once the model has loaded (or its thread ended).
    pub async fn wait(self) -> Option<String> {
        self.0.await.ok()
    }
}

/// Everything the model thread needs to announce the outcome of loading.
pub struct ModelStartup {
    state: Arc<ModelState>,
    readiness: Readiness,
    failure: oneshot::Sender<String>,
    runtime: tokio::runtime::Handle,
}

impl ModelStartup {
    /// Call inside the tokio runtime; hand the startup to the model thread and the
    /// `LoadFailure` to [`crate::serve`].
    pub fn new(state: Arc<ModelState>, readiness: Readiness) -> (Self, LoadFailure) {
        let (failure, rx) = oneshot::channel();
        let startup = ModelStartup {
            state,
            readiness,
            failure,
            runtime: tokio::runtime::Handle::current(),
        };
        (startup, LoadFailure(rx))
    }

    /// On the model thread: run `load`; on success publish the summary, turn ready and
    /// return the backend; on failure report the error to the server and return None.
    pub fn load<B>(self, load: impl FnOnce() -> Result<(B, ModelSummary), String>) -> Option<B> {
        let started = Instant::now();
        match load() {
            Ok((backend, summary)) => {
                if !summary.adapter_trained {
                    warn!("{}", untrained_warning(Path::new(&summary.adapter)));
                }
                info!(seconds = started.elapsed().as_secs_f64(), fingerprint = %summary.fingerprint, device = %summary.device, "model loaded");
                crate::metrics::record_build_info(self.state.service, &summary);
                let _ = self.state.summary.set(summary);
                self.runtime.block_on(self.readiness.set_ready());
                Some(backend)
            }
            Err(e) => {
                error!(error = %e, "loading the model failed");
                let _ = self.failure.send(e);
                None
            }
        }
    }
}

/// The production backend: the ICAE model from the service's flags.
pub fn load_icae(
    model: &ModelArgs,
    adapter: &AdapterArgs,
) -> Result<(IcaeModel, ModelSummary), String> {
    let (threads, source) = model.apply_threads();
    info!(threads, source, "libtorch CPU threads");
    let icae = IcaeModel::load(
        &model.model,
        &adapter.adapter,
        &adapter.load_options(),
        model.device,
        model.dtype,
    )
    .map_err(|e| e.to_string())?;
    let summary = icae.summary(&model.model, &adapter.adapter);
    Ok((icae, summary))
}
