//! Logs and traces: human or JSON logs, and, when an OTLP endpoint is set, OpenTelemetry
//! spans exported over gRPC with W3C trace context taken from request metadata. Each call
//! is a SERVER span named and attributed as OpenTelemetry's RPC conventions say
//! (`icae.v1.EncoderService/Compress`, `rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`), with the GenAI token counts where they apply; the standard
//! OTEL_* variables name the service and its resource.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tonic::metadata::MetadataMap;
use tonic::Code;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace exporter alive; `shutdown` flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Set up logging (filtered by RUST_LOG, default info) and, with `otlp_endpoint`, trace
/// export. Must run inside the tokio runtime (the exporter's batch task lives there).
pub fn init(
    json: bool,
    otlp_endpoint: Option<&str>,
    service_name: &'static str,
) -> Result<Telemetry, String> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let human = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let machine = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    let endpoint = otlp_endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok());
    let provider = match endpoint {
        Some(endpoint) => {
            check_protocol()?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&endpoint)
                .build()
                .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(service_name))
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)));
    tracing_subscriber::registry()
        .with(filter)
        .with(human)
        .with(machine)
        .with(otel)
        .try_init()
        .map_err(|e| format!("initialising logging: {e}"))?;
    Ok(Telemetry { provider })
}

/// The process's resource: OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME when set (the
/// SDK's detectors read them), else the binary's name as the service name.
fn resource(default_name: &'static str) -> Resource {
    let builder = Resource::builder();
    match std::env::var_os("OTEL_SERVICE_NAME") {
        Some(_) => builder.build(),
        None => builder.with_service_name(default_name).build(),
    }
}

/// Traces go out over OTLP/gRPC only: a protocol variable asking for another is refused at
/// start rather than ignored.
fn check_protocol() -> Result<(), String> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(protocol) = std::env::var(name) {
            if protocol != "grpc" {
                return Err(format!(
                    "{name}={protocol}: traces are exported over OTLP/gRPC only; set it to \
                     grpc or unset it"
                ));
            }
            return Ok(());
        }
    }
    Ok(())
}

/// A call's SERVER span, as OpenTelemetry's RPC conventions name and attribute it; the
/// empty fields are recorded as the call goes ([`record_rpc_status`], [`record_usage`]).
pub fn rpc_server_span(service: &'static str, method: &'static str) -> Span {
    tracing::info_span!(
        "rpc",
        otel.name = %format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
    )
}

/// The call's status code on its span; an ERROR status for the codes the conventions count
/// as server errors (not the client's own mistakes).
pub fn record_rpc_status(span: &Span, code: Code) {
    span.record("rpc.grpc.status_code", code as i64);
    let server_error = matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    );
    if server_error {
        span.record("otel.status_code", "ERROR");
    }
}

/// Tokens read and generated by a call, and why its generation ended, on its span.
pub fn record_usage(
    span: &Span,
    input_tokens: usize,
    output_tokens: Option<usize>,
    finish: Option<&str>,
) {
    span.record("gen_ai.usage.input_tokens", input_tokens as i64);
    if let Some(output) = output_tokens {
        span.record("gen_ai.usage.output_tokens", output as i64);
    }
    if let Some(reason) = finish {
        span.record("gen_ai.response.finish_reasons", reason);
    }
}

impl Telemetry {
    /// Export what is buffered. The SDK's shutdown blocks, so it runs off the async workers.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Make `span` a child of the caller's span when the request carries a `traceparent`.
pub fn continue_trace(span: &Span, metadata: &MetadataMap) {
    let cx = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C traceparent of `span`, when it is part of a trace (trace export on).
pub fn traceparent_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Link `span` to the span a stored traceparent names (the encoder request that made slots).
pub fn link_to(span: &Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}
