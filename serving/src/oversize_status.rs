//! A request message over `--max-message-bytes` is refused by the gRPC library before it
//! reaches the services, with OUT_OF_RANGE. gRPC's own status codes document message size
//! limits as RESOURCE_EXHAUSTED, and that is what the services answer for every other limit,
//! so the refusal is given that code (its message, which names the size and the limit, is
//! kept). The services never answer OUT_OF_RANGE themselves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::body::Body;
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeStatusLayer;

impl<S> Layer<S> for OversizeStatusLayer {
    type Service = OversizeStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizeStatus { inner }
    }
}

#[derive(Debug, Clone)]
pub struct OversizeStatus<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for OversizeStatus<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
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
    use super::*;

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
