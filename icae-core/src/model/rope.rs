//! Rotary position embeddings (HF "rotate half" convention) with Llama-3 and linear scaling.

use std::f64::consts::PI;

use tch::{Kind, Tensor};

use super::config::ModelConfig;

pub struct Rope {
    /// Inverse frequencies, `[head_dim / 2]`, f32 on the model's device.
    inv_freq: Tensor,
}

impl Rope {
    pub fn shallow_clone(&self) -> Rope {
        Rope {
            inv_freq: self.inv_freq.shallow_clone(),
        }
    }

    pub fn new(config: &ModelConfig, device: tch::Device) -> Self {
        let dim = config.head_dim();
        let base = config.rope_theta as f32;
        let mut inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
            .collect();
        if let Some(scaling) = &config.rope_scaling {
            let factor = scaling.factor.unwrap_or(1.0);
            match scaling.rope_type.as_str() {
                "linear" => inv.iter_mut().for_each(|f| *f /= factor as f32),
                "llama3" => {
                    let low = scaling.low_freq_factor.unwrap_or(1.0);
                    let high = scaling.high_freq_factor.unwrap_or(4.0);
                    let original = scaling.original_max_position_embeddings.unwrap_or(8192) as f64;
                    inv.iter_mut().for_each(|f| {
                        *f = llama3_scale(*f as f64, factor, low, high, original) as f32
                    });
                }
                _ => {}
            }
        }
        Rope {
            inv_freq: Tensor::from_slice(&inv).to_device(device),
        }
    }

    /// `(cos, sin)` of shape `[batch, 1, seq, head_dim]` for positions `[batch, seq]`, in `kind`.
    pub fn tables(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

/// Apply the rotation to `x` of shape `[batch, heads, seq, head_dim]`.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[&(-&x2), &x1], 3);
    x * cos + rotated * sin
}

/// Llama-3.1 frequency scaling: long wavelengths are divided by `factor`, short ones kept,
/// and the band in between interpolated smoothly.
fn llama3_scale(inv_freq: f64, factor: f64, low: f64, high: f64, original: f64) -> f64 {
    let wavelen = 2.0 * PI / inv_freq;
    let low_wavelen = original / low;
    let high_wavelen = original / high;
    if wavelen < high_wavelen {
        inv_freq
    } else if wavelen > low_wavelen {
        inv_freq / factor
    } else {
        let smooth = (original / wavelen - low) / (high - low);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}
