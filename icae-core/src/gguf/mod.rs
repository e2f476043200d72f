//! GGUF files: parsing, dequantization and conversion to an HF model directory.

mod dequant;
mod import;
mod reader;
mod tokenizer;

pub use dequant::{dequantize, unpermute_rows};
pub use import::{import_gguf, ImportProgress, ImportSummary};
pub use reader::{GgufFile, TensorInfo, Value};
pub use tokenizer::tokenizer_json_from_gguf;

use thiserror::Error;

/// Errors reading or converting a GGUF file; each names the field or tensor and the values.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("not a GGUF file: magic bytes are {0:02x?}, expected \"GGUF\"")]
    BadMagic(Vec<u8>),
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error(
        "GGUF file is truncated while reading {field}: needs {needed} bytes, file has {available}"
    )]
    Truncated {
        field: String,
        needed: u64,
        available: u64,
    },
    #[error("GGUF {field} count {count} cannot fit in the {available_bytes} bytes that remain")]
    CountTooLarge {
        field: String,
        count: u64,
        available_bytes: u64,
    },
    #[error("GGUF metadata {key}: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error("GGUF tensor {name}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("GGUF tensor {name} has type {type_name}, which this importer cannot dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")]
    UnsupportedType {
        name: String,
        type_name: &'static str,
    },
    #[error("GGUF metadata key {0} is missing")]
    MissingKey(String),
    #[error("GGUF tensor {0} is missing")]
    MissingTensor(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("building the tokenizer: {0}")]
    Tokenizer(String),
}

/// The ggml tensor types this crate knows the layout of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
        }
    }

    /// Number of weights per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
        }
    }

    /// Bytes per block (from ggml's type traits).
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
        }
    }
}
