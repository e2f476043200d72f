//! The scheduler's decisions with a fake backend: sequences decoded together up to the
//! batch limit, cancelled and expired sequences freed, failures kept to their request,
//! queued work finished when the handles go.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use icae_core::generate::Step;
use icae_core::{IcaeError, InputError, ModelSummary};
use icae_serving::testing::{fake_summary, unmounted_readiness, wait_until};

use super::*;

/// A sequence that emits tokens 100, 101, … until `max_new_tokens`.
struct FakeSequence {
    prompt_len: usize,
    generated: usize,
    max_new_tokens: usize,
}

/// Records the batch size of every decoding step; each step waits for a permit on `gate`
/// when one is set. Prefill fails for ANSWER requests.
#[derive(Clone, Default)]
struct FakeBackend {
    steps: Arc<Mutex<Vec<usize>>>,
    gate: Option<Arc<Mutex<std::sync::mpsc::Receiver<()>>>>,
}

impl DecodeBackend for FakeBackend {
    type Sequence = FakeSequence;

    fn prefill(&self, request: &GenerationRequest) -> Result<FakeSequence, IcaeError> {
        if request.mode == Mode::Answer {
            return Err(InputError::MissingPrompt.into());
        }
        let prompt_len = match &request.context {
            ContextSource::Slots(sets) => sets.iter().map(|t| t.size()[0] as usize).sum(),
            ContextSource::Baseline(ids) => ids.len(),
        };
        Ok(FakeSequence {
            prompt_len,
            generated: 0,
            max_new_tokens: request.params.max_new_tokens,
        })
    }

    fn choose(&self, sequence: &mut FakeSequence) -> Result<Step, IcaeError> {
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
        self.steps.lock().unwrap().push(sequences.len());
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
    let (scheduler, _) = Scheduler::spawn(
        8,
        max_batch,
        unmounted_readiness("icae.v1.Decoder").await,
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
    let steps = backend.steps.clone();
    let scheduler = start(2, backend).await;
    let first = scheduler
        .generate(request(Mode::Continue, 5, 3), None)
        .unwrap();
    // The first sequence is now waiting in its first decoding step: queue two more.
    wait_until("the first step started", || scheduler.state().active() == 1).await;
    let second = scheduler
        .generate(request(Mode::Autoencode, 7, 3), None)
        .unwrap();
    let third = scheduler
        .generate(request(Mode::Continue, 2, 3), None)
        .unwrap();
    let opener = std::thread::spawn(move || while open.send(()).is_ok() {});
    for (events, prompt) in [(first, 5), (second, 7), (third, 2)] {
        let (tokens, finished) = collect(events).await;
        let finished = finished.unwrap();
        assert_eq!(tokens, vec![100, 101, 102]);
        assert_eq!(finished.finish_reason, FinishReason::Length);
        assert_eq!(finished.generated_tokens, 3);
        assert_eq!(finished.prompt_positions, prompt);
    }
    let steps = steps.lock().unwrap().clone();
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
    let steps = backend.steps.clone();
    let scheduler = start(4, backend).await;
    let mut events = scheduler
        .generate(request(Mode::Continue, 3, 1000), None)
        .unwrap();
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
    assert!(steps.lock().unwrap().len() <= 1);
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
        .unwrap();
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
        .unwrap();
    let good = scheduler
        .generate(request(Mode::Continue, 3, 4), None)
        .unwrap();
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
    let (scheduler, failure) =
        Scheduler::spawn(4, 4, unmounted_readiness("icae.v1.Decoder").await, || {
            Err::<(FakeBackend, ModelSummary), _>("weights missing".to_string())
        });
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
        .unwrap();
    wait_until("the first step started", || scheduler.state().active() == 1).await;
    let second = scheduler
        .generate(request(Mode::Continue, 1, 2), None)
        .unwrap();
    drop(scheduler);
    let opener = std::thread::spawn(move || while open.send(()).is_ok() {});
    for events in [first, second] {
        let (tokens, result) = collect(events).await;
        assert_eq!(tokens, vec![100, 101]);
        assert!(result.is_ok());
    }
    drop(opener);
}
