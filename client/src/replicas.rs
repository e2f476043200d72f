//! Several replicas of one service, called in turn, with the calls that may be sent again
//! retried on the next replica. A replica that drains (SIGTERM: GOAWAY, then its listener
//! closes) or dies answers UNAVAILABLE; Compress is content-addressed, so sending it again
//! is safe, and so is a Generate that has not sent its first message yet.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use icae_proto::v1::{CompressRequest, CompressResponse, GenerateRequest};
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::connect::{decoder_on, encoder_on, lazy_channel, ConnectOptions, Decoder, Encoder};
use crate::stream::{collect, Generated};

/// How a failed call is sent again: up to `attempts` calls in all, each on the next
/// replica, waiting `initial_backoff` before the first retry and twice as long (at most
/// `max_backoff`) before each later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts over about 1.5 s: longer than a replica takes to close its listener and
    /// for the client to notice, short against a request's usual deadline.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// One attempt: every error is returned as it comes.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }
}

/// Whether a failed call may be sent again: the server was unreachable, went away, or said
/// it is shutting down (UNAVAILABLE), or the connection failed under the call (an error of
/// the client's own transport, whatever its code: a replica that closed its connections
/// after its GOAWAY, or one that died). Sending again is safe for every call of this API
/// before its answer has arrived: Compress is content-addressed, Generate changes nothing.
/// Nothing else is retried: a refused request fails the same way again, and a status a
/// server sent is its answer.
pub fn is_retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || std::error::Error::source(status)
            .is_some_and(|source| source.is::<tonic::transport::Error>())
}

/// Clients of several replicas of one service, used in turn.
pub struct Replicas<C> {
    clients: Vec<C>,
    next: AtomicUsize,
    policy: RetryPolicy,
}

impl<C: Clone> Replicas<C> {
    pub fn new(clients: Vec<C>, policy: RetryPolicy) -> Self {
        assert!(!clients.is_empty(), "replicas need at least one client");
        Replicas {
            clients,
            next: AtomicUsize::new(0),
            policy,
        }
    }

    /// The replica a new call starts on, round robin over all calls.
    fn first_replica(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()
    }

    /// Run `call` on one replica after another until it succeeds, fails in a way that is
    /// not retryable, or the policy's attempts are used up (the last error is returned).
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.attempts(|client| {
            let outcome = call(client);
            async move {
                outcome.await.map_err(|status| {
                    let retry = is_retryable(&status);
                    (status, retry)
                })
            }
        })
        .await
    }

    /// [`call`](Self::call) where each failure says itself whether it may be retried.
    async fn attempts<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<T, (Status, bool)>>,
    {
        let mut backoff = self.policy.initial_backoff;
        let mut attempt = 1;
        // A retry goes to the replica after the one that failed, not to the next one of
        // the shared rotation: other calls move that on meanwhile, and could send every
        // attempt of this one to the same replica that is down.
        let mut replica = self.first_replica();
        loop {
            match call(self.clients[replica].clone()).await {
                Ok(value) => return Ok(value),
                Err((_, true)) if attempt < self.policy.attempts => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                    attempt += 1;
                    replica = (replica + 1) % self.clients.len();
                }
                Err((status, _)) => return Err(status),
            }
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
                    let retryable = is_retryable(&status);
                    (status, retryable)
                };
                let mut stream = decoder.generate(request).await.map_err(retry)?.into_inner();
                let first = stream.message().await.map_err(retry)?;
                let all = tokio_stream::iter(first.map(Ok)).chain(stream);
                collect(all, started, |_| {})
                    .await
                    .map_err(|status| (status, false))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

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
    async fn an_unavailable_replica_is_retried_on_the_next() {
        let replicas = Replicas::new(vec!["draining", "up"], quick(3));
        let tried = Mutex::new(Vec::new());
        let answer = replicas
            .call(|r| {
                tried.lock().unwrap().push(r);
                async move {
                    match r {
                        "up" => Ok("served"),
                        _ => Err(Status::unavailable("shutting down")),
                    }
                }
            })
            .await;
        assert_eq!(answer.unwrap(), "served");
        assert_eq!(*tried.lock().unwrap(), ["draining", "up"]);
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

    #[test]
    fn only_unavailable_and_failed_connections_are_retried() {
        assert!(is_retryable(&Status::unavailable("shutting down")));
        // A server's CANCELLED (e.g. its deadline handling) has no transport error under it.
        assert!(!is_retryable(&Status::cancelled("Timeout expired")));
        assert!(!is_retryable(&Status::invalid_argument("bad")));
        assert!(!is_retryable(&Status::resource_exhausted("queue is full")));
    }

    #[test]
    fn no_address_is_refused() {
        let err = encoder_replicas(&[], &ConnectOptions::default(), RetryPolicy::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("at least one replica"), "{err}");
    }
}
