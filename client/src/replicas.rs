//! Several replicas of one service, called in turn, as a gRPC round_robin client does: a
//! replica whose connection is gone, or that answered UNAVAILABLE (loading, draining), is
//! left out of the rotation for a while; a call that never reached a server goes to the
//! next replica at once, and one that may have reached a server is sent again under the
//! [`RetryPolicy`]. A replica that drains (SIGTERM:
//! GOAWAY, then its listener closes) or dies answers UNAVAILABLE; Compress is
//! content-addressed, so sending it again is safe, and so is a Generate that has not sent
//! its first message yet.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use icae_proto::v1::{CompressRequest, CompressResponse, GenerateRequest};
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::connect::{decoder_on, encoder_on, lazy_channel, ConnectOptions, Decoder, Encoder};
use crate::retry::{Failure, RetryPolicy};
use crate::stream::{collect, Generated};

/// How long a replica that could not be reached or could not serve stays out of the
/// rotation: gRPC's first reconnect backoff. Then it is tried again (a restarted pod is back in the rotation).
const LEFT_OUT_FOR: Duration = Duration::from_secs(1);

/// Clients of several replicas of one service, used in turn.
pub struct Replicas<C> {
    clients: Vec<C>,
    next: AtomicUsize,
    policy: RetryPolicy,
    /// Per replica, until when it is left out of the rotation (unreachable or unavailable).
    left_out_until: Mutex<Vec<Option<Instant>>>,
}

impl<C: Clone> Replicas<C> {
    pub fn new(clients: Vec<C>, policy: RetryPolicy) -> Self {
        assert!(!clients.is_empty(), "replicas need at least one client");
        let left_out_until = Mutex::new(vec![None; clients.len()]);
        Replicas {
            clients,
            next: AtomicUsize::new(0),
            policy,
            left_out_until,
        }
    }

    /// The replica a new call starts on: round robin over all calls, skipping replicas
    /// left out of the rotation (all of them left out: the rotation's own).
    fn first_replica(&self) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.next_in_rotation(start)
    }

    /// `from` or, if it is left out, the first replica after it that is not.
    fn next_in_rotation(&self, from: usize) -> usize {
        let left_out = self.left_out_until.lock().unwrap();
        let now = Instant::now();
        (0..self.clients.len())
            .map(|step| (from + step) % self.clients.len())
            .find(|&replica| left_out[replica].is_none_or(|until| until <= now))
            .unwrap_or(from)
    }

    fn leave_out(&self, replica: usize) {
        self.left_out_until.lock().unwrap()[replica] = Some(Instant::now() + LEFT_OUT_FOR);
    }

    /// Run `call` on one replica after another until it succeeds or fails for good: a
    /// call that never reached a server goes to the next replica at once (each replica
    /// once per call, whatever the policy); one that may have reached a server is retried
    /// while the policy's attempts last; any other error, or the last, is returned.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.attempts(|client| {
            let outcome = call(client);
            async move {
                outcome.await.map_err(|status| {
                    let failure = Failure::of(&status);
                    (status, failure)
                })
            }
        })
        .await
    }

    /// [`call`](Self::call) where each failure says itself what it allows.
    async fn attempts<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<T, (Status, Failure)>>,
    {
        let mut backoff = self.policy.initial_backoff;
        let (mut attempt, mut unsent) = (1, 0);
        let mut replica = self.first_replica();
        loop {
            let outcome = call(self.clients[replica].clone()).await;
            if let Err((status, failure)) = &outcome {
                // Unreachable, or it said it cannot serve now (loading, draining).
                if *failure == Failure::NeverSent || status.code() == Code::Unavailable {
                    self.leave_out(replica);
                }
            }
            let failure = match outcome {
                Ok(value) => return Ok(value),
                Err((_, Failure::NeverSent)) if unsent + 1 < self.clients.len() => {
                    unsent += 1;
                    None
                }
                Err((_, Failure::NeverSent | Failure::Retryable))
                    if attempt < self.policy.attempts =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                    attempt += 1;
                    None
                }
                Err((status, _)) => Some(status),
            };
            if let Some(status) = failure {
                return Err(status);
            }
            // The replica after the one that failed, not the next of the shared rotation:
            // other calls move that on meanwhile, and could send every attempt of this one
            // to the same replica that is down.
            replica = self.next_in_rotation((replica + 1) % self.clients.len());
        }
    }
}

/// Encoder replicas at `urls` (connections are opened on first use, so a replica that is
/// down at start does not stop the others).
pub fn encoder_replicas(
    urls: &[String],
    options: &ConnectOptions,
    policy: RetryPolicy,
) -> Result<Replicas<Encoder>> {
    replicas(urls, policy, |url| {
        Ok(encoder_on(lazy_channel(url, options)?, options))
    })
}

/// Decoder replicas at `urls`, as [`encoder_replicas`].
pub fn decoder_replicas(
    urls: &[String],
    options: &ConnectOptions,
    policy: RetryPolicy,
) -> Result<Replicas<Decoder>> {
    replicas(urls, policy, |url| {
        Ok(decoder_on(lazy_channel(url, options)?, options))
    })
}

fn replicas<C: Clone>(
    urls: &[String],
    policy: RetryPolicy,
    client: impl Fn(&str) -> Result<C>,
) -> Result<Replicas<C>> {
    anyhow::ensure!(
        !urls.is_empty(),
        "no address given: name at least one replica"
    );
    let clients = urls
        .iter()
        .map(|url| client(url))
        .collect::<Result<Vec<_>>>()?;
    Ok(Replicas::new(clients, policy))
}

