//! A job too long for one model call: compressed [`SEGMENTS_PER_CALL`] segments at a time by
//! the model thread, between other work. A long document thus holds a short request back
//! for one model call at most (new jobs come first between two calls), and a client that
//! leaves stops its job within one call.

use std::mem;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use icae_core::{Compressed, ToCompress};
use icae_serving::ModelState;
use tch::Tensor;
use tracing::{error, info_span, Span};

use crate::backend::CompressBackend;
use crate::job::Job;

/// Segments one model call compresses at most (the engine's own batch of segments): a job
/// with more is compressed a call at a time.
pub(crate) const SEGMENTS_PER_CALL: usize = 16;

/// What a call left to do.
pub(crate) enum Progress {
    More,
    /// Every document's slots, in order.
    Done(Vec<Compressed>),
    /// The client went away: nothing to finish or send.
    Abandoned,
    Failed(String),
}

pub(crate) struct CompressingJob {
    pub(crate) job: Job,
    /// Per document: its segments, and the slots of those compressed so far.
    segments: Vec<usize>,
    parts: Vec<Vec<Tensor>>,
    /// The next segment to compress: (document, segment).
    next: (usize, usize),
    pub(crate) queue_seconds: f64,
    /// Model time so far.
    pub(crate) model_seconds: f64,
    span: Span,
}

impl CompressingJob {
    /// `segments`: each document's segment count.
    pub(crate) fn new(job: Job, segments: Vec<usize>, queue_seconds: f64) -> Self {
        let span = info_span!(parent: None, "compress_long", documents = job.docs.len());
        span.follows_from(&job.span);
        CompressingJob {
            parts: job.docs.iter().map(|_| Vec::new()).collect(),
            job,
            segments,
            next: (0, 0),
            queue_seconds,
            model_seconds: 0.0,
            span,
        }
    }

    /// The next at most [`SEGMENTS_PER_CALL`] segments, in document order.
    fn next_pieces(&self) -> Vec<(usize, Range<usize>)> {
        let (mut doc, mut segment) = self.next;
        let mut budget = SEGMENTS_PER_CALL;
        let mut pieces = Vec::new();
        while budget > 0 && doc < self.segments.len() {
            let take = (self.segments[doc] - segment).min(budget);
            pieces.push((doc, segment..segment + take));
            budget -= take;
            segment += take;
            if segment == self.segments[doc] {
                (doc, segment) = (doc + 1, 0);
            }
        }
        pieces
    }

    /// One model call on the job's next segments.
    pub(crate) fn step<B: CompressBackend>(&mut self, backend: &B, state: &ModelState) -> Progress {
        let reply = &self.job.reply;
        if reply.is_closed() {
            return Progress::Abandoned;
        }
        let pieces = self.next_pieces();
        let inputs: Vec<ToCompress> = pieces
            .iter()
            .map(|(doc, range)| ToCompress {
                ids: &self.job.docs[*doc],
                slots_per_segment: self.job.slots_per_segment,
                segments: Some(range.clone()),
            })
            .collect();
        let started = Instant::now();
        state.set_active(inputs.len());
        let outcome = self.span.in_scope(|| {
            catch_unwind(AssertUnwindSafe(|| {
                backend.compress(&inputs, &|_| !reply.is_closed())
            }))
        });
        state.set_active(0);
        self.model_seconds += started.elapsed().as_secs_f64();
        let compressed = match outcome {
            Ok(Ok(compressed)) => compressed,
            Ok(Err(e)) => {
                error!(error = %e, "compression failed");
                return Progress::Failed(e.to_string());
            }
            Err(_) => {
                error!("compression panicked");
                return Progress::Failed("the model failed on this batch".into());
            }
        };
        for ((doc, range), part) in pieces.iter().zip(compressed) {
            let Some(part) = part else {
                return Progress::Abandoned;
            };
            self.parts[*doc].push(part.slots);
            self.next = match range.end == self.segments[*doc] {
                true => (doc + 1, 0),
                false => (*doc, range.end),
            };
        }
        if self.next.0 < self.segments.len() {
            return Progress::More;
        }
        let docs = self
            .job
            .docs
            .iter()
            .zip(mem::take(&mut self.parts))
            .zip(&self.segments)
            .map(|((ids, parts), &segments)| Compressed {
                slots: Tensor::cat(&parts, 0),
                num_tokens: ids.len(),
                num_segments: segments,
            })
            .collect();
        Progress::Done(docs)
    }
}
