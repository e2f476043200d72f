//! Where the gRPC library answers before the services do, the services' own answer instead:
//! one layer in front of every service that
//! - computes each request's deadline from when it arrived ([`RequestDeadline`], left in
//!   its extensions for the services) and, when the response has not begun by then,
//!   answers DEADLINE_EXCEEDED with the services' message and drops the work (the library's own timer, a little later,
//!   would answer CANCELLED "Timeout expired"; see request_deadline.rs). It sees the request
//!   before its body is read, which under load can take longer than a short deadline;
//! - gives a request message over `--max-message-bytes`, which the library refuses with
//!   OUT_OF_RANGE before the services see it, RESOURCE_EXHAUSTED: the code gRPC documents
//!   for message size limits and the one the services give every other limit (the message,
//!   with the size and the limit, is kept). The services never answer OUT_OF_RANGE.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderValue;
use tonic::body::Body;
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::ServiceError;
use crate::metadata::grpc_timeout;
use crate::request_deadline::RequestDeadline;

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcEdgeLayer;

impl<S> Layer<S> for GrpcEdgeLayer {
    type Service = GrpcEdge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcEdge { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcEdge<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for GrpcEdge<S>
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
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| grpc_timeout(value.to_str().ok()?))
            .map(|limit| RequestDeadline::from(received, limit));
        if let Some(deadline) = deadline {
            // For the services (RequestDeadline::of): the same deadline, parsed once.
            request.extensions_mut().insert(deadline);
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = match deadline {
                None => response.await?,
                Some(deadline) => match tokio::time::timeout_at(deadline.at.into(), response).await
                {
                    Ok(response) => response?,
                    Err(_) => {
                        let status: tonic::Status =
                            ServiceError::DeadlineExceeded(deadline.seconds).into();
                        status.into_http()
                    }
                },
            };
            relabel_oversize(response.headers_mut());
            Ok(response)
        })
    }
}

/// A refusal before the call (status in the headers) of OUT_OF_RANGE becomes
/// RESOURCE_EXHAUSTED.
fn relabel_oversize(headers: &mut http::HeaderMap) {
    let out_of_range = HeaderValue::from(Code::OutOfRange as i32);
    if headers.get("grpc-status") == Some(&out_of_range) {
        headers.insert(
            "grpc-status",
            HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An inner service that answers at once with what the edge left in the request.
    #[derive(Clone)]
    struct Echo;

    impl Service<http::Request<()>> for Echo {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let mut response = http::Response::new(Body::empty());
            if let Some(deadline) = request.extensions().get::<RequestDeadline>() {
                response.extensions_mut().insert(*deadline);
            }
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn the_deadline_counts_from_when_the_request_arrived() {
        let mut edge = GrpcEdgeLayer.layer(Echo);
        let request = http::Request::builder()
            .header("grpc-timeout", "100m")
            .body(())
            .unwrap();
        let before = Instant::now();
        let response = edge.call(request).await.unwrap();
        let after = Instant::now();
        let deadline = *response.extensions().get::<RequestDeadline>().unwrap();
        // 100 ms less the 20 ms margin, from the moment the edge saw the request.
        let ahead = Duration::from_millis(80);
        assert!(before + ahead <= deadline.at && deadline.at <= after + ahead);
        assert_eq!(deadline.seconds, 0.1);
        let plain = edge.call(http::Request::new(())).await.unwrap();
        assert!(plain.extensions().get::<RequestDeadline>().is_none());
    }

    #[test]
    fn out_of_range_in_the_headers_becomes_resource_exhausted() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from(11));
        headers.insert("grpc-message", HeaderValue::from_static("too large"));
        relabel_oversize(&mut headers);
        assert_eq!(headers["grpc-status"], "8");
        assert_eq!(headers["grpc-message"], "too large");

        let mut other = http::HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from(3));
        relabel_oversize(&mut other);
        assert_eq!(other["grpc-status"], "3");
    }
}
