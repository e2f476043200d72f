//! Steady load on replicated services, every call logged with when it started, how long it
//! took and how it ended: the rollout test counts failures, the rollout benchmark compares
//! latencies before, during and after a rolling restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use icae_client::{compress_one, Replicas};
use icae_proto::v1::{CompressOptions, Mode};
use tokio::task::JoinHandle;

use crate::client::{eventually, from_keys, greedy};

/// One call of the load.
#[derive(Debug, Clone)]
pub struct Call {
    /// "compress" or "generate".
    pub method: &'static str,
    pub started: Instant,
    pub latency: Duration,
    /// What a failed call said, with the errors under it.
    pub error: Option<String>,
}

/// Every call of a load, shared by its tasks.
#[derive(Default)]
pub struct CallLog {
    calls: Mutex<Vec<Call>>,
    stop: AtomicBool,
}

impl CallLog {
    pub fn new() -> Arc<CallLog> {
        Arc::new(CallLog::default())
    }

    fn record<T, E: std::fmt::Debug>(
        &self,
        method: &'static str,
        started: Instant,
        outcome: Result<T, E>,
    ) {
        let call = Call {
            method,
            started,
            latency: started.elapsed(),
            error: outcome.err().map(|e| format!("{e:?}")),
        };
        self.calls.lock().unwrap().push(call);
    }

    /// A copy of the calls logged so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.calls().into_iter().filter_map(|c| c.error).collect()
    }

    /// Whether the load reaches `n` calls, ended either way, within two minutes.
    pub async fn reaches(&self, n: usize) -> bool {
        eventually(Duration::from_secs(120), || async {
            self.calls.lock().unwrap().len() >= n
        })
        .await
    }

    /// Tell the load's tasks to stop after their current call.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// `tasks` tasks each sending Compress calls one after another, a new text each time (every
/// call is real work, not a cache hit), until the log is told to stop.
pub fn compress_load(
    encoders: &Arc<Replicas<icae_client::Encoder>>,
    log: &Arc<CallLog>,
    tasks: usize,
) -> Vec<JoinHandle<()>> {
    (0..tasks)
        .map(|task| {
            let (encoders, log) = (encoders.clone(), log.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !log.stopped() {
                    let text = format!("Load task {task} sends document number {n}.");
                    let request = compress_one(text, CompressOptions::default());
                    let started = Instant::now();
                    log.record("compress", started, encoders.compress(request).await);
                    n += 1;
                }
            })
        })
        .collect()
}

/// `tasks` tasks each reading `key` back (4 tokens, to its end) one call after another.
pub fn generate_load(
    decoders: &Arc<Replicas<icae_client::Decoder>>,
    key: &str,
    log: &Arc<CallLog>,
    tasks: usize,
) -> Vec<JoinHandle<()>> {
    (0..tasks)
        .map(|_| {
            let (decoders, log, key) = (decoders.clone(), log.clone(), key.to_string());
            tokio::spawn(async move {
                while !log.stopped() {
                    let request = from_keys(&[&key], Mode::Autoencode, "", greedy(4));
                    let started = Instant::now();
                    let outcome = decoders.generate(request).await.and_then(|generated| {
                        generated
                            .completed()
                            .map(|_| ())
                            .map_err(|e| tonic::Status::unknown(e.to_string()))
                    });
                    log.record("generate", started, outcome);
                }
            })
        })
        .collect()
}
