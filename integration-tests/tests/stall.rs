//! A long prompt does not stall the decoder: its prefill runs in chunks between decoding
//! steps, so running streams keep their pace, and its deadline or cancel is honoured between
//! two chunks instead of after the whole prefill.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use icae_client::{baseline_text, Generated};
use icae_proto::v1::{FinishReason, GenerateRequest, Mode};
use integration_tests::*;
use tokio::task::JoinHandle;
use tonic::Code;

/// What the streams decode (from its slots).
const DOC: &str = "The lighthouse keeper wrote every evening about the ships that passed, the \
weather over the strait and the birds that rested on the gallery rail.";

/// The tests here measure time: one at a time, so they do not slow each other down.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Positions the long request must have: a long document, as a user sends one.
const LONG_TOKENS: u32 = 2048;

/// A text of well over `LONG_TOKENS` tokens, varied so it does not collapse into repeats.
fn long_text() -> String {
    let places = [
        "harbour", "market", "station", "library", "bridge", "orchard",
    ];
    let things = [
        "lanterns", "ledgers", "bicycles", "kettles", "maps", "violins",
    ];
    (0..95)
        .map(|i| {
            format!(
                "Entry {i}: near the {} someone counted {} {} and wrote the number down twice. ",
                places[i % places.len()],
                i * 7 + 3,
                things[(i / 2) % things.len()],
            )
        })
        .collect()
}

fn long_request(max_new_tokens: u32) -> GenerateRequest {
    icae_client::generate_request(
        baseline_text(long_text()),
        Mode::Continue,
        "",
        greedy(max_new_tokens),
    )
}

/// A stream of generated tokens whose arrival times are recorded until it is aborted.
struct TimedStream {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    task: JoinHandle<()>,
}

impl TimedStream {
    async fn start(url: &str, request: GenerateRequest) -> TimedStream {
        let mut stream = decoder(url)
            .await
            .generate(request)
            .await
            .unwrap()
            .into_inner();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let record = arrivals.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                record.lock().unwrap().push(Instant::now());
            }
        });
        TimedStream { arrivals, task }
    }

    fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Gaps between consecutive tokens that arrived within `(from, to]`.
    fn gaps(&self, from: Instant, to: Instant) -> Vec<f64> {
        let arrivals = self.arrivals.lock().unwrap();
        arrivals
            .windows(2)
            .filter(|w| w[1] > from && w[1] <= to && w[0] >= from)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect()
    }
}

