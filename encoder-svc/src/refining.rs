//! A job whose slots are refined (or scored) after compression: stepped by the model thread
//! one optimiser step at a time, between other work, until every document is done or its
//! client has gone; then its reply. A failure or panic ends this job only.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use icae_core::slots::SlotFidelity;
use icae_core::{Compressed, RefineOptions, Refined};
use icae_serving::metrics as names;
use icae_serving::{ModelState, ServiceError};
use tracing::{error, info_span, Span};

use crate::backend::CompressBackend;
use crate::job::{CompressedBatch, Job};

/// What a step left to do.
pub(crate) enum Stepped {
    More,
    Done,
    /// The client went away: nothing to finish or send.
    Abandoned,
    Failed(String),
}

pub(crate) struct RefiningJob<R> {
    job: Job,
    compressed: Vec<Compressed>,
    refining: R,
    options: RefineOptions,
    queue_seconds: f64,
    /// Model time so far: the compression's, then each step's.
    model_seconds: f64,
    span: Span,
}

impl<R> RefiningJob<R> {
    pub(crate) fn start<B: CompressBackend<Refining = R>>(
        backend: &B,
        job: Job,
        compressed: Vec<Compressed>,
        options: RefineOptions,
        queue_seconds: f64,
        model_seconds: f64,
    ) -> Self {
        let documents = job
            .docs
            .iter()
            .cloned()
            .zip(compressed.iter().map(|c| c.slots.shallow_clone()))
            .collect();
        let span = info_span!(
            parent: None,
            "refine",
            documents = job.docs.len(),
            steps = options.steps
        );
        span.follows_from(&job.span);
        RefiningJob {
            refining: backend.start_refining(documents, options),
            job,
            compressed,
            options,
            queue_seconds,
            model_seconds,
            span,
        }
    }

    /// One optimiser step for the job's documents.
    pub(crate) fn step<B: CompressBackend<Refining = R>>(
        &mut self,
        backend: &B,
        state: &ModelState,
    ) -> Stepped {
        if self.job.reply.is_closed() {
            return Stepped::Abandoned;
        }
        let started = Instant::now();
        state.set_active(self.job.docs.len());
        let reply = &self.job.reply;
        let refining = &mut self.refining;
        let outcome = self.span.in_scope(|| {
            catch_unwind(AssertUnwindSafe(|| {
                backend.refine_step(refining, &|_| !reply.is_closed())
            }))
        });
        state.set_active(0);
        self.model_seconds += started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(true)) => Stepped::More,
            Ok(Ok(false)) => Stepped::Done,
            Ok(Err(e)) => {
                error!(error = %e, "refinement failed");
                Stepped::Failed(e.to_string())
            }
            Err(_) => {
                error!("refinement panicked");
                Stepped::Failed("the model failed while refining".into())
            }
        }
    }

    /// Answer the job with an error (its refinement failed).
    pub(crate) fn fail(self, message: String) {
        let _ = self.job.reply.send(Err(ServiceError::Internal(message)));
    }

    /// Measure the final losses and reply; called once `step` says the job is done.
    pub(crate) fn finish<B: CompressBackend<Refining = R>>(self, backend: &B) {
        if self.job.reply.is_closed() {
            return;
        }
        let started = Instant::now();
        let RefiningJob {
            job,
            compressed,
            refining,
            options,
            queue_seconds,
            model_seconds,
            span,
        } = self;
        let outcome =
            span.in_scope(|| catch_unwind(AssertUnwindSafe(|| backend.finish_refining(refining))));
        let model_seconds = model_seconds + started.elapsed().as_secs_f64();
        let reply = match outcome {
            Ok(Ok(refined)) => {
                collect(compressed, refined, options).map(|(docs, fidelity)| CompressedBatch {
                    docs,
                    fidelity,
                    queue_seconds,
                    model_seconds,
                })
            }
            Ok(Err(e)) => {
                error!(error = %e, "refinement failed");
                Err(ServiceError::Internal(e.to_string()))
            }
            Err(_) => {
                error!("refinement panicked");
                Err(ServiceError::Internal(
                    "the model failed while refining".into(),
                ))
            }
        };
        let _ = job.reply.send(reply);
    }
}

/// The refined slots in place of the encoder's, with each document's fidelity.
fn collect(
    compressed: Vec<Compressed>,
    refined: Vec<Option<Refined>>,
    options: RefineOptions,
) -> Result<(Vec<Compressed>, Vec<SlotFidelity>), ServiceError> {
    let mut docs = Vec::with_capacity(compressed.len());
    let mut fidelity = Vec::with_capacity(compressed.len());
    for (plain, refined) in compressed.into_iter().zip(refined) {
        let refined =
            refined.ok_or_else(|| ServiceError::Internal("the client went away".into()))?;
        metrics::histogram!(names::REFINE_STEPS).record(refined.steps_run as f64);
        metrics::histogram!(names::RECONSTRUCTION_LOSS).record(refined.reconstruction_loss);
        fidelity.push(SlotFidelity {
            refine_steps: options.steps,
            target_loss: options.target_loss,
            steps_run: refined.steps_run,
            reconstruction_loss: Some(refined.reconstruction_loss),
        });
        docs.push(Compressed {
            slots: refined.slots,
            ..plain
        });
    }
    Ok((docs, fidelity))
}