impl Replicas<Encoder> {
    /// Compress, retried on the next replica when one is unavailable (content-addressed:
    /// a repeated Compress stores the same value under the same key).
    pub async fn compress(&self, request: CompressRequest) -> Result<CompressResponse, Status> {
        self.call(|mut encoder| {
            let request = request.clone();
            async move { encoder.compress(request).await.map(|r| r.into_inner()) }
        })
        .await
    }
}

impl Replicas<Decoder> {
    /// Generate to the end of its stream. Retried on the next replica only while nothing
    /// has arrived: the call failing, or the stream failing before its first message. Once
    /// a message has arrived, an error ends the call (the tokens already shown would be
    /// shown again).
    pub async fn generate(&self, request: GenerateRequest) -> Result<Generated, Status> {
        self.attempts(|mut decoder| {
            let request = request.clone();
            async move {
                let started = Instant::now();
                let retry = |status: Status| {
                    let failure = Failure::of(&status);
                    (status, failure)
                };
                let mut stream = decoder.generate(request).await.map_err(retry)?.into_inner();
                let first = stream.message().await.map_err(retry)?;
                let all = tokio_stream::iter(first.map(Ok)).chain(stream);
                collect(all, started, |_| {})
                    .await
                    .map_err(|status| (status, Failure::Final))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn calls_go_round_robin() {
        let replicas = Replicas::new(vec![0, 1, 2], quick(1));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(replicas.call(|r| async move { Ok(r) }).await.unwrap());
        }
        assert_eq!(seen, [0, 1, 2, 0]);
    }

    #[tokio::test]
    async fn an_unavailable_replica_is_retried_on_the_next_and_left_out_for_a_while() {
        let replicas = Replicas::new(vec!["draining", "up"], quick(3));
        let tried = Mutex::new(Vec::new());
        let call = |r: &'static str| {
            tried.lock().unwrap().push(r);
            async move {
                match r {
                    "up" => Ok("served"),
                    _ => Err(Status::unavailable("shutting down")),
                }
            }
        };
        assert_eq!(replicas.call(call).await.unwrap(), "served");
        // The draining replica's next turn goes to the other one.
        for _ in 0..2 {
            assert_eq!(replicas.call(call).await.unwrap(), "served");
        }
        assert_eq!(*tried.lock().unwrap(), ["draining", "up", "up", "up"]);
    }

    #[tokio::test]
    async fn a_retry_goes_to_the_replica_after_the_failed_one_whatever_other_calls_do() {
        let replicas = Replicas::new(vec!["down", "up", "down-too"], quick(2));
        let tried = Mutex::new(Vec::new());
        let answer = replicas
            .call(|r| {
                tried.lock().unwrap().push(r);
                // Other calls start meanwhile and move the rotation on.
                replicas.first_replica();
                replicas.first_replica();
                async move {
                    match r {
                        "up" => Ok(r),
                        _ => Err(Status::unavailable("connection refused")),
                    }
                }
            })
            .await;
        assert_eq!(answer.unwrap(), "up");
        assert_eq!(*tried.lock().unwrap(), ["down", "up"]);
    }

    #[tokio::test]
    async fn other_errors_and_the_last_attempt_are_returned() {
        let replicas = Replicas::new(vec![0, 1], quick(3));
        let calls = AtomicUsize::new(0);
        let refused: Result<(), _> = replicas
            .call(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(Status::invalid_argument("bad")) }
            })
            .await;
        assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(calls.swap(0, Ordering::Relaxed), 1);

        let down: Result<(), _> = replicas
            .call(|r| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move { Err(Status::unavailable(format!("replica {r} down"))) }
            })
            .await;
        let status = down.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert!(status.message().starts_with("replica"), "{status}");
    }

    fn refused_connection() -> Status {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let mut status = Status::unavailable("tcp connect error");
        status.set_source(std::sync::Arc::new(refused));
        status
    }

    #[tokio::test]
    async fn a_call_that_never_reached_a_server_goes_to_the_next_replica_without_a_policy() {
        let replicas = Replicas::new(vec!["gone", "up", "up-too"], RetryPolicy::none());
        let tried = Mutex::new(Vec::new());
        let call = |r: &'static str| {
            tried.lock().unwrap().push(r);
            async move {
                match r {
                    "gone" => Err(refused_connection()),
                    _ => Ok(r),
                }
            }
        };
        assert_eq!(replicas.call(call).await.unwrap(), "up");
        // The replica that could not be reached is out of the rotation for a while: the
        // next calls go to the others, and its turn goes to the one after it.
        for _ in 0..3 {
            replicas.call(call).await.unwrap();
        }
        assert_eq!(*tried.lock().unwrap(), ["gone", "up", "up", "up-too", "up"]);
    }

    #[tokio::test]
    async fn without_a_policy_a_server_error_is_returned_and_unsent_calls_try_each_replica_once() {
        let replicas = Replicas::new(vec![0, 1, 2], RetryPolicy::none());
        let calls = AtomicUsize::new(0);
        let draining: Result<(), _> = replicas
            .call(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(Status::unavailable("shutting down")) }
            })
            .await;
        assert_eq!(draining.unwrap_err().message(), "shutting down");
        assert_eq!(calls.swap(0, Ordering::Relaxed), 1);

        let all_gone: Result<(), _> = replicas
            .call(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(refused_connection()) }
            })
            .await;
        assert_eq!(all_gone.unwrap_err().code(), Code::Unavailable);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn no_address_is_refused() {
        let err = encoder_replicas(&[], &ConnectOptions::default(), RetryPolicy::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("at least one replica"), "{err}");
    }
}