impl Drop for TimedStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `q` quantile (nearest rank) of `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    assert!(!values.is_empty(), "no gaps to take the quantile of");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The two services and Redis, with the decoder prefilling `chunk` positions per step.
async fn services(chunk: &str) -> (Redis, Service, Service) {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &["--max-prefill-tokens-per-step", chunk],
    )
    .await;
    (redis, encoder, decoder)
}

/// The streams' pace in one trial: the median gap before the long request arrived, and the
/// p99 gap while it was prefilled.
struct Pace {
    median_before: f64,
    p99_during: f64,
}

/// The bound the test holds the scheduler to: a gap during the prefill holds at most one
/// chunk besides its decoding step, so its p99 stays within this many ordinary steps. How
/// many steps one chunk of 16 positions is worth depends on the CPU: its p99 gap was
/// 2.4–3.4× the median step on an AVX2 machine and 3.0–3.8× on one with AVX-512, while a
/// prefill in chunks of 128 gave 5.9× there and an unchunked one freezes the streams.
const PACE_BOUND: f64 = 5.0;

impl Pace {
    fn within_bound(&self) -> bool {
        self.p99_during <= PACE_BOUND * self.median_before
    }

    fn describe(&self) -> String {
        format!(
            "p99 gap {:.1} ms, {PACE_BOUND} × median {:.1} ms",
            self.p99_during * 1e3,
            PACE_BOUND * self.median_before * 1e3
        )
    }
}

/// Four AUTOENCODE streams from `key` run; once their pace is steady the long request
/// arrives. Its output must equal `alone` and every stream must keep producing throughout.
async fn pace_trial(url: &str, key: &str, alone: &Generated) -> Pace {
    let mut streams = Vec::new();
    for _ in 0..4 {
        let request = from_keys(&[key], Mode::Autoencode, "", greedy(1000));
        streams.push(TimedStream::start(url, request).await);
    }
    let warm = eventually(Duration::from_secs(120), || async {
        streams.iter().all(|s| s.count() >= 5)
    })
    .await;
    assert!(warm, "the four streams did not start");
    // The pace before: 30 more tokens of every stream (a fixed time would leave too few on
    // a machine shared with other jobs).
    let steady_from = Instant::now();
    let counts: Vec<usize> = streams.iter().map(TimedStream::count).collect();
    let steady = eventually(Duration::from_secs(120), || async {
        streams
            .iter()
            .zip(&counts)
            .all(|(s, &n)| s.count() >= n + 30)
    })
    .await;
    assert!(steady, "the streams stopped before the long request");
    let arrived = Instant::now();
    let long = generate(url, long_request(12)).await.unwrap();
    let prefilled = arrived + Duration::from_secs_f64(long.first_token_seconds);

    let before: Vec<f64> = streams
        .iter()
        .flat_map(|s| s.gaps(steady_from, arrived))
        .collect();
    let during: Vec<f64> = streams
        .iter()
        .flat_map(|s| s.gaps(arrived, prefilled))
        .collect();
    assert!(
        before.len() >= 100 && !during.is_empty(),
        "{} gaps before, {} during",
        before.len(),
        during.len()
    );
    let pace = Pace {
        median_before: quantile(&before, 0.5),
        p99_during: quantile(&during, 0.99),
    };
    println!(
        "prefill alone {:.2}s, with 4 streams {:.2}s; gaps before: median {:.1} ms over {}; \
         during: p99 {:.1} ms, max {:.1} ms over {}",
        alone.first_token_seconds,
        long.first_token_seconds,
        pace.median_before * 1e3,
        before.len(),
        pace.p99_during * 1e3,
        quantile(&during, 1.0) * 1e3,
        during.len()
    );
    // Correct first: interleaved with the streams, the request gives what it gives alone.
    assert_eq!(long.token_ids, alone.token_ids);
    assert_eq!(long.text, alone.text);
    assert_eq!(long.finish_reason(), FinishReason::Length);
    // Every stream kept producing through the whole prefill (it did not end or stall).
    for (i, stream) in streams.iter().enumerate() {
        let tokens = stream.gaps(arrived, prefilled).len();
        assert!(
            tokens >= 20,
            "stream {i} produced {tokens} tokens meanwhile"
        );
    }
    pace
}

#[tokio::test(flavor = "multi_thread")]
async fn running_streams_keep_their_pace_while_a_2048_token_prompt_is_prefilled() {
    let _serial = SERIAL.lock().await;
    // 16 positions per step: on the 2-core CPU a chunk costs about one batch-4 decoding step
    // (the default 256 suits an accelerator; docs/ explains the trade-off).
    let (_redis, encoder, decoder) = services("16").await;
    let url = decoder.url();
    let key = compress_key(&encoder.url(), DOC).await;

    // The long request alone: the output it must also give while streams run.
    let alone = generate(&url, long_request(12)).await.unwrap();
    let last = alone.completed().unwrap();
    assert!(
        last.prompt_positions >= LONG_TOKENS,
        "the long text has only {} tokens",
        last.prompt_positions
    );
    assert_eq!(alone.finish_reason(), FinishReason::Length);

    // A gap during the prefill holds a chunk and a decoding step (2.4–3.8× a step), so
    // another job on the machine can stretch a few gaps past the bound or shorten the steps
    // the median is taken from. A stall (an unchunked or coarsely chunked prefill) exceeds
    // the bound in every trial; a load spike rarely twice in a row: a second trial runs only
    // when the first misses the bound.
    let mut pace = pace_trial(&url, &key, &alone).await;
    if !pace.within_bound() {
        println!("trial 1 missed the bound ({}): trial 2", pace.describe());
        pace = pace_trial(&url, &key, &alone).await;
    }
    println!("{}", pace.describe());
    assert!(
        pace.within_bound(),
        "the streams stalled in two trials: {}",
        pace.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_or_a_cancel_is_honoured_during_a_long_prefill() {
    let _serial = SERIAL.lock().await;
    // 8 positions per step: the 2,048-token prefill alone takes seconds.
    let (_redis, encoder, decoder) = services("8").await;
    let url = decoder.url();
    let key = compress_key(&encoder.url(), DOC).await;
    let alone = generate(&url, long_request(1)).await.unwrap();
    let prefill = alone.first_token_seconds;
    assert!(prefill > 3.0, "the prefill took only {prefill:.2}s");

    // A deadline of 1 s ends the request about then, not after the whole prefill.
    let mut request = tonic::Request::new(long_request(4));
    request
        .metadata_mut()
        .insert("grpc-timeout", "1000m".parse().unwrap());
    let sent = Instant::now();
    let outcome = icae_client::generate(&mut integration_tests::decoder(&url).await, request).await;
    let ended = sent.elapsed().as_secs_f64();
    assert_status(outcome, Code::DeadlineExceeded, &["deadline of 1.000s"]);
    assert!(
        ended < 1.0 + prefill / 3.0,
        "DEADLINE_EXCEEDED after {ended:.2}s (prefill {prefill:.2}s)"
    );
    let freed = eventually(Duration::from_secs(5), || async {
        decoder_info(&url).await.active_sequences == 0
    })
    .await;
    assert!(freed, "the expired request still holds a sequence");

    // A cancelled long request frees the model thread for the next request at once.
    let cancelled = TimedStream::start(&url, long_request(4)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(cancelled);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let short = generate(&url, from_keys(&[&key], Mode::Autoencode, "", greedy(4)))
        .await
        .unwrap();
    assert_eq!(short.token_ids.len(), 4);
    assert!(
        short.first_token_seconds < prefill / 3.0,
        "the next request waited {:.2}s for its first token (prefill {prefill:.2}s)",
        short.first_token_seconds
    );
}
