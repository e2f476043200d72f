//! Helpers for the services' unit tests with fake backends.

use icae_core::ModelSummary;

use crate::admission::Admission;
use crate::health::Readiness;

/// The summary a fake backend reports: vocabulary of 100, hidden size 2, fingerprint "fp".
pub fn fake_summary() -> ModelSummary {
    ModelSummary {
        model: "fake".into(),
        adapter: "fake".into(),
        adapter_trained: true,
        fingerprint: "fp".into(),
        hidden_size: 2,
        vocab_size: 100,
        context_length: 64,
        mem_size: 1,
        compression_rate: 4,
        device: "cpu".into(),
        dtype: "f32".into(),
        kv_bytes_per_position: 0,
    }
}

/// Readiness of `service`, not mounted anywhere (call inside a tokio runtime).
pub async fn unmounted_readiness(service: &'static str) -> Readiness {
    Readiness::new(service, Admission::new(8, "test")).await.0
}

/// Poll `condition` every 5 ms for up to 5 s; panic naming `what` if it never holds.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A service binary's command line, as its tests see it.
pub trait ServiceCommand: clap::Parser {
    fn service_args(&self) -> &crate::config::ServiceArgs;
}

/// Defaults suit a pod (every interface, the binary's own ports), loopback stays
/// selectable, and the last of a repeated flag wins (scripts append to a base command line).
pub fn assert_pod_ready_defaults<C: ServiceCommand>(binary: &str, defaults: crate::config::Ports) {
    let config = C::try_parse_from([binary, "--model", "m", "--adapter", "a"]).unwrap();
    let args = config.service_args();
    assert_eq!(args.host, "0.0.0.0");
    assert_eq!(args.metrics_host, "0.0.0.0");
    assert_eq!(args.ports(defaults), defaults);
    let config = C::try_parse_from([
        binary,
        "--model",
        "m",
        "--adapter",
        "a",
        "--host",
        "127.0.0.1",
        "--port",
        "7",
        "--metrics-port",
        "0",
        "--metrics-port",
        "8",
    ])
    .unwrap();
    let args = config.service_args();
    assert_eq!(args.host, "127.0.0.1");
    assert_eq!(
        args.ports(defaults),
        crate::config::Ports {
            grpc: 7,
            metrics: 8
        }
    );
}
