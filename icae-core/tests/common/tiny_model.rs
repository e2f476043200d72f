//! A tiny random Llama model directory (imported from a built GGUF, then given random
//! weights) and random adapters, for engine tests that must not need the real model.

use std::path::{Path, PathBuf};

use icae_core::adapter::{
    official_key, save_adapter, AdapterConfig, BaseModelId, Half, NamedTensor, MEMORY_EMBED,
    SLOT_PROJECTOR_BIAS, SLOT_PROJECTOR_WEIGHT,
};
use icae_core::gguf::import_gguf;
use icae_core::model::{ModelConfig, Target};
use tch::Tensor;

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
    let weights = icae_core::model::TensorMap::load_file(
        &path.join("model.safetensors"),
        tch::Device::Cpu,
        None,
    )
    .unwrap();
    let mut names: Vec<&String> = weights.names().collect();
    names.sort();
    let mut named: Vec<(String, Tensor)> = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let shape = weights.get(n).unwrap().size();
            let seed = 7000 + i as u64;
            let random = if n.ends_with("norm.weight") {
                seeded_normal(&shape, seed, 0.1) + 1.0
            } else {
                seeded_normal(&shape, seed, 0.3)
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
    seed: u64,
) -> Vec<NamedTensor> {
    let h = config.hidden_size;
    let kv = config.kv_heads() * config.head_dim();
    let mut next_seed = seed * 1000;
    let mut next = |name: &str, shape: &[usize], scale: f64| {
        next_seed += 1;
        seeded_named(name, shape, scale, next_seed)
    };
    let mut out = vec![next(MEMORY_EMBED, &[mem_size + 3, h], 0.3)];
    for layer in 0..config.num_hidden_layers {
        for (target, out_dim) in [(Target::Q, h), (Target::V, kv)] {
            out.push(next(&official_key(layer, target, Half::A), &[rank, h], 0.2));
            out.push(next(
                &official_key(layer, target, Half::B),
                &[out_dim, rank],
                0.2,
            ));
        }
    }
    out
}

/// A random f32 tensor to save under `name`.
pub fn named(name: &str, shape: &[usize], scale: f64) -> NamedTensor {
    seeded_named(name, shape, scale, 99)
}

fn seeded_named(name: &str, shape: &[usize], scale: f64, seed: u64) -> NamedTensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let t = seeded_normal(&dims, seed, scale);
    NamedTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data: Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(),
    }
}

/// N(0, scale²) values from a private generator: tests run in parallel, and libtorch's global
/// generator would make each test's weights depend on the others.
pub fn seeded_normal(shape: &[i64], seed: u64, scale: f64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.gen_range(f64::MIN_POSITIVE..1.0), rng.gen());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * scale) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
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
        slot_projector: false,
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

/// A tiny model with a random adapter (mem_size 4, rank 2), loaded on the CPU.
pub fn tiny_icae() -> (TinyModel, tempfile::TempDir, icae_core::IcaeModel) {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let adapter = write_random_adapter(dir.path(), &tiny.config, 4, 2);
    let options = icae_core::adapter::LoadOptions::default();
    let icae = icae_core::IcaeModel::load(
        &tiny.path,
        &adapter,
        &options,
        icae_core::DeviceSpec::Cpu,
        icae_core::DtypeSpec::F32,
    )
    .unwrap();
    (tiny, dir, icae)
}

/// A non-identity slot projector (`slot_projector.weight` / `.bias`) for `config`: identity
/// plus noise, so projected slots differ from raw ones by a known affine map.
pub fn projector_tensors(config: &ModelConfig, seed: u64) -> Vec<NamedTensor> {
    let h = config.hidden_size;
    let mut weight = seeded_named(SLOT_PROJECTOR_WEIGHT, &[h, h], 0.2, seed);
    for i in 0..h {
        weight.data[i * h + i] += 0.5;
    }
    vec![
        weight,
        seeded_named(SLOT_PROJECTOR_BIAS, &[h], 0.1, seed + 1),
    ]
}

/// Write a random adapter directory with a slot projector (same LoRA and memory tensors as
/// `write_random_adapter`) and return its path.
pub fn write_projector_adapter(
    dir: &Path,
    config: &ModelConfig,
    mem_size: usize,
    rank: usize,
) -> PathBuf {
    let path = dir.join("adapter-with-projector");
    let mut adapter_config = adapter_config(config, mem_size, rank);
    adapter_config.slot_projector = true;
    let mut tensors = random_adapter_tensors(config, mem_size, rank, 11);
    tensors.extend(projector_tensors(config, 21));
    save_adapter(&path, &adapter_config, &tensors).unwrap();
    path
}

/// A saved tensor back as a `Tensor` of its shape.
pub fn to_tensor(t: &NamedTensor) -> Tensor {
    let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&t.data).view(dims.as_slice())
}

/// Load an adapter (directory or bare file) on the CPU in f32; errors as their message.
pub fn load_adapter(
    path: &Path,
    config: &ModelConfig,
) -> Result<icae_core::adapter::Adapter, String> {
    icae_core::adapter::Adapter::load(
        path,
        config,
        &icae_core::adapter::LoadOptions::default(),
        None,
        tch::Device::Cpu,
        tch::Kind::Float,
    )
    .map_err(|e| e.to_string())
}
