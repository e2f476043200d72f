//! A Compress request's work as the batcher thread sees it (a job) and what it sends back
//! (a batch of compressed documents): shared by the batcher and by the compressing and
//! refining stages it drives.

use std::time::Instant;

use icae_core::slots::SlotFidelity;
use icae_core::{Compressed, RefineOptions};
use icae_serving::ServiceError;
use tokio::sync::oneshot;
use tracing::Span;

/// The documents of one request, with the time they waited and the model's time.
pub struct CompressedBatch {
    pub docs: Vec<Compressed>,
    /// Per document: its refinement and reconstruction loss (default for plain slots).
    pub fidelity: Vec<SlotFidelity>,
    pub queue_seconds: f64,
    /// Compression and refinement together.
    pub model_seconds: f64,
}

pub(crate) type Reply = Result<CompressedBatch, ServiceError>;

pub(crate) struct Job {
    pub docs: Vec<Vec<u32>>,
    /// Memory tokens each segment of these documents gets (the request's rate).
    pub slots_per_segment: usize,
    /// Refine (or, with 0 steps, only score) the slots after compressing them.
    pub refine: Option<RefineOptions>,
    pub reply: oneshot::Sender<Reply>,
    pub enqueued: Instant,
    /// The request's span: the batch span follows from it.
    pub span: Span,
}

impl Job {
    pub(crate) fn tokens(&self) -> usize {
        self.docs.iter().map(Vec::len).sum()
    }
}
