//! A rolling restart under load loses no call: two replicas of each service, clients that
//! use both in turn with no retry policy (icae-client's `Replicas` as a gRPC round_robin
//! client: a call that never reached a server goes to the other replica, nothing else is
//! sent again), steady Compress and Generate load from several tasks, and one replica of
//! each service stopped with SIGTERM in the middle of it while a long stream runs on the
//! stopped decoder. A replica killed outright loses no Compress for a client that retries.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use icae_client::{
    compress_one, decoder_replicas, encoder_replicas, ConnectOptions, Replicas, RetryPolicy,
};
use icae_proto::v1::{CompressOptions, Mode};
use integration_tests::*;
use tokio::task::JoinHandle;

/// Tasks sending calls all along, for each service.
const LOAD_TASKS: usize = 3;

/// Counts of the load's calls.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// What the failures said, with the errors under them, for the assertion's message.
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn calls(&self) -> usize {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Whether the load reaches `n` calls within two minutes.
    async fn reaches(&self, n: usize) -> bool {
        eventually(Duration::from_secs(120), || async { self.calls() >= n }).await
    }

    fn record<T, E: std::fmt::Debug>(&self, outcome: Result<T, E>) {
        match outcome {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                self.errors.lock().unwrap().push(format!("{e:?}"));
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn compress_load(
    encoders: &Arc<Replicas<icae_client::Encoder>>,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    (0..LOAD_TASKS)
        .map(|task| {
            let (encoders, tally, stop) = (encoders.clone(), tally.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // A new text each time: every call is real work, not a cache hit.
                    let text = format!("Load task {task} sends document number {n}.");
                    let request = compress_one(text, CompressOptions::default());
                    tally.record(encoders.compress(request).await);
                    n += 1;
                }
            })
        })
        .collect()
}

fn generate_load(
    decoders: &Arc<Replicas<icae_client::Decoder>>,
    key: &str,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    (0..LOAD_TASKS)
        .map(|_| {
            let (decoders, tally, stop) = (decoders.clone(), tally.clone(), stop.clone());
            let key = key.to_string();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = from_keys(&[&key], Mode::Autoencode, "", greedy(4));
                    let outcome = decoders.generate(request).await.and_then(|generated| {
                        generated
                            .completed()
                            .map(|_| ())
                            .map_err(|e| tonic::Status::unknown(e.to_string()))
                    });
                    tally.record(outcome);
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_load_fails_no_call() {
    let redis = Redis::start();
    let grace = ["--shutdown-grace-seconds", "600"];
    let mut encoders = vec![
        Service::start(Kind::Encoder, &redis.url(), &grace).await,
        Service::start(Kind::Encoder, &redis.url(), &grace).await,
    ];
    let mut decoders = vec![
        Service::start(Kind::Decoder, &redis.url(), &grace).await,
        Service::start(Kind::Decoder, &redis.url(), &grace).await,
    ];
    let urls = |services: &[Service]| services.iter().map(Service::url).collect::<Vec<_>>();
    let options = ConnectOptions::default();
    let policy = RetryPolicy::none();
    let encoder_pool = Arc::new(encoder_replicas(&urls(&encoders), &options, policy).unwrap());
    let decoder_pool = Arc::new(decoder_replicas(&urls(&decoders), &options, policy).unwrap());
    let key = compress_key(&encoders[1].url(), "A document read back again and again.").await;

    // A long stream on the decoder that will be stopped.
    let long = tokio::spawn({
        let url = decoders[0].url();
        let key = key.clone();
        async move { generate(&url, from_keys(&[&key], Mode::Continue, "", greedy(60))).await }
    });
    let started = eventually(Duration::from_secs(60), || async {
        decoder_info(&decoders[0].url()).await.active_sequences > 0
    })
    .await;
    assert!(started, "the long stream never started");

    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let mut load = compress_load(&encoder_pool, &tally, &stop);
    load.extend(generate_load(&decoder_pool, &key, &tally, &stop));
    assert!(tally.reaches(10).await, "the load made no progress");

    // The rollout: one replica of each service is told to stop, mid-load.
    encoders[0].sigterm();
    decoders[0].sigterm();
    for service in [&mut encoders[0], &mut decoders[0]] {
        let status = service
            .wait_exit(Duration::from_secs(300))
            .await
            .expect("a stopped replica did not exit");
        assert!(status.success(), "exit {status}:\n{}", service.logs());
    }
    // Calls go on after the replicas are gone: those that still pick them go to the others.
    let after = tally.ok.load(Ordering::Relaxed) + 2 * LOAD_TASKS * 3;
    assert!(
        tally.reaches(after).await,
        "the load stopped after the rollout"
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let generated = long.await.unwrap().expect("the long stream failed");
    assert!(generated.finished(), "the long stream was cut off");
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} calls failed: {:?}",
        ok + failed,
        tally.errors.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_under_load_fails_no_compress() {
    let redis = Redis::start();
    let encoders = [
        Service::start(Kind::Encoder, &redis.url(), &[]).await,
        Service::start(Kind::Encoder, &redis.url(), &[]).await,
    ];
    let urls: Vec<String> = encoders.iter().map(Service::url).collect();
    let pool = Arc::new(
        encoder_replicas(&urls, &ConnectOptions::default(), RetryPolicy::default()).unwrap(),
    );
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let load = compress_load(&pool, &tally, &stop);
    assert!(tally.reaches(10).await, "the load made no progress");
    // No drain: the process is gone at once, with calls in flight on it.
    unsafe { libc::kill(encoders[0].pid(), libc::SIGKILL) };
    let after = tally.ok.load(Ordering::Relaxed) + 4 * LOAD_TASKS;
    assert!(
        tally.reaches(after).await,
        "the load stopped after the kill"
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failed = tally.failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "{:?}", tally.errors.lock().unwrap());
}
