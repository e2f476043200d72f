//! Dequantization of ggml blocks to f32, following ggml's reference (`dequantize_row_*`)
//! with the same operation order, so results are bit-identical to the `gguf` Python package.

use half::{bf16, f16};

use super::{GgmlType, GgufError, TensorInfo};

/// Dequantize one tensor's raw bytes (exactly `info.data_len` of them) to f32 values.
pub fn dequantize(info: &TensorInfo, raw: &[u8]) -> Result<Vec<f32>, GgufError> {
    if raw.len() != info.data_len {
        return Err(GgufError::BadTensor {
            name: info.name.clone(),
            reason: format!("expected {} data bytes, got {}", info.data_len, raw.len()),
        });
    }
    let n = info.num_elements() as usize;
    let mut out = Vec::with_capacity(n);
    match info.ggml_type {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(|b| f16_at(b, 0))),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in raw.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        GgmlType::Q4_0 => {
            for block in raw.chunks_exact(18) {
                let d = f16_at(block, 0);
                push_nibbles(&mut out, &block[2..], |q| d * f32::from(q as i8 - 8));
            }
        }
        GgmlType::Q4_1 => {
            for block in raw.chunks_exact(20) {
                let d = f16_at(block, 0);
                let m = f16_at(block, 2);
                push_nibbles(&mut out, &block[4..], |q| d * f32::from(q) + m);
            }
        }
        other => {
            return Err(GgufError::UnsupportedType {
                name: info.name.clone(),
                type_name: other.name(),
            })
        }
    }
    debug_assert_eq!(out.len(), n);
    Ok(out)
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// ggml packs 32 4-bit weights in 16 bytes: the low nibbles are weights 0..16,
/// the high nibbles weights 16..32.
fn push_nibbles(out: &mut Vec<f32>, qs: &[u8], value: impl Fn(u8) -> f32) {
    out.extend(qs.iter().map(|&b| value(b & 0x0F)));
    out.extend(qs.iter().map(|&b| value(b >> 4)));
}

/// Undo llama.cpp's rotary permutation of `attn_q` / `attn_k` rows.
///
/// llama.cpp stores, within each head of `head_dim` rows, the interleaved order
/// (row `2i + j` holds HF row `j * head_dim/2 + i`). `rows` is a row-major `[out, in]` matrix.
pub fn unpermute_rows(rows: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    let out_dim = rows.len() / row_len;
    let head_dim = out_dim / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; rows.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&rows[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}
