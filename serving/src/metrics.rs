//! Prometheus metrics: every metric's name, unit, help text and histogram buckets in one
//! place, the /metrics endpoint, and the per-request recording both services use.
//!
//! Durations are histograms with buckets (not summaries), so they aggregate across pods and
//! work with `histogram_quantile`. The gauges `icae_requests_in_flight`, `icae_queue_size`
//! and `icae_active_sequences` are the autoscaling signals. A series says which service it
//! is from by its `component` label (`service` is what Prometheus' operator adds for the
//! Kubernetes Service), and status codes by their canonical gRPC names (`OK`,
//! `INVALID_ARGUMENT`, ...). docs/metrics.md lists them all.

use std::net::SocketAddr;
use std::time::Instant;

use icae_core::ModelSummary;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tonic::Code;

pub const REQUESTS_TOTAL: &str = "icae_requests_total";
pub const REQUEST_DURATION: &str = "icae_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "icae_requests_in_flight";
pub const QUEUE_SIZE: &str = "icae_queue_size";
pub const QUEUE_SECONDS: &str = "icae_queue_seconds";
pub const ACTIVE_SEQUENCES: &str = "icae_active_sequences";
pub const BATCH_SIZE: &str = "icae_batch_size";
pub const TIME_TO_FIRST_TOKEN: &str = "icae_time_to_first_token_seconds";
pub const INTER_TOKEN: &str = "icae_inter_token_seconds";
pub const GENERATED_TOKENS_TOTAL: &str = "icae_generated_tokens_total";
pub const GENERATIONS_CANCELLED_TOTAL: &str = "icae_generations_cancelled_total";
pub const INPUT_TOKENS_TOTAL: &str = "icae_input_tokens_total";
pub const SLOTS_STORED_TOTAL: &str = "icae_slots_stored_total";
pub const BUILD_INFO: &str = "icae_build_info";
pub const SLOT_BYTES: &str = "icae_slot_bytes";
pub const CACHE_LOOKUPS_TOTAL: &str = "icae_cache_lookups_total";
pub const CACHE_REPAIRS_TOTAL: &str = "icae_cache_repairs_total";
pub const REDIS_OP_DURATION: &str = "icae_redis_op_duration_seconds";
pub const REFINE_STEPS: &str = "icae_refine_steps";
pub const RECONSTRUCTION_LOSS: &str = "icae_reconstruction_loss";

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];
const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const REDIS_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];
const REFINE_STEP_BUCKETS: &[f64] = &[0.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0];
const LOSS_BUCKETS: &[f64] = &[0.001, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
const BYTES_BUCKETS: &[f64] = &[
    4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// Serve Prometheus metrics on `host:port` (port 0: none).
pub fn init_metrics(host: &str, port: u16) -> Result<(), String> {
    if port == 0 {
        return Ok(());
    }
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("metrics address {host}:{port}: {e}"))?;
    let buckets = [
        (REQUEST_DURATION, LATENCY_BUCKETS),
        (QUEUE_SECONDS, FIRST_TOKEN_BUCKETS),
        (TIME_TO_FIRST_TOKEN, FIRST_TOKEN_BUCKETS),
        (INTER_TOKEN, INTER_TOKEN_BUCKETS),
        (REDIS_OP_DURATION, REDIS_BUCKETS),
        (BATCH_SIZE, BATCH_BUCKETS),
        (SLOT_BYTES, BYTES_BUCKETS),
        (REFINE_STEPS, REFINE_STEP_BUCKETS),
        (RECONSTRUCTION_LOSS, LOSS_BUCKETS),
    ];
    let mut builder = PrometheusBuilder::new().with_http_listener(addr);
    for (name, bounds) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), bounds)
            .map_err(|e| format!("buckets of {name}: {e}"))?;
    }
    builder
        .install()
        .map_err(|e| format!("starting the metrics endpoint on {addr}: {e}"))?;
    describe();
    crate::process_metrics::spawn();
    Ok(())
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests finished, by component, method and gRPC status code (OK included)."
    );
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Time from receiving a request to its last response message, in seconds, by component and method.");
    describe_gauge!(REQUESTS_IN_FLIGHT, Unit::Count, "Requests admitted and not yet finished (a stream counts until it ends), by component: an autoscaling signal.");
    describe_gauge!(
        QUEUE_SIZE,
        Unit::Count,
        "Jobs waiting for the model thread, by component: an autoscaling signal."
    );
    describe_histogram!(
        QUEUE_SECONDS,
        Unit::Seconds,
        "Time a job waited for the model thread, in seconds, by component."
    );
    describe_gauge!(ACTIVE_SEQUENCES, Unit::Count, "Work on the model thread now, by component: documents being compressed (encoder) or sequences being generated (decoder): an autoscaling signal.");
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "Documents (encoder) or sequences (decoder) per model batch, by component."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time from queueing a generation to its first token, in seconds."
    );
    describe_histogram!(INTER_TOKEN, Unit::Seconds, "Duration of one batched decoding step (the time between two tokens of a stream), in seconds.");
    describe_counter!(
        GENERATED_TOKENS_TOTAL,
        Unit::Count,
        "Tokens generated by finished generations."
    );
    describe_counter!(
        GENERATIONS_CANCELLED_TOTAL,
        Unit::Count,
        "Generations stopped before their end because their client went away (the stream \
         was dropped or its deadline passed)."
    );
    describe_counter!(
        INPUT_TOKENS_TOTAL,
        Unit::Count,
        "Tokens of the documents of answered Compress requests (encoder; cache hits \
         included)."
    );
    describe_counter!(
        SLOTS_STORED_TOTAL,
        Unit::Count,
        "Slot vectors written to Redis (encoder): the decoder positions the stored documents \
         take."
    );
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "1, labelled with what this process serves once its model is loaded: component, \
         version, model, adapter, fingerprint (encoders and decoders must agree), dtype, \
         device."
    );
    describe_histogram!(
        SLOT_BYTES,
        Unit::Bytes,
        "Size of one stored slot value, in bytes."
    );
    describe_histogram!(
        REFINE_STEPS,
        Unit::Count,
        "Refinement steps run on one document's slots (encoder; fewer than asked once the \
         target loss was reached)."
    );
    describe_histogram!(
        RECONSTRUCTION_LOSS,
        Unit::Count,
        "Reconstruction loss (nats per token) of one stored document's slots, when measured \
         (encoder: refined slots, and plain ones whose client asked for the score)."
    );
    describe_counter!(
        CACHE_LOOKUPS_TOTAL,
        Unit::Count,
        "Encoder cache lookups, by result (hit or miss)."
    );
    describe_counter!(
        CACHE_REPAIRS_TOTAL,
        Unit::Count,
        "Stored values the encoder found unusable under its key and recomputed, by reason \
         (undecodable, fingerprint, digest, shape, slot_dtype, refinement, wrongtype)."
    );
    describe_histogram!(
        REDIS_OP_DURATION,
        Unit::Seconds,
        "Duration of one Redis round trip, in seconds, by op (get, getex, set, ttl, info); the \
         commands of all keys of one request are one round trip (one pipeline)."
    );
}

/// Count a finished request and record its duration, labelled by component, method and
/// code.
pub fn record_request(component: &'static str, method: &'static str, started: Instant, code: Code) {
    let code = code_name(code);
    metrics::counter!(REQUESTS_TOTAL, "component" => component, "method" => method, "code" => code)
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "component" => component, "method" => method)
        .record(started.elapsed().as_secs_f64());
}

/// A status code as gRPC names it (and OpenTelemetry's `rpc.grpc.status_code` text).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What this process serves, as a series of value 1 (`icae_build_info`).
pub fn record_build_info(component: &'static str, summary: &ModelSummary) {
    metrics::gauge!(
        BUILD_INFO,
        "component" => component,
        "version" => env!("CARGO_PKG_VERSION"),
        "model" => summary.model.clone(),
        "adapter" => summary.adapter.clone(),
        "fingerprint" => summary.fingerprint.clone(),
        "dtype" => summary.dtype.clone(),
        "device" => summary.device.clone(),
    )
    .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_grpc_names() {
        // The names of the gRPC status codes document (statuscodes.md), by number.
        let names = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        for (number, name) in names.iter().enumerate() {
            assert_eq!(code_name(Code::from_i32(number as i32)), *name);
        }
    }
}
