//! The slot value format: a safetensors blob with tensor `slots` (`[n, hidden]`) and
//! metadata, readable by `safetensors.torch.load` in Python.

use std::collections::HashMap;

use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};
use thiserror::Error;

pub const SLOT_FORMAT_VERSION: u32 = 1;
pub const SLOTS_TENSOR: &str = "slots";
/// Most bytes a slot value's header (its JSON: shape, dtype, metadata) may have. Ours take
/// under 1 KiB; the bound lets a reader fetch a header before the data and refuse a value
/// whose header alone would be large.
pub const MAX_SLOT_HEADER_BYTES: usize = 64 * 1024;
/// The header field holding [`SlotHeader::data_digest`].
const DATA_DIGEST_FIELD: &str = "data_sha256";
/// Bytes before the header: its length, little-endian u64 (the safetensors layout).
const HEADER_LENGTH_BYTES: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct SlotMeta {
    pub fingerprint: String,
    pub num_tokens: usize,
    pub num_segments: usize,
    /// Unix seconds.
    pub created_at: u64,
    /// W3C traceparent of the encoder request, when there was one.
    pub traceparent: Option<String>,
    /// [`token_digest`] of the document the slots were made from (absent in values written
    /// before it was recorded): lets a cache hit prove it belongs to its key.
    pub token_digest: Option<String>,
    /// How the slots were made (plain or refined) and how well they read back.
    pub fidelity: SlotFidelity,
}

/// Refinement and the fidelity score of a slot value. A plain compression that measured
/// nothing writes none of these fields, so its value is what it always was.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SlotFidelity {
    /// Refinement steps asked for (0: plain ICAE) and the target loss, if any: with the
    /// document they decide the value, so the key names them too.
    pub refine_steps: usize,
    pub target_loss: Option<f64>,
    /// Steps actually run (fewer than asked once the target loss was reached).
    pub steps_run: usize,
    /// Teacher-forced AE loss (nats per token) of the slots as stored, when measured.
    pub reconstruction_loss: Option<f64>,
}

impl SlotFidelity {
    fn write(&self, metadata: &mut HashMap<String, String>) {
        if self.refine_steps > 0 {
            metadata.insert("refine_steps".into(), self.refine_steps.to_string());
            metadata.insert("refine_steps_run".into(), self.steps_run.to_string());
        }
        if let Some(target) = self.target_loss {
            metadata.insert("refine_target_loss".into(), target.to_string());
        }
        if let Some(loss) = self.reconstruction_loss {
            metadata.insert("reconstruction_loss".into(), loss.to_string());
        }
    }

    fn read(map: &HashMap<String, String>) -> Result<Self, SlotError> {
        fn parsed<T: std::str::FromStr>(
            map: &HashMap<String, String>,
            name: &'static str,
            finite: impl Fn(&T) -> bool,
        ) -> Result<Option<T>, SlotError> {
            match map.get(name) {
                None => Ok(None),
                Some(value) => match value.parse::<T>() {
                    Ok(v) if finite(&v) => Ok(Some(v)),
                    _ => Err(SlotError::BadMeta {
                        field: name,
                        value: quoted(value),
                        reason: "not a number this field can hold".into(),
                    }),
                },
            }
        }
        let loss = |v: &f64| v.is_finite() && *v >= 0.0;
        Ok(SlotFidelity {
            refine_steps: parsed(map, "refine_steps", |_: &usize| true)?.unwrap_or(0),
            steps_run: parsed(map, "refine_steps_run", |_: &usize| true)?.unwrap_or(0),
            target_loss: parsed(map, "refine_target_loss", loss)?,
            reconstruction_loss: parsed(map, "reconstruction_loss", loss)?,
        })
    }
}

