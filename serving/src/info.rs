//! The `Info` answer both services give.

use icae_core::ModelSummary;
use icae_proto::v1::InfoResponse;

use crate::model_thread::ModelState;

pub fn info_response(
    service: &str,
    summary: &ModelSummary,
    limits: icae_proto::v1::Limits,
    state: &ModelState,
) -> InfoResponse {
    InfoResponse {
        service: service.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: name_only(&summary.model),
        adapter: name_only(&summary.adapter),
        adapter_trained: summary.adapter_trained,
        model_fingerprint: summary.fingerprint.clone(),
        hidden_size: summary.hidden_size as u32,
        mem_size: summary.mem_size as u32,
        compression_rate: summary.compression_rate as u32,
        device: summary.device.clone(),
        dtype: summary.dtype.clone(),
        limits: Some(limits),
        active_sequences: state.active() as u32,
        queue_size: state.queued() as u32,
        kv_bytes_per_position: summary.kv_bytes_per_position,
        // The encoder sets its --slot-dtype; the decoder reads slots of either dtype.
        slot_dtype: String::new(),
    }
}

/// The last component of a path: where files lie on the server is not the client's
/// business (the fingerprint identifies the model exactly).
fn name_only(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_reduced_to_names() {
        assert_eq!(name_only("/home/me/.cache/icae/models/smollm2"), "smollm2");
        assert_eq!(name_only("adapters/default/"), "default");
        assert_eq!(name_only(""), "");
    }
}
