//! The slot value format: a safetensors blob with tensor `slots` (`[n, hidden]`) and
//! metadata, readable by `safetensors.torch.load` in Python.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};
use thiserror::Error;

pub const SLOT_FORMAT_VERSION: u32 = 1;
pub const SLOTS_TENSOR: &str = "slots";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMeta {
    pub fingerprint: String,
    pub num_tokens: usize,
    pub num_segments: usize,
    /// Unix seconds.
    pub created_at: u64,
    /// W3C traceparent of the encoder request, when there was one.
    pub traceparent: Option<String>,
}

/// A slot value that cannot be used: corrupt bytes or a format we do not know.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SlotError {
    #[error("slot value is not a valid safetensors blob: {0}")]
    Corrupt(String),
    #[error("slot value has no tensor \"slots\"")]
    MissingTensor,
    #[error("slot tensor has shape {0:?}, expected [n, hidden] with n >= 1")]
    BadShape(Vec<usize>),
    #[error("slot tensor has dtype {0}, expected F32, BF16 or F16")]
    BadDtype(String),
    #[error("slot metadata field {field} is {value:?}: {reason}")]
    BadMeta {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "slot format version {0} is not supported (this build reads version {SLOT_FORMAT_VERSION})"
    )]
    Version(String),
    #[error("slot tensor contains NaN or infinite values")]
    NonFinite,
}

/// Serialize `slots` (any device; f32, bf16 or f16) with its metadata.
pub fn encode_slots(slots: &Tensor, meta: &SlotMeta) -> Result<Vec<u8>, SlotError> {
    let slots = slots.to_device(tch::Device::Cpu).contiguous();
    let (dtype, elem) = match slots.kind() {
        Kind::Float => (Dtype::F32, 4),
        Kind::BFloat16 => (Dtype::BF16, 2),
        Kind::Half => (Dtype::F16, 2),
        other => return Err(SlotError::BadDtype(format!("{other:?}"))),
    };
    let shape: Vec<usize> = slots.size().iter().map(|&d| d as usize).collect();
    let mut data = vec![0u8; slots.numel() * elem];
    slots.copy_data_u8(&mut data, slots.numel());
    let view =
        TensorView::new(dtype, shape, &data).map_err(|e| SlotError::Corrupt(format!("{e:?}")))?;
    let mut metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "icae_format_version".to_string(),
            SLOT_FORMAT_VERSION.to_string(),
        ),
        ("fingerprint".to_string(), meta.fingerprint.clone()),
        ("num_tokens".to_string(), meta.num_tokens.to_string()),
        ("num_segments".to_string(), meta.num_segments.to_string()),
        ("created_at".to_string(), meta.created_at.to_string()),
    ]);
    if let Some(tp) = &meta.traceparent {
        metadata.insert("traceparent".to_string(), tp.clone());
    }
    safetensors::serialize([(SLOTS_TENSOR, view)], &Some(metadata))
        .map_err(|e| SlotError::Corrupt(format!("{e:?}")))
}

/// Parse a slot value into a CPU tensor (`[n, hidden]`, its stored dtype) and its metadata.
pub fn decode_slots(bytes: &[u8]) -> Result<(Tensor, SlotMeta), SlotError> {
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| SlotError::Corrupt(format!("{e:?}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| SlotError::Corrupt(format!("{e:?}")))?;
    let view = st
        .tensor(SLOTS_TENSOR)
        .map_err(|_| SlotError::MissingTensor)?;
    let shape = view.shape().to_vec();
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return Err(SlotError::BadShape(shape));
    }
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        other => return Err(SlotError::BadDtype(format!("{other:?}"))),
    };
    let empty = HashMap::new();
    let map = header.metadata().as_ref().unwrap_or(&empty);
    let field = |name: &'static str| map.get(name).cloned();
    let version = field("icae_format_version").unwrap_or_default();
    if version != SLOT_FORMAT_VERSION.to_string() {
        return Err(SlotError::Version(version));
    }
    let number = |name: &'static str| -> Result<u64, SlotError> {
        let value = field(name).unwrap_or_default();
        value.parse().map_err(|_| SlotError::BadMeta {
            field: name,
            value,
            reason: "not an unsigned integer".into(),
        })
    };
    let fingerprint = field("fingerprint").unwrap_or_default();
    if fingerprint.is_empty() {
        return Err(SlotError::BadMeta {
            field: "fingerprint",
            value: fingerprint,
            reason: "is empty".into(),
        });
    }
    let meta = SlotMeta {
        fingerprint,
        num_tokens: number("num_tokens")? as usize,
        num_segments: number("num_segments")? as usize,
        created_at: number("created_at")?,
        traceparent: field("traceparent"),
    };
    let dims = [shape[0] as i64, shape[1] as i64];
    let tensor = Tensor::f_from_data_size(view.data(), &dims, kind)
        .map_err(|e| SlotError::Corrupt(e.to_string()))?;
    let finite = tensor.isfinite().all().int64_value(&[]) == 1;
    if !finite {
        return Err(SlotError::NonFinite);
    }
    Ok((tensor, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SlotMeta {
        SlotMeta {
            fingerprint: "abc123".into(),
            num_tokens: 100,
            num_segments: 1,
            created_at: 1_700_000_000,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }
    }

    #[test]
    fn round_trip_keeps_values_and_metadata() {
        let slots = Tensor::randn([8, 16], (Kind::Float, tch::Device::Cpu));
        let bytes = encode_slots(&slots, &meta()).unwrap();
        let (back, m) = decode_slots(&bytes).unwrap();
        assert_eq!(m, meta());
        assert!(back.equal(&slots));
    }

    #[test]
    fn non_finite_values_are_refused() {
        let slots = Tensor::from_slice(&[1.0f32, f32::NAN]).view([1, 2]);
        let bytes = encode_slots(&slots, &meta()).unwrap();
        assert_eq!(decode_slots(&bytes).unwrap_err(), SlotError::NonFinite);
    }
}