/// What a slot value's header says, read without touching the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotHeader {
    /// `[n, hidden]`.
    pub shape: [usize; 2],
    /// The stored element type: f32, bf16 (`--slot-dtype`) or f16 (written elsewhere).
    pub kind: Kind,
    pub meta: SlotMeta,
    /// Bytes of the whole value the header describes (length, header, data).
    pub value_bytes: usize,
    /// SHA-256 (hex) of the tensor's data bytes, checked wherever the data is read (absent
    /// in values written before it was recorded).
    pub data_digest: Option<String>,
}

/// A metadata value as errors show it: at most 64 characters (a header may hold 64 KiB).
fn quoted(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}… ({} bytes)", &value[..end], value.len()),
        None => value.to_string(),
    }
}

/// SHA-256 (hex) of bytes.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 (hex) of token ids as little-endian u32: the content address of a document.
pub fn token_digest(token_ids: &[u32]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for id in token_ids {
        hasher.update(id.to_le_bytes());
    }
    hex::encode(hasher.finalize())
}

/// A slot value that cannot be used: corrupt bytes or a format we do not know.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SlotError {
    #[error("slot value is not a valid safetensors blob: {0}")]
    Corrupt(String),
    #[error("slot value has no tensor \"slots\"")]
    MissingTensor,
    #[error("slot tensor has shape {0:?}, expected [n, hidden] with n >= 1 and this model's hidden size")]
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
    #[error("slot data does not match the checksum in its header (data_sha256)")]
    Checksum,
    #[error(
        "the value holds the slots of another document (token digest {found}; the key names \
         {expected})"
    )]
    OtherDocument { found: String, expected: String },
}

/// Serialize `slots` (any device; f32, bf16 or f16) in its own dtype with its metadata;
/// `SlotDtype::cast` first to store it in the `--slot-dtype`.
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
    if let Some(digest) = &meta.token_digest {
        metadata.insert("token_sha256".to_string(), digest.clone());
    }
    meta.fidelity.write(&mut metadata);
    metadata.insert(DATA_DIGEST_FIELD.to_string(), sha256_hex(&data));
    safetensors::serialize([(SLOTS_TENSOR, view)], &Some(metadata))
        .map_err(|e| SlotError::Corrupt(format!("{e:?}")))
}

/// Read a slot value's header (shape, dtype, metadata) and check that the data it describes
/// is all there, without decoding the tensor: enough to verify a cache hit.
pub fn inspect_slots(bytes: &[u8]) -> Result<SlotHeader, SlotError> {
    parse(bytes)
}

/// How many bytes from the start of a value hold its header, from the first 8 (or more) of
/// them; refused when the header is over [`MAX_SLOT_HEADER_BYTES`].
pub fn header_bytes(prefix: &[u8]) -> Result<usize, SlotError> {
    let length: [u8; HEADER_LENGTH_BYTES] = prefix
        .get(..HEADER_LENGTH_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            SlotError::Corrupt(format!(
                "the value has {} bytes, fewer than the {HEADER_LENGTH_BYTES} of a header length",
                prefix.len()
            ))
        })?;
    let length = u64::from_le_bytes(length);
    if length > MAX_SLOT_HEADER_BYTES as u64 {
        return Err(SlotError::Corrupt(format!(
            "the header has {length} bytes, more than the {MAX_SLOT_HEADER_BYTES} allowed"
        )));
    }
    Ok(HEADER_LENGTH_BYTES + length as usize)
}

/// Read the header from the start of a value (at least [`header_bytes`] of it), without
/// the data: what a reader checks before fetching the rest. `value_bytes` says how much to
/// fetch; [`decode_slots`] checks the whole value again.
pub fn inspect_slot_prefix(prefix: &[u8]) -> Result<SlotHeader, SlotError> {
    let end = header_bytes(prefix)?;
    let header = prefix.get(..end).ok_or_else(|| {
        SlotError::Corrupt(format!(
            "the value has {} bytes, its header needs {end}",
            prefix.len()
        ))
    })?;
    parse_header(header)
}

