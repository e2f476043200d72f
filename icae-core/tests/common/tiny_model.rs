//! A tiny random Llama model directory (imported from a built GGUF, then given random
//! weights) and random adapters, for engine tests that must not need the real model.

use std::path::{Path, PathBuf};

use icae_core::adapter::{
    official_key, save_adapter, AdapterConfig, BaseModelId, Half, NamedTensor, MEMORY_EMBED,
};
use icae_core::gguf::import_gguf;
use icae_core::model::{ModelConfig, Target};
use tch::{Kind, Tensor};

use super::gguf_builder::tiny_llama;

pub struct TinyModel {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub config: ModelConfig,
}

/// Import the tiny GGUF, then replace its weights with seeded random values.
pub fn tiny_model() -> TinyModel {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, tiny_llama().build()).unwrap();
    let path = dir.path().join("model");
    import_gguf(&gguf, &path, &mut |_, _, _| {}).unwrap();
    let config =
        ModelConfig::from_json(&std::fs::read_to_string(path.join("config.json")).unwrap())
            .unwrap();
    tch::manual_seed(7);
    let weights = icae_core::model::TensorMap::load_file(
        &path.join("model.safetensors"),
        tch::Device::Cpu,
        None,
    )
    .unwrap();
    let mut named: Vec<(String, Tensor)> = weights
        .names()
        .map(|n| {
            let t = weights.get(n).unwrap();
            let random = if n.ends_with("norm.weight") {
                Tensor::ones(t.size(), (Kind::Float, tch::Device::Cpu))
                    + Tensor::randn(t.size(), (Kind::Float, tch::Device::Cpu)) * 0.1
            } else {
                Tensor::randn(t.size(), (Kind::Float, tch::Device::Cpu)) * 0.3
            };
            (n.clone(), random)
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path.join("model.safetensors")).unwrap();
    TinyModel {
        _dir: dir,
        path,
        config,
    }
}

/// Random adapter tensors (non-zero LoRA B on q and v) in the official v2 key layout.
pub fn random_adapter_tensors(
    config: &ModelConfig,
    mem_size: usize,
    rank: usize,
    seed: i64,
) -> Vec<NamedTensor> {
    tch::manual_seed(seed);
    let h = config.hidden_size;
    let kv = config.kv_heads() * config.head_dim();
    let mut out = vec![named(MEMORY_EMBED, &[mem_size + 3, h], 0.3)];
    for layer in 0..config.num_hidden_layers {
        for (target, out_dim) in [(Target::Q, h), (Target::V, kv)] {
            out.push(named(
                &official_key(layer, target, Half::A),
                &[rank, h],
                0.2,
            ));
            out.push(named(
                &official_key(layer, target, Half::B),
                &[out_dim, rank],
                0.2,
            ));
        }
    }
    out
}

pub fn named(name: &str, shape: &[usize], scale: f64) -> NamedTensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let t = Tensor::randn(&dims, (Kind::Float, tch::Device::Cpu)) * scale;
    NamedTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data: Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(),
    }
}

pub fn adapter_config(config: &ModelConfig, mem_size: usize, rank: usize) -> AdapterConfig {
    AdapterConfig {
        mem_size,
        compression_rate: 4,
        lora_r: rank,
        lora_alpha: 16.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        base_model: BaseModelId {
            name: "tiny".into(),
            fingerprint: String::new(),
            hidden_size: config.hidden_size,
            num_layers: config.num_hidden_layers,
            vocab_size: config.vocab_size,
        },
        chat: None,
        continue_with_lm_token: false,
        trained: true,
        notes: "test".into(),
    }
}

/// Write a random adapter directory and return its path.
pub fn write_random_adapter(
    dir: &Path,
    config: &ModelConfig,
    mem_size: usize,
    rank: usize,
) -> PathBuf {
    let path = dir.join("adapter");
    save_adapter(
        &path,
        &adapter_config(config, mem_size, rank),
        &random_adapter_tensors(config, mem_size, rank, 11),
    )
    .unwrap();
    path
}
