//! One RPC as the services account for it: when it arrived and its SERVER span; when it
//! ends, its code goes to the request metrics and to the span, in one place.

use std::time::Instant;

use tonic::{Code, Status};
use tracing::Span;

use crate::metrics::record_request;
use crate::telemetry::{record_rpc_status, rpc_server_span};

pub struct RpcCall {
    /// `encoder` or `decoder`: the metrics' component label.
    component: &'static str,
    method: &'static str,
    pub started: Instant,
    pub span: Span,
}

impl RpcCall {
    /// A call of `service`'s `method` (e.g. `icae.v1.EncoderService`, `Compress`) arriving now.
    pub fn start(component: &'static str, service: &'static str, method: &'static str) -> Self {
        RpcCall {
            component,
            method,
            started: Instant::now(),
            span: rpc_server_span(service, method),
        }
    }

    /// The call ended with `code`.
    pub fn finish(&self, code: Code) {
        record_request(self.component, self.method, self.started, code);
        record_rpc_status(&self.span, code);
    }

    /// A unary call ended with `result`.
    pub fn finish_with<T>(&self, result: &Result<T, Status>) {
        self.finish(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
    }
}
