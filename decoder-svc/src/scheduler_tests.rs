//! The scheduler's decisions with a fake backend: sequences decoded together up to the
//! batch limit, prompts prefilled in chunks between decoding steps, cancelled and expired
//! sequences freed (also between two chunks of their prefill), failures kept to their
//! request, queued work finished when the handles go.

use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use icae_core::generate::Step;
use icae_core::{IcaeError, InputError, Mode, ModelSummary, SamplingParams};
use icae_serving::testing::{fake_summary, unmounted_readiness, wait_until};

use super::*;
use crate::request::ContextSource;

/// A sequence that emits tokens 100, 101, … until `max_new_tokens`.
struct FakeSequence {
    prompt_len: usize,
    prefilled: usize,
    generated: usize,
    max_new_tokens: usize,
}

/// What the fake model ran, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// A prefill chunk of `positions` positions for the request whose prompt has `prompt`.
    Prefill { prompt: usize, positions: usize },
    /// A decoding step of this many sequences.
    Decode(usize),
}

/// Records every prefill chunk and decoding step; each step waits for a permit on `gate`
/// when one is set, each prefill chunk sleeps `chunk_delay`. Start fails for ANSWER
/// requests.
#[derive(Clone, Default)]
struct FakeBackend {
    ops: Arc<Mutex<Vec<Op>>>,
    gate: Option<Arc<Mutex<std::sync::mpsc::Receiver<()>>>>,
    chunk_delay: Duration,
}

impl FakeBackend {
    /// The batch size of every decoding step so far.
    fn steps(ops: &Mutex<Vec<Op>>) -> Vec<usize> {
        let ops = ops.lock().unwrap();
        ops.iter()
            .filter_map(|op| match op {
                Op::Decode(n) => Some(*n),
                Op::Prefill { .. } => None,
            })
            .collect()
    }
}

impl DecodeBackend for FakeBackend {
    type Sequence = FakeSequence;

    fn start(&self, request: &GenerationRequest) -> Result<FakeSequence, IcaeError> {
        if request.mode == Mode::Answer {
            return Err(InputError::MissingPrompt.into());
        }
        let prompt_len = match &request.context {
            ContextSource::Slots(sets) => sets.iter().map(|t| t.size()[0] as usize).sum(),
            ContextSource::Baseline(ids) => ids.len(),
        };
        Ok(FakeSequence {
            prompt_len,
            prefilled: 0,
            generated: 0,
            max_new_tokens: request.params.max_new_tokens,
        })
    }

    fn prefill_chunk(
        &self,
        sequence: &mut FakeSequence,
        max_positions: usize,
    ) -> Result<usize, IcaeError> {
        std::thread::sleep(self.chunk_delay);
        let positions = (sequence.prompt_len - sequence.prefilled).min(max_positions);
        sequence.prefilled += positions;
        self.ops.lock().unwrap().push(Op::Prefill {
            prompt: sequence.prompt_len,
            positions,
        });
        Ok(positions)
    }

    fn prefill_remaining(&self, sequence: &FakeSequence) -> usize {
        sequence.prompt_len - sequence.prefilled
    }

    fn choose(&self, sequence: &mut FakeSequence) -> Result<Step, IcaeError> {
        assert_eq!(
            sequence.prefilled, sequence.prompt_len,
            "a token was chosen before the prefill finished"
        );
        let token_id = 100 + sequence.generated as u32;
        sequence.generated += 1;
        Ok(Step {
            token_id,
            text_delta: format!("t{token_id} "),
            finished: (sequence.generated == sequence.max_new_tokens)
                .then_some(FinishReason::Length),
        })
    }

    fn decode(&self, sequences: &mut [&mut FakeSequence]) -> Result<(), IcaeError> {
        if let Some(gate) = &self.gate {
            gate.lock().unwrap().recv().unwrap();
        }
        self.ops.lock().unwrap().push(Op::Decode(sequences.len()));
        Ok(())
    }

    fn prompt_len(&self, sequence: &FakeSequence) -> usize {
        sequence.prompt_len
    }

    fn generated_len(&self, sequence: &FakeSequence) -> usize {
        sequence.generated
    }
}

async fn start(max_batch: usize, backend: FakeBackend) -> Scheduler {
    start_chunked(max_batch, 1000, backend).await
}

async fn start_chunked(max_batch: usize, chunk: usize, backend: FakeBackend) -> Scheduler {
    let limits = StepLimits {
        max_batch_sequences: max_batch,
        max_prefill_tokens_per_step: chunk,
    };
    let (scheduler, _) = Scheduler::spawn(
        8,
        limits,
        unmounted_readiness("icae.v1.DecoderApi").await,
        move || Ok((backend, fake_summary())),
    );
    wait_until("the fake backend loaded", || scheduler.summary().is_ok()).await;
    scheduler
}

