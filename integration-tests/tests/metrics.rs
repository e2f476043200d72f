//! Prometheus metrics after real traffic: histograms with buckets (not summaries), the
//! documented labels (`component`, canonical gRPC code names), HELP text on every metric,
//! counts that moved, token counters equal to the traffic's tokens, the build info, the
//! process metrics, and the autoscaling gauges (docs/metrics.md).

use std::collections::HashMap;
use std::time::Duration;

use icae_proto::v1::{CompressOptions, CompressRequest, Mode};
use integration_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const DOC: &str = "The metrics test compresses this short document and reconstructs it.";

/// One sample line: metric name, labels, value.
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

fn samples(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|line| line.starts_with("icae_"))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    (key.to_string(), value.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap(),
            }
        })
        .collect()
}

impl Sample {
    /// This sample is of metric `name` and its labels include `labels`.
    fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.matches(name, labels))
        .map(|s| s.value)
}

/// The autoscaling gauges, all of which are 0 once a service's traffic has ended.
const GAUGES: [&str; 3] = [
    "icae_requests_in_flight",
    "icae_queue_size",
    "icae_active_sequences",
];

/// Every gauge of `GAUGES` that `component` exports reads 0.
async fn gauges_are_idle(port: u16, component: &str) -> bool {
    let samples = samples(&scrape(port).await);
    GAUGES
        .iter()
        .all(|gauge| value(&samples, gauge, &[("component", component)]).is_none_or(|v| v == 0.0))
}