/// Parse a slot value into a CPU tensor (`[n, hidden]`, its stored dtype) and its metadata.
pub fn decode_slots(bytes: &[u8]) -> Result<(Tensor, SlotMeta), SlotError> {
    let header = parse(bytes)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| SlotError::Corrupt(format!("{e:?}")))?;
    let view = st
        .tensor(SLOTS_TENSOR)
        .map_err(|_| SlotError::MissingTensor)?;
    if let Some(expected) = &header.data_digest {
        if sha256_hex(view.data()) != *expected {
            return Err(SlotError::Checksum);
        }
    }
    let dims = [header.shape[0] as i64, header.shape[1] as i64];
    let tensor = Tensor::f_from_data_size(view.data(), &dims, header.kind)
        .map_err(|e| SlotError::Corrupt(e.to_string()))?;
    let finite = tensor.isfinite().all().int64_value(&[]) == 1;
    if !finite {
        return Err(SlotError::NonFinite);
    }
    Ok((tensor, header.meta))
}

fn parse(bytes: &[u8]) -> Result<SlotHeader, SlotError> {
    let header = parse_header(bytes)?;
    if header.value_bytes != bytes.len() {
        let data = header.value_bytes - header_bytes(bytes)?;
        return Err(SlotError::Corrupt(format!(
            "the header promises {data} data bytes, the value holds {}",
            bytes.len().saturating_sub(header.value_bytes - data)
        )));
    }
    Ok(header)
}

