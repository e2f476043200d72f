//! The client's deadline as the services enforce it. The gRPC library starts its own timer
//! for `grpc-timeout` when the request arrives, and ends the call with CANCELLED "Timeout
//! expired" when it fires. The services end the call a little earlier, counted from the
//! same moment: [`ReceivedAtLayer`] sees the request before its body is read (which under
//! load can take longer than a short deadline), answers DEADLINE_EXCEEDED with a message
//! that says which deadline passed, and drops the work. Streams are ended by the decoder's
//! scheduler at the same instant ([`RequestDeadline`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::metadata::{deadline, grpc_timeout};
use crate::ServiceError;

/// How far ahead of its deadline the services end a request: a quarter of the deadline,
/// at least 2 ms (two ticks of the timer) and at most 20 ms.
const MIN_MARGIN: Duration = Duration::from_millis(2);
const MAX_MARGIN: Duration = Duration::from_millis(20);

/// When a request reached the server.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedAt(pub Instant);

/// Records [`ReceivedAt`] in every request's extensions, and answers DEADLINE_EXCEEDED
/// when the response has not begun by the request's deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceivedAtLayer;

impl<S> Layer<S> for ReceivedAtLayer {
    type Service = ReceivedAtService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReceivedAtService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ReceivedAtService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ReceivedAtService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let received = Instant::now();
        request.extensions_mut().insert(ReceivedAt(received));
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| grpc_timeout(value.to_str().ok()?))
            .map(|limit| RequestDeadline::from(received, limit));
        let response = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else {
                return response.await;
            };
            match tokio::time::timeout_at(deadline.at.into(), response).await {
                Ok(response) => response,
                Err(_) => {
                    let status: tonic::Status =
                        ServiceError::DeadlineExceeded(deadline.seconds).into();
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// A request's deadline: when the services give up on it, and the client's limit in
/// seconds (what the error message names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestDeadline {
    pub at: Instant,
    pub seconds: f64,
}

impl RequestDeadline {
    /// The deadline of `request` (none without `grpc-timeout`), counted from when it
    /// reached the server.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        let limit = deadline(request.metadata())?;
        let received = request
            .extensions()
            .get::<ReceivedAt>()
            .map_or_else(Instant::now, |r| r.0);
        Some(Self::from(received, limit))
    }

    fn from(received: Instant, limit: Duration) -> Self {
        let margin = (limit / 4).clamp(MIN_MARGIN, MAX_MARGIN);
        RequestDeadline {
            at: received + limit.saturating_sub(margin),
            seconds: limit.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_stop_a_little_before_the_deadline() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let at = |limit| RequestDeadline::from(start, limit).at - start;
        assert_eq!(at(ms(1000)), ms(980));
        assert_eq!(at(ms(40)), ms(30));
        assert_eq!(at(ms(5)), ms(3));
        assert_eq!(at(ms(1)), Duration::ZERO);
        assert_eq!(RequestDeadline::from(start, ms(1500)).seconds, 1.5);
    }

    #[test]
    fn the_deadline_counts_from_when_the_request_arrived() {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("grpc-timeout", "100m".parse().unwrap());
        let arrived = Instant::now() - Duration::from_millis(30);
        request.extensions_mut().insert(ReceivedAt(arrived));
        let deadline = RequestDeadline::of(&request).unwrap();
        assert_eq!(deadline.at, arrived + Duration::from_millis(80));
        assert!(RequestDeadline::of(&tonic::Request::new(())).is_none());
    }
}
