//! The batcher's decisions with a fake backend: what is batched together, what is skipped,
//! what is refused, and what a failing backend or model load gives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use icae_core::{Compressed, IcaeError, ModelSummary, RefineOptions, Refined, ToCompress};
use icae_serving::testing::{fake_summary, unmounted_readiness, wait_until};
use icae_serving::ServiceError;
use tch::{Device, Kind, Tensor};

use super::*;

/// The fake model's memory tokens per segment (fake_summary's mem_size).
const PLAIN: usize = 1;

/// Records the size of every batch; each call waits for a permit on `gate` when one is set,
/// so a test can fill the queue while the "model" is busy.
#[derive(Clone, Default)]
struct FakeBackend {
    batches: Arc<Mutex<Vec<usize>>>,
    /// Calls that have started (and may be waiting at the gate).
    entered: Arc<AtomicUsize>,
    gate: Option<Arc<Mutex<std::sync::mpsc::Receiver<()>>>>,
    /// Wait at the gate before each document (a model call each) instead of once per batch.
    gate_each_document: bool,
    /// First tokens of the documents actually compressed.
    compressed: Arc<Mutex<Vec<u32>>>,
    fail: bool,
    /// Refinement steps also wait at the gate.
    gate_refine_steps: bool,
    /// Refinement steps that have started (and may be waiting at the gate).
    steps_entered: Arc<AtomicUsize>,
    /// What the model thread did, in order: "compress N" (first token of the batch's first
    /// document) and "step N" (the refined job's first token).
    events: Arc<Mutex<Vec<String>>>,
    fail_refinement: bool,
}

/// A refinement in progress on the fake backend: the slots gain 1 per step.
struct FakeRefining {
    documents: Vec<(Vec<u32>, Tensor)>,
    options: RefineOptions,
    steps_run: usize,
}

impl FakeBackend {
    fn wait_at_gate(&self) {
        if let Some(gate) = &self.gate {
            gate.lock().unwrap().recv().unwrap();
        }
    }
}

impl CompressBackend for FakeBackend {
    type Refining = FakeRefining;

    fn compress(
        &self,
        documents: &[ToCompress],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        if !self.gate_each_document {
            self.wait_at_gate();
        }
        self.batches.lock().unwrap().push(documents.len());
        self.events
            .lock()
            .unwrap()
            .push(format!("compress {}", documents[0].ids[0]));
        if self.fail {
            return Err(IcaeError::Input(icae_core::InputError::EmptyText));
        }
        // One slot per slot of a segment, whose value is the document's first token: the
        // caller can check that it got its own documents back, in order, at its rate.
        Ok(documents
            .iter()
            .enumerate()
            .map(
                |(
                    i,
                    &ToCompress {
                        ids: doc,
                        slots_per_segment,
                        ..
                    },
                )| {
                    if !wanted(i) {
                        return None;
                    }
                    if self.gate_each_document {
                        self.wait_at_gate();
                    }
                    self.compressed.lock().unwrap().push(doc[0]);
                    Some(Compressed {
                        slots: Tensor::full(
                            [slots_per_segment as i64, 2],
                            f64::from(doc[0]),
                            (Kind::Float, Device::Cpu),
                        ),
                        num_tokens: doc.len(),
                        num_segments: 1,
                    })
                },
            )
            .collect())
    }

    fn start_refining(
        &self,
        documents: Vec<(Vec<u32>, Tensor)>,
        options: RefineOptions,
    ) -> FakeRefining {
        FakeRefining {
            documents,
            options,
            steps_run: 0,
        }
    }

