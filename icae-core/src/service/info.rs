//! The `Info` answer both services give.

use icae_proto::v1::{InfoResponse, Limits};

use super::runtime::CommonArgs;
use super::ModelThread;
use crate::ModelSummary;

/// Limits both services share, from their flags.
pub fn common_limits(common: &CommonArgs) -> Limits {
    Limits {
        max_input_tokens: common.max_input_tokens as u32,
        max_new_tokens: common.max_new_tokens as u32,
        max_concurrent_requests: common.max_concurrent_requests as u32,
        max_message_bytes: common.max_message_bytes as u64,
        default_ttl_seconds: common.slot_ttl_seconds,
        max_documents_per_request: 0,
        max_spans: 0,
    }
}

pub fn info_response<J: Send + 'static>(
    service: &str,
    summary: &ModelSummary,
    limits: Limits,
    thread: &ModelThread<J>,
) -> InfoResponse {
    InfoResponse {
        service: service.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: summary.model.clone(),
        adapter: summary.adapter.clone(),
        adapter_trained: summary.adapter_trained,
        model_fingerprint: summary.fingerprint.clone(),
        hidden_size: summary.hidden_size as u32,
        mem_size: summary.mem_size as u32,
        compression_rate: summary.compression_rate as u32,
        device: summary.device.clone(),
        dtype: summary.dtype.clone(),
        limits: Some(limits),
        active_sequences: thread.state.active() as u32,
        queue_size: thread.state.queued() as u32,
        kv_bytes_per_position: summary.kv_bytes_per_position,
    }
}
