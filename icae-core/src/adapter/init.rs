//! Writing adapter directories, and the deterministic untrained adapter used until a
//! trained one exists.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::{
    official_key, AdapterConfig, BaseModelId, Half, CONFIG_FILE, MEMORY_EMBED, TENSORS_FILE,
};
use crate::error::AdapterError;
use crate::model::{ModelConfig, Target};
use crate::tokenizer::ChatPieces;

pub struct InitOptions {
    pub mem_size: usize,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub compression_rate: usize,
    pub targets: Vec<Target>,
    pub seed: u64,
}

/// A row-major f32 tensor to save.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Build an untrained adapter: LoRA A uniform in ±1/sqrt(in) (PEFT's kaiming init), LoRA B
/// zero (so the encoder equals the base model), memory embeddings drawn from
/// N(0, `embed_rms`²) so they are on the scale of real token embeddings. Deterministic in `seed`.
pub fn init_untrained(
    out_dir: &Path,
    model: &ModelConfig,
    model_name: &str,
    base_fingerprint: &str,
    embed_rms: f64,
    chat: Option<ChatPieces>,
    options: &InitOptions,
) -> Result<AdapterConfig, AdapterError> {
    if options.mem_size == 0 || options.lora_r == 0 || options.compression_rate == 0 {
        return Err(AdapterError::Invalid {
            path: out_dir.display().to_string(),
            reason: format!(
                "mem_size, lora_r and compression_rate must be >= 1, got {}, {}, {}",
                options.mem_size, options.lora_r, options.compression_rate
            ),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let hidden = model.hidden_size;
    let mut tensors = Vec::new();
    let rows = options.mem_size + 3;
    tensors.push(NamedTensor {
        name: MEMORY_EMBED.into(),
        shape: vec![rows, hidden],
        data: (0..rows * hidden)
            .map(|_| (normal(&mut rng) * embed_rms) as f32)
            .collect(),
    });
    for layer in 0..model.num_hidden_layers {
        for &target in &options.targets {
            let (input, output) = super::projection_dims(model, target);
            let (input, output) = (input as usize, output as usize);
            let bound = 1.0 / (input as f64).sqrt();
            tensors.push(NamedTensor {
                name: official_key(layer, target, Half::A),
                shape: vec![options.lora_r, input],
                data: (0..options.lora_r * input)
                    .map(|_| rng.gen_range(-bound..bound) as f32)
                    .collect(),
            });
            tensors.push(NamedTensor {
                name: official_key(layer, target, Half::B),
                shape: vec![output, options.lora_r],
                data: vec![0.0; output * options.lora_r],
            });
        }
    }
    let config = AdapterConfig {
        mem_size: options.mem_size,
        compression_rate: options.compression_rate,
        lora_r: options.lora_r,
        lora_alpha: options.lora_alpha,
        target_modules: options.targets.iter().map(|t| t.name().to_string()).collect(),
        base_model: BaseModelId {
            name: model_name.into(),
            fingerprint: base_fingerprint.into(),
            hidden_size: hidden,
            num_layers: model.num_hidden_layers,
            vocab_size: model.vocab_size,
        },
        chat,
        continue_with_lm_token: false,
        slot_projector: false,
        trained: false,
        notes: format!(
            "UNTRAINED: made by `icae adapter init` (seed {}); LoRA B is zero and the memory embeddings are random, so its slots carry no information",
            options.seed
        ),
    };
    save_adapter(out_dir, &config, &tensors)?;
    Ok(config)
}

/// Write `adapter.safetensors` (f32, official v2 key layout) and `icae_config.json`.
/// The directory is assembled beside its final place and renamed into it.
pub fn save_adapter(
    out_dir: &Path,
    config: &AdapterConfig,
    tensors: &[NamedTensor],
) -> Result<(), AdapterError> {
    let io = |e: std::io::Error| AdapterError::Io(format!("{}: {e}", out_dir.display()));
    let staging = out_dir.with_extension("writing");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io)?;
    }
    std::fs::create_dir_all(&staging).map_err(io)?;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| AdapterError::Invalid {
                    path: t.name.clone(),
                    reason: format!("{e:?}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, &Some(metadata), &staging.join(TENSORS_FILE))
        .map_err(|e| AdapterError::Io(format!("writing {TENSORS_FILE}: {e:?}")))?;
    let text = serde_json::to_string_pretty(config).map_err(|e| AdapterError::Io(e.to_string()))?;
    std::fs::write(staging.join(CONFIG_FILE), text).map_err(io)?;
    if out_dir.exists() {
        std::fs::remove_dir_all(out_dir).map_err(io)?;
    }
    std::fs::rename(&staging, out_dir).map_err(io)?;
    Ok(())
}

/// A standard normal sample (Box-Muller), so the values do not depend on a distribution crate.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