    fn refine_step(
        &self,
        refining: &mut FakeRefining,
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<bool, IcaeError> {
        if refining.steps_run == refining.options.steps || !wanted(0) {
            return Ok(false);
        }
        self.steps_entered.fetch_add(1, Ordering::SeqCst);
        if self.gate_refine_steps {
            self.wait_at_gate();
        }
        if self.fail_refinement {
            return Err(IcaeError::Input(icae_core::InputError::EmptyText));
        }
        refining.steps_run += 1;
        self.events
            .lock()
            .unwrap()
            .push(format!("step {}", refining.documents[0].0[0]));
        Ok(refining.steps_run < refining.options.steps)
    }

    fn finish_refining(&self, refining: FakeRefining) -> Result<Vec<Option<Refined>>, IcaeError> {
        let steps = refining.steps_run;
        Ok(refining
            .documents
            .into_iter()
            .map(|(_, slots)| {
                Some(Refined {
                    slots: slots + steps as f64,
                    steps_run: steps,
                    reconstruction_loss: 1.0 / (1.0 + steps as f64),
                })
            })
            .collect())
    }
}

fn refine(steps: usize) -> Option<RefineOptions> {
    Some(RefineOptions::steps(steps))
}

/// A batcher over `backend`, with a gate the test opens one batch at a time.
async fn gated(max_batch: usize, queue: usize, backend: FakeBackend) -> Gated {
    let limits = BatchLimits {
        max_documents: max_batch,
        max_tokens: usize::MAX,
    };
    gated_with(limits, queue, backend).await
}

async fn gated_with(limits: BatchLimits, queue: usize, mut backend: FakeBackend) -> Gated {
    let (open, gate) = std::sync::mpsc::channel();
    backend.gate = Some(Arc::new(Mutex::new(gate)));
    let backend_entered = backend.entered.clone();
    let (batcher, _) = Batcher::spawn(
        queue,
        limits,
        unmounted_readiness("icae.v1.EncoderApi").await,
        move || Ok((backend, fake_summary())),
    );
    wait_loaded(&batcher).await;
    Gated {
        entered: backend_entered,
        batcher,
        open,
    }
}

struct Gated {
    batcher: Batcher,
    open: std::sync::mpsc::Sender<()>,
    entered: Arc<AtomicUsize>,
}

/// Wait until the backend has started its `n`th batch (it then waits at the gate).
async fn wait_started(entered: &AtomicUsize, n: usize) {
    wait_until(&format!("batch {n} started"), || {
        entered.load(Ordering::SeqCst) == n
    })
    .await;
}

async fn wait_loaded(batcher: &Batcher) {
    wait_until("the fake backend loaded", || batcher.summary().is_ok()).await;
}

/// Wait until `n` jobs wait in the queue (the thread holds the others at the gate).
async fn wait_queue_len(batcher: &Batcher, n: usize) {
    wait_until(&format!("{n} jobs are queued"), || {
        batcher.state().queued() == n
    })
    .await;
}

fn first_values(batch: &CompressedBatch) -> Vec<f64> {
    batch
        .docs
        .iter()
        .map(|d| d.slots.double_value(&[0, 0]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_while_busy_are_batched_up_to_the_limit() {
    let backend = FakeBackend::default();
    let batches = backend.batches.clone();
    let Gated {
        batcher,
        open,
        entered,
    } = gated(3, 8, backend).await;

    let first = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![1]], PLAIN, None).await }
    });
    wait_started(&entered, 1).await;
    let mut later = Vec::new();
    for first_token in [2u32, 3, 4, 5] {
        let b = batcher.clone();
        later.push(tokio::spawn(async move {
            b.compress(vec![vec![first_token, 9]], PLAIN, None).await
        }));
    }
    wait_queue_len(&batcher, 4).await;
    for _ in 0..3 {
        open.send(()).unwrap();
    }
    assert_eq!(first_values(&first.await.unwrap().unwrap()), vec![1.0]);
    for (task, expected) in later.into_iter().zip([2.0, 3.0, 4.0, 5.0]) {
        let batch = task.await.unwrap().unwrap();
        assert_eq!(first_values(&batch), vec![expected]);
        assert_eq!(batch.docs[0].num_tokens, 2);
    }
    // One alone (it arrived first), then three together (the limit), then the rest.
    assert_eq!(*batches.lock().unwrap(), vec![1, 3, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stop_at_the_token_limit() {
    let backend = FakeBackend::default();
    let batches = backend.batches.clone();
    let limits = BatchLimits {
        max_documents: 16,
        max_tokens: 5,
    };
    let Gated {
        batcher,
        open,
        entered,
    } = gated_with(limits, 8, backend).await;
    let mut tasks = vec![tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![1; 9]], PLAIN, None).await }
    })];
    wait_started(&entered, 1).await;
    for (n, tokens) in [3usize, 3, 2].into_iter().enumerate() {
        let b = batcher.clone();
        tasks.push(tokio::spawn(async move {
            b.compress(vec![vec![2; tokens]], PLAIN, None).await
        }));
        wait_queue_len(&batcher, n + 1).await;
    }
    for _ in 0..3 {
        open.send(()).unwrap();
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // 9 tokens alone (larger than the limit, still served); 3 alone (3 + 3 > 5); 3 + 2.
    assert_eq!(*batches.lock().unwrap(), vec![1, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_abandoned_mid_batch_stops_at_the_next_model_call() {
    let backend = FakeBackend {
        gate_each_document: true,
        ..FakeBackend::default()
    };
    let compressed = backend.compressed.clone();
    let Gated {
        batcher,
        open,
        entered,
    } = gated(16, 8, backend).await;
    let abandoned = tokio::spawn({
        let b = batcher.clone();
        async move {
            b.compress(vec![vec![1], vec![2], vec![3]], PLAIN, None)
                .await
        }
    });
    wait_started(&entered, 1).await;
    abandoned.abort();
    let _ = abandoned.await;
    open.send(()).unwrap();
    let next = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![4]], PLAIN, None).await }
    });
    open.send(()).unwrap();
    assert_eq!(first_values(&next.await.unwrap().unwrap()), vec![4.0]);
    // The first document was already running; the other two were skipped.
    assert_eq!(*compressed.lock().unwrap(), vec![1, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_document_job_gets_its_own_documents_in_order() {
    let Gated {
        batcher,
        open,
        entered: _,
    } = gated(16, 8, FakeBackend::default()).await;
    open.send(()).unwrap();
    let batch = batcher
        .compress(vec![vec![7], vec![8, 1], vec![9, 1, 1]], PLAIN, None)
        .await
        .unwrap();
    assert_eq!(first_values(&batch), vec![7.0, 8.0, 9.0]);
    let tokens: Vec<usize> = batch.docs.iter().map(|d| d.num_tokens).collect();
    assert_eq!(tokens, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_at_different_rates_share_a_batch_and_keep_their_rate() {
    let backend = FakeBackend::default();
    let batches = backend.batches.clone();
    let Gated {
        batcher,
        open,
        entered,
    } = gated(16, 8, backend).await;
    let busy = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![1]], PLAIN, None).await }
    });
    wait_started(&entered, 1).await;
    let mut queued = Vec::new();
    for (first_token, slots_per_segment) in [(2u32, 3usize), (3, 1), (4, 2)] {
        let b = batcher.clone();
        queued.push(tokio::spawn(async move {
            b.compress(vec![vec![first_token]], slots_per_segment, None)
                .await
        }));
    }
    wait_queue_len(&batcher, 3).await;
    open.send(()).unwrap();
    open.send(()).unwrap();
    busy.await.unwrap().unwrap();
    let mut rows = Vec::new();
    for job in queued {
        let batch = job.await.unwrap().unwrap();
        rows.push((first_values(&batch)[0], batch.docs[0].slots.size()[0]));
    }
    assert_eq!(rows, vec![(2.0, 3), (3.0, 1), (4.0, 2)]);
    assert_eq!(*batches.lock().unwrap(), vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_job_runs_between_the_calls_of_a_long_one() {
    let backend = FakeBackend::default();
    let events = backend.events.clone();
    let Gated {
        batcher,
        open,
        entered,
    } = gated(16, 8, backend).await;
    // 100 tokens: 25 segments of fake_summary's 4 tokens, more than one call holds.
    let long = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![1; 100]], PLAIN, None).await }
    });
    wait_started(&entered, 1).await;
    let short = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![2]], PLAIN, None).await }
    });
    wait_queue_len(&batcher, 1).await;
    for _ in 0..3 {
        open.send(()).unwrap();
    }
    let short = short.await.unwrap().unwrap();
    assert_eq!(first_values(&short), vec![2.0]);
    let long = long.await.unwrap().unwrap();
    // Its parts, one row per segment range here, come back as one document.
    assert_eq!(long.docs.len(), 1);
    assert_eq!(
        (long.docs[0].num_segments, long.docs[0].num_tokens),
        (25, 100)
    );
    assert_eq!(long.docs[0].slots.size()[0], 2);
    assert_eq!(
        *events.lock().unwrap(),
        ["compress 1", "compress 2", "compress 1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_long_job_stops_after_its_current_call() {
    let backend = FakeBackend::default();
    let events = backend.events.clone();
    let Gated {
        batcher,
        open,
        entered,
    } = gated(16, 8, backend).await;
    // 200 tokens: 50 segments, four calls.
    let long = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![1; 200]], PLAIN, None).await }
    });
    wait_started(&entered, 1).await;
    long.abort();
    let _ = long.await;
    open.send(()).unwrap();
    let next = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![3]], PLAIN, None).await }
    });
    open.send(()).unwrap();
    assert_eq!(first_values(&next.await.unwrap().unwrap()), vec![3.0]);
    assert_eq!(*events.lock().unwrap(), ["compress 1", "compress 3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_is_never_compressed() {
    let backend = FakeBackend::default();
    let batches = backend.batches.clone();
    let Gated {
        batcher,
        open,
        entered,
    } = gated(16, 8, backend).await;
    let busy = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![1]], PLAIN, None).await }
    });
    wait_started(&entered, 1).await;
    let abandoned = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![2], vec![2]], PLAIN, None).await }
    });
    wait_queue_len(&batcher, 1).await;
    abandoned.abort();
    let _ = abandoned.await;
    // Still in the channel, but nobody waits for it: it leaves the queue count at once.
    assert_eq!(batcher.state().queued(), 0);
    let kept = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![3]], PLAIN, None).await }
    });
    wait_queue_len(&batcher, 1).await;
    open.send(()).unwrap();
    open.send(()).unwrap();
    busy.await.unwrap().unwrap();
    assert_eq!(first_values(&kept.await.unwrap().unwrap()), vec![3.0]);
    // The abandoned job's two documents never reached the backend.
    assert_eq!(*batches.lock().unwrap(), vec![1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_with_its_limit() {
    let Gated {
        batcher,
        open,
        entered,
    } = gated(16, 1, FakeBackend::default()).await;
    let busy = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![1]], PLAIN, None).await }
    });
    wait_started(&entered, 1).await;
    let queued = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![2]], PLAIN, None).await }
    });
    wait_queue_len(&batcher, 1).await;
    let refused = batcher.compress(vec![vec![3]], PLAIN, None).await;
    assert!(
        matches!(refused, Err(ServiceError::QueueFull { limit: 1 })),
        "{:?}",
        refused.err()
    );
    open.send(()).unwrap();
    open.send(()).unwrap();
    busy.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_fails_every_job_of_the_batch() {
    let backend = FakeBackend {
        fail: true,
        ..FakeBackend::default()
    };
    let Gated {
        batcher,
        open,
        entered: _,
    } = gated(16, 8, backend).await;
    open.send(()).unwrap();
    let result = batcher.compress(vec![vec![1], vec![2]], PLAIN, None).await;
    assert!(matches!(result, Err(ServiceError::Internal(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_is_reported_and_requests_stay_unavailable() {
    let limits = BatchLimits {
        max_documents: 4,
        max_tokens: 64,
    };
    let (batcher, failure) = Batcher::spawn(
        4,
        limits,
        unmounted_readiness("icae.v1.EncoderApi").await,
        || Err::<(FakeBackend, ModelSummary), _>("no such model".to_string()),
    );
    let error = tokio::time::timeout(Duration::from_secs(5), failure.wait())
        .await
        .expect("the load failure is reported");
    assert_eq!(error.as_deref(), Some("no such model"));
    let refused = batcher.compress(vec![vec![1]], PLAIN, None).await;
    assert!(matches!(refused, Err(ServiceError::ModelUnavailable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_still_finish_when_the_last_handle_is_dropped() {
    let Gated {
        batcher,
        open,
        entered,
    } = gated(1, 8, FakeBackend::default()).await;
    let tasks: Vec<_> = (1..=3u32)
        .map(|t| {
            let b = batcher.clone();
            tokio::spawn(async move { b.compress(vec![vec![t]], PLAIN, None).await })
        })
        .collect();
    wait_started(&entered, 1).await;
    wait_queue_len(&batcher, 2).await;
    drop(batcher);
    for _ in 0..3 {
        open.send(()).unwrap();
    }
    for (task, expected) in tasks.into_iter().zip([1.0, 2.0, 3.0]) {
        let batch = task.await.unwrap().unwrap();
        assert_eq!(first_values(&batch), vec![expected]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_job_waits_for_one_refinement_step_not_the_whole_refinement() {
    let backend = FakeBackend {
        gate_refine_steps: true,
        ..FakeBackend::default()
    };
    let events = backend.events.clone();
    let steps_entered = backend.steps_entered.clone();
    let Gated {
        batcher,
        open,
        entered,
    } = gated(16, 8, backend).await;
    let refined = tokio::spawn({
        let b = batcher.clone();
        async move {
            b.compress(vec![vec![5, 1], vec![6]], PLAIN, refine(20))
                .await
        }
    });
    wait_started(&entered, 1).await;
    open.send(()).unwrap(); // the compression
                            // Step 1 waits at the gate while the plain job is queued.
    wait_until("step 1 started", || {
        steps_entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let plain = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![9]], PLAIN, None).await }
    });
    wait_queue_len(&batcher, 1).await;
    open.send(()).unwrap(); // step 1
    wait_until("the plain job is compressed", || {
        entered.load(Ordering::SeqCst) == 2
    })
    .await;
    open.send(()).unwrap(); // the plain job's compression, between two steps
    let batch = plain.await.unwrap().unwrap();
    assert_eq!(first_values(&batch), vec![9.0]);
    assert_eq!(batch.fidelity[0], icae_core::slots::SlotFidelity::default());
    for _ in 0..19 {
        open.send(()).unwrap();
    }
    let batch = refined.await.unwrap().unwrap();
    // Each document got its own refined slots and its fidelity.
    assert_eq!(first_values(&batch), vec![25.0, 26.0]);
    for fidelity in &batch.fidelity {
        assert_eq!(fidelity.refine_steps, 20);
        assert_eq!(fidelity.steps_run, 20);
        assert_eq!(fidelity.reconstruction_loss, Some(1.0 / 21.0));
    }
    let events = events.lock().unwrap().clone();
    let plain_at = events.iter().position(|e| e == "compress 9").unwrap();
    let steps_before = events[..plain_at].iter().filter(|e| *e == "step 5").count();
    assert_eq!(
        steps_before, 1,
        "the plain job waited for {steps_before} steps: {events:?}"
    );
    assert_eq!(events.iter().filter(|e| *e == "step 5").count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_refinement_stops_at_the_next_step_and_others_go_on() {
    let backend = FakeBackend {
        gate_refine_steps: true,
        ..FakeBackend::default()
    };
    let events = backend.events.clone();
    let Gated {
        batcher,
        open,
        entered,
    } = gated(16, 8, backend).await;
    let abandoned = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![3]], PLAIN, refine(1000)).await }
    });
    wait_started(&entered, 1).await;
    open.send(()).unwrap();
    open.send(()).unwrap();
    open.send(()).unwrap();
    wait_until("two steps ran", || events.lock().unwrap().len() >= 3).await;
    abandoned.abort();
    let _ = abandoned.await;
    // A later job is served; at most the step already waiting at the gate ran meanwhile.
    let next = tokio::spawn({
        let b = batcher.clone();
        async move { b.compress(vec![vec![4]], PLAIN, None).await }
    });
    open.send(()).unwrap();
    open.send(()).unwrap();
    assert_eq!(first_values(&next.await.unwrap().unwrap()), vec![4.0]);
    let steps = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| *e == "step 3")
        .count();
    assert!(steps <= 3, "{steps} steps ran for an abandoned job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refinement_fails_its_own_job_only() {
    let backend = FakeBackend {
        fail_refinement: true,
        ..FakeBackend::default()
    };
    let Gated {
        batcher,
        open,
        entered: _,
    } = gated(16, 8, backend).await;
    for _ in 0..2 {
        open.send(()).unwrap();
    }
    let failed = batcher.compress(vec![vec![1]], PLAIN, refine(5)).await;
    assert!(
        matches!(failed, Err(ServiceError::Internal(_))),
        "{:?}",
        failed.err()
    );
    let plain = batcher.compress(vec![vec![2]], PLAIN, None).await.unwrap();
    assert_eq!(first_values(&plain), vec![2.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_score_only_job_takes_no_step_and_gets_its_loss() {
    let backend = FakeBackend::default();
    let events = backend.events.clone();
    let Gated {
        batcher,
        open,
        entered: _,
    } = gated(16, 8, backend).await;
    open.send(()).unwrap();
    let batch = batcher
        .compress(vec![vec![7]], PLAIN, refine(0))
        .await
        .unwrap();
    assert_eq!(first_values(&batch), vec![7.0]);
    assert_eq!(batch.fidelity[0].steps_run, 0);
    assert_eq!(batch.fidelity[0].reconstruction_loss, Some(1.0));
    assert_eq!(*events.lock().unwrap(), vec!["compress 7".to_string()]);
}
