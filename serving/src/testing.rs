//! Helpers for the services' unit tests with fake backends.

use icae_core::ModelSummary;

use crate::{Admission, Readiness};

/// The summary a fake backend reports: vocabulary of 100, hidden size 2, fingerprint "fp".
pub fn fake_summary() -> ModelSummary {
    ModelSummary {
        model: "fake".into(),
        adapter: "fake".into(),
        adapter_trained: true,
        fingerprint: "fp".into(),
        hidden_size: 2,
        vocab_size: 100,
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
