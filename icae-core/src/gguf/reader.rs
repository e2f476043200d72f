//! A bounds-checked reader for GGUF v2/v3 files.
//!
//! Every count and length read from the file is checked against the bytes that remain
//! before anything is allocated, so a hostile or truncated file yields a `GgufError`
//! naming the field and the values, never a panic or an enormous allocation.

use std::collections::BTreeMap;

use super::{GgmlType, GgufError};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are refused (real files nest at most once).
const MAX_ARRAY_NESTING: u32 = 4;

/// A metadata value as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is any integer type that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// One tensor's directory entry. `dims` are in GGUF order (fastest-varying first).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte range of the tensor's data within the file.
    pub data_start: usize,
    pub data_len: usize,
}

impl TensorInfo {
    pub fn num_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in row-major (PyTorch / safetensors) order.
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF header: metadata and tensor directory. Tensor bytes stay in the caller's buffer.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

impl GgufFile {
    /// Parse the header of a complete GGUF file held in `bytes` (usually a memory map).
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        let mut cur = Cursor { bytes, pos: 0 };
        let magic = cur.take(4, "magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic.to_vec()));
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = cur.u64("tensor_count")?;
        let kv_count = cur.u64("metadata_kv_count")?;
        // Each KV needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor at least 8+4+8+4+8.
        cur.check_count("metadata_kv_count", kv_count, 13)?;
        cur.check_count("tensor_count", tensor_count, 32)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = cur.string("metadata key")?;
            let ty = cur.u32(&key)?;
            let value = cur.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }

        let mut raw = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = cur.string("tensor name")?;
            let n_dims = cur.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!("n_dims is {n_dims}, must be 1..={MAX_DIMS}"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cur.u64(&name)?);
            }
            let type_id = cur.u32(&name)?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::BadTensor {
                name: name.clone(),
                reason: format!("unknown ggml type id {type_id}"),
            })?;
            let offset = cur.u64(&name)?;
            raw.push((name, dims, ggml_type, offset));
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::BadMetadata {
                        key: "general.alignment".into(),
                        reason: format!("must be a power of two up to 1 MiB, got {v:?}"),
                    })
                }
            },
        };
        let data_base = (cur.pos as u64).div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ggml_type, offset) in raw {
            tensors.push(locate(
                bytes.len(),
                data_base,
                alignment,
                name,
                dims,
                ggml_type,
                offset,
            )?);
        }
        Ok(GgufFile {
            version,
            metadata,
            tensors,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Check a tensor's shape, size and offset against the file and return its byte range.
fn locate(
    file_len: usize,
    data_base: u64,
    alignment: u64,
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
) -> Result<TensorInfo, GgufError> {
    let bad = |reason: String| GgufError::BadTensor {
        name: name.clone(),
        reason,
    };
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("element count overflows for dims {dims:?}")))?;
    if elements == 0 {
        return Err(bad(format!("has zero elements (dims {dims:?})")));
    }
    let block = ggml_type.block_size() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(bad(format!(
            "row length {} is not a multiple of the {} block size {block}",
            dims[0],
            ggml_type.name()
        )));
    }
    let size = (elements / block)
        .checked_mul(ggml_type.block_bytes() as u64)
        .ok_or_else(|| bad(format!("byte size overflows for dims {dims:?}")))?;
    if !offset.is_multiple_of(alignment) {
        return Err(bad(format!(
            "data offset {offset} is not aligned to {alignment}"
        )));
    }
    let start = data_base.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(size));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len as u64 => Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            data_start: start as usize,
            data_len: size as usize,
        }),
        _ => Err(GgufError::Truncated {
            field: format!("data of tensor {name}"),
            needed: data_base.saturating_add(offset).saturating_add(size),
            available: file_len as u64,
        }),
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: field.to_string(),
                needed: (self.pos as u64).saturating_add(n as u64),
                available: self.bytes.len() as u64,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Refuse a count whose minimal encoding could not fit in the rest of the file.
    fn check_count(&self, field: &str, count: u64, min_item_bytes: u64) -> Result<(), GgufError> {
        let available = self.remaining() as u64;
        if count.saturating_mul(min_item_bytes) > available {
            return Err(GgufError::CountTooLarge {
                field: field.to_string(),
                count,
                available_bytes: available,
            });
        }
        Ok(())
    }

    fn string(&mut self, field: &str) -> Result<String, GgufError> {
        let len = self.u64(field)?;
        self.check_count(field, len, 1)?;
        let raw = self.take(len as usize, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::BadMetadata {
            key: field.to_string(),
            reason: "string is not valid UTF-8".into(),
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::BadMetadata {
                        key: key.to_string(),
                        reason: format!("bool byte must be 0 or 1, got {b}"),
                    })
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::BadMetadata {
                        key: key.to_string(),
                        reason: format!("arrays nested deeper than {MAX_ARRAY_NESTING}"),
                    });
                }
                let elem_ty = self.u32(key)?;
                let count = self.u64(key)?;
                self.check_count(key, count, min_value_bytes(elem_ty))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(GgufError::BadMetadata {
                    key: key.to_string(),
                    reason: format!("unknown value type id {other}"),
                })
            }
        })
    }
}

/// The fewest bytes one value of a GGUF type can occupy (used to bound array counts).
fn min_value_bytes(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}