/// The header at the start of `bytes`; the data it promises need not follow.
fn parse_header(bytes: &[u8]) -> Result<SlotHeader, SlotError> {
    let end_of_header = header_bytes(bytes)?;
    let json = bytes
        .get(HEADER_LENGTH_BYTES..end_of_header)
        .and_then(|b| std::str::from_utf8(b).ok())
        .filter(|json| json.starts_with('{'))
        .ok_or_else(|| SlotError::Corrupt("the header is not a JSON object".into()))?;
    let header: Metadata = serde_json::from_str(json)
        .map_err(|e| SlotError::Corrupt(format!("the header does not parse: {e}")))?;
    let tensors = header.tensors();
    let info = tensors.get(SLOTS_TENSOR).ok_or(SlotError::MissingTensor)?;
    if tensors.len() != 1 {
        return Err(SlotError::Corrupt(format!(
            "the value holds {} tensors, a slot value holds only {SLOTS_TENSOR:?}",
            tensors.len()
        )));
    }
    let shape = info.shape.clone();
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return Err(SlotError::BadShape(shape));
    }
    let (kind, elem) = match info.dtype {
        Dtype::F32 => (Kind::Float, 4),
        Dtype::BF16 => (Kind::BFloat16, 2),
        Dtype::F16 => (Kind::Half, 2),
        other => return Err(SlotError::BadDtype(format!("{other:?}"))),
    };
    let (start, end) = info.data_offsets;
    let data_bytes = shape[0]
        .checked_mul(shape[1])
        .and_then(|n| n.checked_mul(elem));
    if start != 0 || Some(end) != data_bytes {
        return Err(SlotError::Corrupt(format!(
            "the header places the data at {start}..{end}, shape {shape:?} needs 0..{}",
            data_bytes.map_or("(too large)".to_string(), |n| n.to_string())
        )));
    }
    let empty = HashMap::new();
    let map = header.metadata().as_ref().unwrap_or(&empty);
    let field = |name: &'static str| map.get(name).cloned();
    let version = field("icae_format_version").unwrap_or_default();
    if version != SLOT_FORMAT_VERSION.to_string() {
        return Err(SlotError::Version(quoted(&version)));
    }
    let number = |name: &'static str| -> Result<u64, SlotError> {
        let value = field(name).unwrap_or_default();
        value.parse().map_err(|_| SlotError::BadMeta {
            field: name,
            value: quoted(&value),
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
        token_digest: field("token_sha256"),
        fidelity: SlotFidelity::read(map)?,
    };
    Ok(SlotHeader {
        shape: [shape[0], shape[1]],
        kind,
        meta,
        value_bytes: end_of_header + end,
        data_digest: field(DATA_DIGEST_FIELD),
    })
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
            token_digest: Some(token_digest(&[1, 2, 3])),
            fidelity: SlotFidelity::default(),
        }
    }

    #[test]
    fn the_header_is_read_without_the_data_and_truncation_is_caught() {
        let slots = Tensor::randn([8, 16], (Kind::Float, tch::Device::Cpu));
        let bytes = encode_slots(&slots, &meta()).unwrap();
        let header = inspect_slots(&bytes).unwrap();
        assert_eq!(header.shape, [8, 16]);
        assert_eq!(header.kind, Kind::Float);
        assert_eq!(header.meta, meta());
        let cut = &bytes[..bytes.len() - 4];
        assert!(matches!(inspect_slots(cut), Err(SlotError::Corrupt(_))));
        assert!(matches!(decode_slots(cut), Err(SlotError::Corrupt(_))));
    }

    #[test]
    fn a_header_is_read_from_the_start_of_a_value_and_bounded() {
        let slots = Tensor::randn([8, 16], (Kind::Float, tch::Device::Cpu));
        let bytes = encode_slots(&slots, &meta()).unwrap();
        let end = header_bytes(&bytes[..8]).unwrap();
        assert!(end < 1024 && end < bytes.len(), "{end}");
        let header = inspect_slot_prefix(&bytes[..end]).unwrap();
        assert_eq!(header, inspect_slots(&bytes).unwrap());
        assert_eq!(header.value_bytes, bytes.len());
        assert_eq!(header.value_bytes, end + 8 * 16 * 4);
        // Too short to hold the header it announces, or the length itself.
        assert!(matches!(
            inspect_slot_prefix(&bytes[..end - 1]),
            Err(SlotError::Corrupt(_))
        ));
        assert!(matches!(
            header_bytes(&bytes[..7]),
            Err(SlotError::Corrupt(_))
        ));
        // A header over the bound is refused from its length alone.
        let mut huge = ((MAX_SLOT_HEADER_BYTES + 1) as u64).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{");
        let error = header_bytes(&huge).unwrap_err().to_string();
        assert!(
            error.contains(&(MAX_SLOT_HEADER_BYTES + 1).to_string()),
            "{error}"
        );
        assert!(
            error.contains(&MAX_SLOT_HEADER_BYTES.to_string()),
            "{error}"
        );
        // Extra bytes after the data are not a slot value.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(inspect_slots(&longer), Err(SlotError::Corrupt(_))));
    }

    #[test]
    fn the_data_is_checked_against_the_checksum_in_the_header() {
        let slots = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu));
        let mut bytes = encode_slots(&slots, &meta()).unwrap();
        let header = inspect_slots(&bytes).unwrap();
        let data_at = bytes.len() - 4 * 8 * 4;
        let digest = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(&bytes[data_at..]))
        };
        assert_eq!(header.data_digest.as_deref(), Some(digest.as_str()));
        assert!(decode_slots(&bytes).is_ok());
        // Another finite value in place of one element: the header still parses.
        bytes[data_at..data_at + 4].copy_from_slice(&7.5f32.to_le_bytes());
        assert!(inspect_slots(&bytes).is_ok());
        assert_eq!(decode_slots(&bytes).unwrap_err(), SlotError::Checksum);
    }

    #[test]
    fn long_metadata_values_are_cut_in_errors() {
        let slots = Tensor::randn([1, 2], (Kind::Float, tch::Device::Cpu));
        let mut long = meta();
        long.fidelity.reconstruction_loss = Some(1.0);
        let bytes = encode_slots(&slots, &long).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
        let header = header.replace(
            "\"created_at\":\"1700000000\"",
            &format!("\"created_at\":\"{}\"", "9x".repeat(1000)),
        );
        let mut value = (header.len() as u64).to_le_bytes().to_vec();
        value.extend_from_slice(header.as_bytes());
        value.extend_from_slice(&bytes[8 + header_len..]);
        let error = inspect_slots(&value).unwrap_err().to_string();
        assert!(
            error.contains("created_at") && error.contains("2000 bytes"),
            "{error}"
        );
        assert!(error.len() < 200, "{} bytes: {error}", error.len());
    }

    #[test]
    fn fidelity_fields_round_trip_and_plain_values_have_none() {
        let slots = Tensor::randn([2, 4], (Kind::Float, tch::Device::Cpu));
        let plain = encode_slots(&slots, &meta()).unwrap();
        let text = String::from_utf8_lossy(&plain);
        assert!(!text.contains("refine") && !text.contains("reconstruction_loss"));
        assert_eq!(
            inspect_slots(&plain).unwrap().meta.fidelity,
            SlotFidelity::default()
        );
        let mut refined = meta();
        refined.fidelity = SlotFidelity {
            refine_steps: 50,
            target_loss: Some(0.05),
            steps_run: 31,
            reconstruction_loss: Some(0.0421),
        };
        let bytes = encode_slots(&slots, &refined).unwrap();
        assert_eq!(inspect_slots(&bytes).unwrap().meta, refined);
    }

    #[test]
    fn a_fidelity_field_that_is_not_a_number_is_refused_by_name() {
        let mut metadata = HashMap::from([("reconstruction_loss".to_string(), "NaN".to_string())]);
        let error = SlotFidelity::read(&metadata).unwrap_err();
        assert!(matches!(
            error,
            SlotError::BadMeta {
                field: "reconstruction_loss",
                ..
            }
        ));
        metadata.insert("reconstruction_loss".into(), "0.5".into());
        metadata.insert("refine_steps".into(), "-3".into());
        let error = SlotFidelity::read(&metadata).unwrap_err();
        assert!(matches!(
            error,
            SlotError::BadMeta {
                field: "refine_steps",
                ..
            }
        ));
    }

    #[test]
    fn token_digests_are_content_addresses() {
        assert_eq!(token_digest(&[1, 2, 3]), token_digest(&[1, 2, 3]));
        assert_ne!(token_digest(&[1, 2, 3]), token_digest(&[1, 2, 4]));
        // SHA-256 of the 12 bytes 01000000 02000000 03000000, computed with Python's hashlib.
        assert_eq!(
            token_digest(&[1, 2, 3]),
            "4636993d3e1da4e9d6b8f87b79e8f7c6d018580d52661950eabc3845c5897a4d"
        );
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
    fn bf16_values_take_half_the_bytes_and_come_back_as_stored() {
        let slots = Tensor::randn([8, 16], (Kind::Float, tch::Device::Cpu));
        let f32_bytes = encode_slots(&slots, &meta()).unwrap();
        let narrowed = crate::SlotDtype::Bf16.cast(&slots);
        let bf16_bytes = encode_slots(&narrowed, &meta()).unwrap();
        assert_eq!(f32_bytes.len() - bf16_bytes.len(), 8 * 16 * 2);
        assert_eq!(inspect_slots(&bf16_bytes).unwrap().kind, Kind::BFloat16);
        let (back, _) = decode_slots(&bf16_bytes).unwrap();
        assert_eq!(back.kind(), Kind::BFloat16);
        assert!(back.equal(&narrowed));
    }

    #[test]
    fn non_finite_values_are_refused() {
        let slots = Tensor::from_slice(&[1.0f32, f32::NAN]).view([1, 2]);
        let bytes = encode_slots(&slots, &meta()).unwrap();
        assert_eq!(decode_slots(&bytes).unwrap_err(), SlotError::NonFinite);
    }
}
