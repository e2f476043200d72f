//! OpenTelemetry: with --otlp-endpoint both services export spans to a collector (a fake
//! one here, on loopback). The encoder continues the caller's trace and stores its own
//! traceparent with the slots; the decoder links its span to that encoder span.

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
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
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
    let decoder = Service::start(Kind::Decoder, &redis.url(), &flags).await;

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
    let key = response.documents[0].handle.as_ref().unwrap().key.clone();
    generate(
        &decoder.url(),
        from_keys(&[&key], Mode::Continue, "", greedy(2)),
    )
    .await
    .unwrap();

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
    let compress = spans
        .iter()
        .find(|s| s.name == "compress")
        .unwrap_or_else(|| panic!("no compress span in {spans:?}"));
    assert_eq!(
        hex(&compress.trace_id),
        CLIENT_TRACE,
        "the encoder continues the caller's trace"
    );
    assert_eq!(hex(&compress.parent_span_id), CLIENT_SPAN);
    let generate = spans
        .iter()
        .find(|s| s.name == "generate")
        .expect("no generate span");
    assert!(
        generate
            .links
            .iter()
            .any(|l| l.trace_id == compress.trace_id && l.span_id == compress.span_id),
        "the decoder span links to the encoder span that made the slots: {:?}",
        generate.links
    );
}
