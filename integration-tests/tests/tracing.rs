//! OpenTelemetry: with --otlp-endpoint both services export spans to a collector (a fake
//! one here, on loopback). Each call is a SERVER span named and attributed as the RPC
//! semantic conventions say, with GenAI token counts; OTEL_SERVICE_NAME and
//! OTEL_RESOURCE_ATTRIBUTES name the resource. The encoder continues the caller's trace and
//! stores its own traceparent with the slots; the decoder links its span to that encoder
//! span.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use icae_proto::v1::Mode;
use integration_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_stream::wrappers::TcpListenerStream;

/// A span received, with its resource's attributes.
type ResourceSpan = (Vec<KeyValue>, Span);

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ResourceSpan>>>,
}

/// The value of attribute `key`, as text (numbers and strings alike).
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .clone()?
        .value?;
    Some(match value {
        Value::StringValue(s) => s,
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (attributes.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn spans_follow_the_caller_and_link_decoder_to_encoder() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let redis = Redis::start();
    let flags = ["--otlp-endpoint", endpoint.as_str()];
    let encoder = Service::start(Kind::Encoder, &redis.url(), &flags).await;
    // The decoder is named by the standard variables (its child process inherits them; this
    // file's one test is alone in its process).
    std::env::set_var("OTEL_SERVICE_NAME", "icae-decoder-under-test");
    std::env::set_var("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test");
    let decoder = Service::start(Kind::Decoder, &redis.url(), &flags).await;
    std::env::remove_var("OTEL_SERVICE_NAME");
    std::env::remove_var("OTEL_RESOURCE_ATTRIBUTES");

    let mut request = tonic::Request::new(icae_proto::v1::CompressRequest {
        documents: vec![text_doc("A traced document.")],
        options: None,
    });
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let response = integration_tests::encoder(&encoder.url())
        .await
        .compress(request)
        .await
        .unwrap()
        .into_inner();
    let handle = response.documents[0].handle.clone().unwrap();
    let key = handle.key.clone();
    let generated = generate(
        &decoder.url(),
        from_keys(&[&key], Mode::Continue, "", greedy(2)),
    )
    .await
    .unwrap();
    // A refused call: NOT_FOUND is the client's problem, not a server error.
    let missing = format!("{}{}", &key[..key.len() - 64], "0".repeat(64));
    let mut refused = tonic::Request::new(from_keys(&[&missing], Mode::Continue, "", greedy(2)));
    refused
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let refused = integration_tests::decoder(&decoder.url())
        .await
        .generate_once(refused)
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::NotFound);

    // The batch exporters flush on shutdown: stop both services gracefully.
    let (mut encoder, mut decoder) = (encoder, decoder);
    encoder.sigterm();
    decoder.sigterm();
    assert!(encoder
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
    assert!(decoder
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));

    let spans = collector.spans.lock().unwrap().clone();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let named = |name: &str| {
        spans
            .iter()
            .find(|(_, s)| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
            .clone()
    };
    let (encoder_resource, compress) = named("icae.v1.EncoderService/Compress");
    assert_eq!(
        hex(&compress.trace_id),
        CLIENT_TRACE,
        "the encoder continues the caller's trace"
    );
    assert_eq!(hex(&compress.parent_span_id), CLIENT_SPAN);
    assert_eq!(compress.kind, SpanKind::Server as i32);
    let attributes = &compress.attributes;
    for (key, expected) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "icae.v1.EncoderService"),
        ("rpc.method", "Compress"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(
            attribute(attributes, key).as_deref(),
            Some(expected),
            "{key}"
        );
    }
    assert_eq!(
        attribute(attributes, "gen_ai.usage.input_tokens"),
        Some(handle.num_tokens.to_string())
    );
    assert_eq!(
        attribute(&encoder_resource, "service.name").as_deref(),
        Some("encoder-svc")
    );

    let (decoder_resource, generate) = named("icae.v1.DecoderService/Generate");
    assert_eq!(generate.kind, SpanKind::Server as i32);
    assert!(
        generate
            .links
            .iter()
            .any(|l| l.trace_id == compress.trace_id && l.span_id == compress.span_id),
        "the decoder span links to the encoder span that made the slots: {:?}",
        generate.links
    );
    let last = generated.last.as_ref().unwrap();
    for (key, expected) in [
        ("rpc.method", "Generate".to_string()),
        ("rpc.grpc.status_code", "0".to_string()),
        (
            "gen_ai.usage.input_tokens",
            last.prompt_positions.to_string(),
        ),
        (
            "gen_ai.usage.output_tokens",
            last.generated_tokens.to_string(),
        ),
    ] {
        assert_eq!(
            attribute(&generate.attributes, key),
            Some(expected),
            "{key}"
        );
    }
    assert!(attribute(&generate.attributes, "gen_ai.response.finish_reasons").is_some());
    assert_eq!(
        attribute(&decoder_resource, "service.name").as_deref(),
        Some("icae-decoder-under-test")
    );
    assert_eq!(
        attribute(&decoder_resource, "deployment.environment").as_deref(),
        Some("test")
    );

    let (_, refused) = named("icae.v1.DecoderService/GenerateOnce");
    assert_eq!(
        hex(&refused.trace_id),
        CLIENT_TRACE,
        "the decoder continues the caller's trace too"
    );
    assert_eq!(
        attribute(&refused.attributes, "rpc.grpc.status_code").as_deref(),
        Some("5")
    );
    let status = refused.status.unwrap_or_default().code;
    assert_ne!(
        status,
        StatusCode::Error as i32,
        "NOT_FOUND is no server error"
    );
}