/// A histogram's buckets are there, cumulative, and `le="+Inf"` equals `_count`, which
/// is at least `min_count`.
fn assert_histogram(
    body: &str,
    samples: &[Sample],
    name: &str,
    labels: &[(&str, &str)],
    min_count: f64,
) {
    assert!(
        body.contains(&format!("# TYPE {name} histogram")),
        "{name} is not a histogram:\n{body}"
    );
    let bucket_name = format!("{name}_bucket");
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.matches(&bucket_name, labels))
        .collect();
    assert!(buckets.len() >= 5, "{name} has {} buckets", buckets.len());
    assert!(
        buckets.windows(2).all(|w| w[0].value <= w[1].value),
        "{name} buckets are not cumulative"
    );
    let count = value(samples, &format!("{name}_count"), labels).unwrap();
    let infinite = value(samples, &bucket_name, &[labels, &[("le", "+Inf")]].concat());
    assert_eq!(infinite, Some(count), "{name}: +Inf bucket vs count");
    assert!(count >= min_count, "{name} count {count} < {min_count}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_traffic_have_buckets_labels_help_and_gauges() {
    let redis = Redis::start();
    let (encoder_port, decoder_port) = (free_port(), free_port());
    let encoder = Service::start(
        Kind::Encoder,
        &redis.url(),
        &["--metrics-port", &encoder_port.to_string()],
    )
    .await;
    let decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &["--metrics-port", &decoder_port.to_string()],
    )
    .await;

    let plain = compress(&encoder.url(), DOC, 0).await.unwrap();
    let handle = plain.documents[0].handle.clone().unwrap();
    let key = handle.key;
    compress_key(&encoder.url(), DOC).await;
    let refined = CompressOptions {
        refine_steps: 2,
        ..Default::default()
    };
    integration_tests::encoder(&encoder.url())
        .await
        .compress(icae_client::compress_one(DOC, refined))
        .await
        .unwrap();
    let refused = integration_tests::encoder(&encoder.url())
        .await
        .compress(CompressRequest::default())
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    let generated = generate(
        &decoder.url(),
        from_keys(&[&key], Mode::Autoencode, "", greedy(4)),
    )
    .await
    .unwrap();
    assert!(generated.finished());
    // The last message of a stream is sent inside the scheduler's step, and the gauges are
    // set after it: wait (bounded) until both services' gauges have come back to 0.
    for (port, component) in [(encoder_port, "encoder"), (decoder_port, "decoder")] {
        assert!(
            eventually(Duration::from_secs(10), || gauges_are_idle(port, component)).await,
            "{component} gauges did not return to 0:\n{}",
            scrape(port).await
        );
    }

    let body = scrape(encoder_port).await;
    let encoder_samples = samples(&body);
    let compress = [("component", "encoder"), ("method", "Compress")];
    assert_eq!(
        value(
            &encoder_samples,
            "icae_requests_total",
            &[&compress[..], &[("code", "OK")]].concat()
        ),
        Some(3.0),
        "{body}"
    );
    let invalid = [&compress[..], &[("code", "INVALID_ARGUMENT")]].concat();
    assert_eq!(
        value(&encoder_samples, "icae_requests_total", &invalid),
        Some(1.0)
    );
    // Errors are requests_total{code!="OK"}: no second counter repeats them.
    assert!(!body.contains("icae_request_errors_total"), "{body}");
    // The three answered Compress requests' tokens (a miss, a hit, a refined miss), and the
    // slots of the two values written.
    assert_eq!(
        value(&encoder_samples, "icae_input_tokens_total", &[]),
        Some(3.0 * tokenize(DOC).len() as f64)
    );
    assert_eq!(
        value(&encoder_samples, "icae_slots_stored_total", &[]),
        Some(2.0 * handle.num_slots as f64)
    );
    let fingerprint = plain.documents[0]
        .handle
        .as_ref()
        .unwrap()
        .model_fingerprint
        .clone();
    let build = [
        ("component", "encoder"),
        ("fingerprint", fingerprint.as_str()),
    ];
    assert_eq!(
        value(&encoder_samples, "icae_build_info", &build),
        Some(1.0),
        "{body}"
    );
    assert_histogram(
        &body,
        &encoder_samples,
        "icae_request_duration_seconds",
        &compress,
        3.0,
    );
    assert_histogram(
        &body,
        &encoder_samples,
        "icae_batch_size",
        &[("component", "encoder")],
        1.0,
    );
    assert_histogram(&body, &encoder_samples, "icae_slot_bytes", &[], 2.0);
    assert_histogram(&body, &encoder_samples, "icae_refine_steps", &[], 1.0);
    assert_histogram(
        &body,
        &encoder_samples,
        "icae_reconstruction_loss",
        &[],
        1.0,
    );
    assert_eq!(
        value(&encoder_samples, "icae_refine_steps_sum", &[]),
        Some(2.0)
    );
    assert_histogram(
        &body,
        &encoder_samples,
        "icae_redis_op_duration_seconds",
        &[("op", "set")],
        1.0,
    );
    assert_eq!(
        value(
            &encoder_samples,
            "icae_cache_lookups_total",
            &[("result", "hit")]
        ),
        Some(1.0)
    );
    for gauge in GAUGES {
        assert_eq!(
            value(&encoder_samples, gauge, &[("component", "encoder")]),
            Some(0.0),
            "{gauge} after the traffic ended:\n{body}"
        );
    }

    let body = scrape(decoder_port).await;
    let decoder_samples = samples(&body);
    let generate_labels = [("component", "decoder"), ("method", "Generate")];
    assert_eq!(
        value(
            &decoder_samples,
            "icae_requests_total",
            &[&generate_labels[..], &[("code", "OK")]].concat()
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(&decoder_samples, "icae_generated_tokens_total", &[]),
        Some(generated.token_ids.len() as f64)
    );
    // The decoder serves the encoder's model: one fingerprint on both build-info series.
    let build = [
        ("component", "decoder"),
        ("fingerprint", fingerprint.as_str()),
    ];
    assert_eq!(
        value(&decoder_samples, "icae_build_info", &build),
        Some(1.0),
        "{body}"
    );
    assert_histogram(
        &body,
        &decoder_samples,
        "icae_request_duration_seconds",
        &generate_labels,
        1.0,
    );
    assert_histogram(
        &body,
        &decoder_samples,
        "icae_time_to_first_token_seconds",
        &[],
        1.0,
    );
    assert_histogram(
        &body,
        &decoder_samples,
        "icae_inter_token_seconds",
        &[],
        1.0,
    );
    assert_histogram(
        &body,
        &decoder_samples,
        "icae_queue_seconds",
        &[("component", "decoder")],
        1.0,
    );
    assert_eq!(
        value(
            &decoder_samples,
            "icae_active_sequences",
            &[("component", "decoder")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &decoder_samples,
            "icae_requests_in_flight",
            &[("component", "decoder")]
        ),
        Some(0.0)
    );

    // The standard process metrics, under their usual names.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let line = body.lines().find(|l| l.starts_with(&format!("{name} ")));
        let reading = line.and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok());
        assert!(reading.is_some_and(|v| v >= 0.0), "{name}:\n{body}");
    }
    let resident = body
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(resident.is_some_and(|bytes| bytes > 50e6), "{resident:?}");

    // Every metric either service exported has HELP text.
    let all: String = scrape(encoder_port).await + &scrape(decoder_port).await;
    for line in all.lines().filter(|l| l.starts_with("# TYPE icae_")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            all.contains(&format!("# HELP {name} ")),
            "{name} has no HELP text"
        );
    }
}