/// A backend whose steps each wait for a permit from the returned sender (which holds at
/// most one permit, so a thread that keeps sending never runs ahead).
fn gated() -> (FakeBackend, std::sync::mpsc::SyncSender<()>) {
    let (open, gate) = std::sync::mpsc::sync_channel(1);
    let backend = FakeBackend {
        gate: Some(Arc::new(Mutex::new(gate))),
        ..FakeBackend::default()
    };
    (backend, open)
}

fn request(mode: Mode, baseline_tokens: usize, max_new_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        context: ContextSource::Baseline(vec![1; baseline_tokens]),
        mode,
        prompt_ids: None,
        params: SamplingParams::greedy(max_new_tokens),
    }
}

type Events = mpsc::UnboundedReceiver<Event>;

/// Every event of one generation, until it finishes or fails.
async fn collect(
    mut events: mpsc::UnboundedReceiver<Event>,
) -> (Vec<u32>, Result<Finished, ServiceError>) {
    let mut tokens = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Token { token_id, .. } => tokens.extend(token_id),
            Event::Finished(finished) => return (tokens, Ok(finished)),
            Event::Failed(e) => return (tokens, Err(e)),
        }
    }
    panic!("the event stream ended without Finished or Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_decoded_together_up_to_the_batch_limit() {
    let (backend, open) = gated();
    let ops = backend.ops.clone();
    let scheduler = start(2, backend).await;
    let first = scheduler
        .generate(request(Mode::Continue, 5, 3), None)
        .unwrap()
        .0;
    // The first sequence is now waiting in its first decoding step: queue two more.
    wait_until("the first step started", || scheduler.state().active() == 1).await;
    let second = scheduler
        .generate(request(Mode::Autoencode, 7, 3), None)
        .unwrap()
        .0;
    let third = scheduler
        .generate(request(Mode::Continue, 2, 3), None)
        .unwrap()
        .0;
    let opener = std::thread::spawn(move || while open.send(()).is_ok() {});
    for (events, prompt) in [(first, 5), (second, 7), (third, 2)] {
        let (tokens, finished) = collect(events).await;
        let finished = finished.unwrap();
        assert_eq!(tokens, vec![100, 101, 102]);
        assert_eq!(finished.finish_reason, FinishReason::Length);
        assert_eq!(finished.generated_tokens, 3);
        assert_eq!(finished.prompt_positions, prompt);
    }
    let steps = FakeBackend::steps(&ops);
    assert!(
        steps.iter().all(|&n| n <= 2),
        "a step exceeded the limit: {steps:?}"
    );
    assert!(
        steps.contains(&2),
        "no two sequences were stepped together: {steps:?}"
    );
    // 3 sequences × 2 decoding steps each (the last token needs none).
    assert_eq!(steps.iter().sum::<usize>(), 6, "{steps:?}");
    drop(scheduler);
    drop(opener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sequence_is_freed_at_the_next_step() {
    let (backend, open) = gated();
    let ops = backend.ops.clone();
    let scheduler = start(4, backend).await;
    let mut events = scheduler
        .generate(request(Mode::Continue, 3, 1000), None)
        .unwrap()
        .0;
    assert!(matches!(
        events.recv().await,
        Some(Event::Token {
            token_id: Some(100),
            ..
        })
    ));
    drop(events);
    open.send(()).unwrap();
    wait_until("the sequence is freed", || scheduler.state().active() == 0).await;
    // At most the step in flight when the client left ran; nothing waits for more permits.
    assert!(FakeBackend::steps(&ops).len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_fails_the_sequence_with_its_length() {
    let scheduler = start(4, FakeBackend::default()).await;
    let deadline = Deadline {
        at: Instant::now(),
        seconds: 0.25,
    };
    let events = scheduler
        .generate(request(Mode::Continue, 3, 1000), Some(deadline))
        .unwrap()
        .0;
    let (_, result) = collect(events).await;
    match result {
        Err(ServiceError::DeadlineExceeded(seconds)) => assert_eq!(seconds, 0.25),
        other => panic!("expected DEADLINE_EXCEEDED, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prefill_fails_only_its_own_request() {
    let scheduler = start(4, FakeBackend::default()).await;
    let bad = scheduler
        .generate(request(Mode::Answer, 3, 4), None)
        .unwrap()
        .0;
    let good = scheduler
        .generate(request(Mode::Continue, 3, 4), None)
        .unwrap()
        .0;
    let (tokens, result) = collect(bad).await;
    assert!(tokens.is_empty());
    assert!(matches!(
        result,
        Err(ServiceError::Input(InputError::MissingPrompt))
    ));
    let (tokens, result) = collect(good).await;
    assert_eq!(tokens.len(), 4);
    assert!(result.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_is_reported_and_requests_stay_unavailable() {
    let limits = StepLimits {
        max_batch_sequences: 4,
        max_prefill_tokens_per_step: 4,
    };
    let (scheduler, failure) = Scheduler::spawn(
        4,
        limits,
        unmounted_readiness("icae.v1.DecoderApi").await,
        || Err::<(FakeBackend, ModelSummary), _>("weights missing".to_string()),
    );
    let error = tokio::time::timeout(Duration::from_secs(5), failure.wait())
        .await
        .expect("the load failure is reported");
    assert_eq!(error.as_deref(), Some("weights missing"));
    let refused = scheduler.generate(request(Mode::Continue, 3, 4), None);
    assert!(matches!(refused, Err(ServiceError::ModelUnavailable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_still_finish_when_the_last_handle_is_dropped() {
    let (backend, open) = gated();
    let scheduler = start(1, backend).await;
    let first = scheduler
        .generate(request(Mode::Continue, 1, 2), None)
        .unwrap()
        .0;
    wait_until("the first step started", || scheduler.state().active() == 1).await;
    let second = scheduler
        .generate(request(Mode::Continue, 1, 2), None)
        .unwrap()
        .0;
    drop(scheduler);
    let opener = std::thread::spawn(move || while open.send(()).is_ok() {});
    for events in [first, second] {
        let (tokens, result) = collect(events).await;
        assert_eq!(tokens, vec![100, 101]);
        assert!(result.is_ok());
    }
    drop(opener);
}

/// The first token of a generation (its prefill is then done and its first decoding step
/// under way).
async fn first_token(events: &mut Events) {
    assert!(matches!(events.recv().await, Some(Event::Token { .. })));
}

/// A gated scheduler prefilling `chunk` positions per step, with one long generation
/// waiting in its first decoding step for a permit from the returned sender.
async fn one_running(chunk: usize) -> (Scheduler, Arc<Mutex<Vec<Op>>>, SyncSender<()>, Events) {
    let (backend, open) = gated();
    let ops = backend.ops.clone();
    let scheduler = start_chunked(8, chunk, backend).await;
    let mut running = scheduler
        .generate(request(Mode::Continue, 1, 1000), None)
        .unwrap()
        .0;
    first_token(&mut running).await;
    (scheduler, ops, open, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_is_prefilled_in_chunks_between_decoding_steps() {
    let (scheduler, ops, open, running) = one_running(4).await;
    // The running sequence waits in a decoding step: the long request arrives meanwhile.
    let long = scheduler
        .generate(request(Mode::Continue, 10, 2), None)
        .unwrap()
        .0;
    let opener = std::thread::spawn(move || while open.send(()).is_ok() {});
    let (tokens, finished) = collect(long).await;
    assert_eq!(tokens, vec![100, 101]);
    assert_eq!(finished.unwrap().prompt_positions, 10);
    drop(running);
    drop(scheduler);
    drop(opener);

    let ops = ops.lock().unwrap().clone();
    let long_ops: Vec<(usize, Op)> = ops
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, op)| matches!(op, Op::Prefill { prompt: 10, .. }))
        .collect();
    let chunks: Vec<Op> = long_ops.iter().map(|&(_, op)| op).collect();
    let chunk = |positions| Op::Prefill {
        prompt: 10,
        positions,
    };
    assert_eq!(chunks, vec![chunk(4), chunk(4), chunk(2)], "{ops:?}");
    // Every chunk is followed by the running sequence's decoding step before the next one.
    for pair in long_ops.windows(2) {
        let between = &ops[pair[0].0 + 1..pair[1].0];
        assert_eq!(between, [Op::Decode(1)], "{ops:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_small_prompts_are_prefilled_in_one_iteration() {
    let (scheduler, ops, open, running) = one_running(10).await;
    let small: Vec<_> = [3, 4, 5]
        .map(|prompt| {
            scheduler
                .generate(request(Mode::Continue, prompt, 1), None)
                .unwrap()
                .0
        })
        .into_iter()
        .collect();
    let opener = std::thread::spawn(move || while open.send(()).is_ok() {});
    for events in small {
        assert!(collect(events).await.1.is_ok());
    }
    drop(running);
    drop(scheduler);
    drop(opener);

    let ops = ops.lock().unwrap().clone();
    let prefill = |prompt, positions| Op::Prefill { prompt, positions };
    // 3 + 4 positions fit the budget of 10 with 3 to spare for the first chunk of the third.
    let expected = [
        Op::Decode(1),
        prefill(3, 3),
        prefill(4, 4),
        prefill(5, 3),
        Op::Decode(1),
        prefill(5, 2),
    ];
    let at = ops
        .iter()
        .position(|op| *op == prefill(3, 3))
        .expect("the small prompts were prefilled");
    assert_eq!(ops[at - 1..at + 5], expected, "{ops:?}");
}

/// A backend whose prefill chunks take `delay` each, and a scheduler prefilling 10
/// positions per iteration.
async fn slow_prefill(delay: Duration) -> (Scheduler, Arc<Mutex<Vec<Op>>>) {
    let backend = FakeBackend {
        chunk_delay: delay,
        ..FakeBackend::default()
    };
    let ops = backend.ops.clone();
    (start_chunked(4, 10, backend).await, ops)
}

fn prefill_chunks(ops: &Mutex<Vec<Op>>) -> usize {
    let ops = ops.lock().unwrap();
    ops.iter()
        .filter(|op| matches!(op, Op::Prefill { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_during_the_prefill_ends_it_between_chunks() {
    // 100 chunks of 20 ms: two seconds of prefill, against a deadline of 0.2 s.
    let (scheduler, ops) = slow_prefill(Duration::from_millis(20)).await;
    let deadline = Deadline {
        at: Instant::now() + Duration::from_millis(200),
        seconds: 0.2,
    };
    let sent = Instant::now();
    let events = scheduler
        .generate(request(Mode::Continue, 1000, 5), Some(deadline))
        .unwrap()
        .0;
    let (tokens, result) = collect(events).await;
    let waited = sent.elapsed();
    assert!(tokens.is_empty());
    match result {
        Err(ServiceError::DeadlineExceeded(seconds)) => assert_eq!(seconds, 0.2),
        other => panic!("expected DEADLINE_EXCEEDED, got {:?}", other.err()),
    }
    assert!(
        waited < Duration::from_millis(600),
        "ended after {waited:?}"
    );
    let chunks = prefill_chunks(&ops);
    assert!((2..30).contains(&chunks), "{chunks} chunks ran");
    wait_until("the sequence is freed", || scheduler.state().active() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_the_prefill_frees_the_scheduler_between_chunks() {
    let (scheduler, ops) = slow_prefill(Duration::from_millis(20)).await;
    let events = scheduler
        .generate(request(Mode::Continue, 1000, 5), None)
        .unwrap()
        .0;
    wait_until("the prefill started", || prefill_chunks(&ops) >= 2).await;
    drop(events);
    wait_until("the sequence is freed", || scheduler.state().active() == 0).await;
    let chunks = prefill_chunks(&ops);
    assert!(chunks < 20, "{chunks} chunks ran: the prefill went on");
    // The scheduler serves the next request right away.
    let (tokens, result) = collect(
        scheduler
            .generate(request(Mode::Continue, 3, 2), None)
            .unwrap()
            .0,
    )
    .await;
    assert_eq!(tokens, vec![100, 101]);
    assert!(result.is_ok());
    assert_eq!(prefill_chunks(&ops), chunks + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_abandoned_in_the_queue_leaves_the_queue_count() {
    let (backend, open) = gated();
    let scheduler = start(1, backend).await;
    let (running, _running_place) = scheduler
        .generate(request(Mode::Continue, 3, 2), None)
        .unwrap();
    wait_until("the first step started", || scheduler.state().active() == 1).await;
    // The batch is full: the next request waits in the queue.
    let waiting = scheduler
        .generate(request(Mode::Continue, 4, 2), None)
        .unwrap();
    assert_eq!(scheduler.state().queued(), 1);
    drop(waiting);
    assert_eq!(scheduler.state().queued(), 0);
    let opener = std::thread::spawn(move || while open.send(()).is_ok() {});
    let (tokens, finished) = collect(running).await;
    assert_eq!((tokens.len(), finished.unwrap().generated_tokens), (2, 2));
    // The abandoned request is taken off the channel without counting out twice.
    wait_until("the abandoned request is drained", || {
        scheduler.state().active() == 0
    })
    .await;
    assert_eq!(scheduler.state().queued(), 0);
    drop(scheduler);
    drop(opener);
}
