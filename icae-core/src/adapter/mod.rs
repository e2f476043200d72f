//! ICAE adapters: LoRA for the encoder plus the memory-token embedding table.
//!
//! Two sources: an official v2 safetensors file (hyper-parameters from the shapes and the
//! caller), or our adapter directory (`adapter.safetensors` + `icae_config.json`).
//! Either may also hold a slot projector (see `projector.rs`).

mod config;
mod init;
mod keys;
mod projector;

pub use config::{
    AdapterConfig, BaseModelId, CONFIG_FILE, DEFAULT_COMPRESSION_RATE, DEFAULT_LORA_ALPHA,
    TENSORS_FILE,
};
pub use init::{init_untrained, save_adapter, InitOptions, NamedTensor};
pub use keys::{
    official_key, parse_key, AdapterKey, Half, MEMORY_EMBED, SLOT_PROJECTOR_BIAS,
    SLOT_PROJECTOR_WEIGHT,
};
pub use projector::SlotProjector;

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::error::AdapterError;
use crate::model::{view_to_tensor, with_mapped, LoraPair, LoraWeights, ModelConfig, Target};
use crate::tokenizer::ChatPieces;

/// Values an official file does not carry; ignored for adapter directories, which record them.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub lora_alpha: f64,
    pub compression_rate: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            lora_alpha: DEFAULT_LORA_ALPHA,
            compression_rate: DEFAULT_COMPRESSION_RATE,
        }
    }
}

/// A loaded adapter, tensors on the model's device and dtype.
pub struct Adapter {
    pub config: AdapterConfig,
    pub lora: LoraWeights,
    /// `[mem_size + 3, hidden]`: memory tokens, then the AE, LM and FT tokens.
    pub memory_embed: Tensor,
    /// Applied to the slots by the encoder; `None` (the identity) for official files.
    pub slot_projector: Option<SlotProjector>,
    /// SHA-256 over the tensors (names, dtypes, shapes, bytes), independent of file layout.
    pub digest: String,
    pub source: String,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("source", &self.source)
            .field("config", &self.config)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Rows of the special tokens after the `mem_size` memory rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialToken {
    Autoencode = 0,
    LanguageModel = 1,
    FineTune = 2,
}

impl Adapter {
    /// Load an adapter directory or an official v2 `.safetensors` file for `model`.
    /// `chat` supplies the ANSWER pieces for official files (they do not record them).
    pub fn load(
        path: &Path,
        model: &ModelConfig,
        options: &LoadOptions,
        chat: Option<ChatPieces>,
        device: Device,
        kind: Kind,
    ) -> Result<Self, AdapterError> {
        let (tensors_path, recorded) = if path.is_dir() {
            let config_path = path.join(CONFIG_FILE);
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| AdapterError::Io(format!("{}: {e}", config_path.display())))?;
            let config: AdapterConfig =
                serde_json::from_str(&text).map_err(|e| AdapterError::Invalid {
                    path: config_path.display().to_string(),
                    reason: e.to_string(),
                })?;
            (path.join(TENSORS_FILE), Some(config))
        } else if path.is_file() {
            (path.to_path_buf(), None)
        } else {
            return Err(AdapterError::Io(format!(
                "adapter path {} does not exist",
                path.display()
            )));
        };
        let parsed = read_tensors(&tensors_path, model)?;
        let mem_rows = parsed.memory_embed.size()[0];
        let mem_size = (mem_rows - 3) as usize;
        let invalid = |reason: String| AdapterError::Invalid {
            path: path.display().to_string(),
            reason,
        };

        let config = match recorded {
            Some(config) => {
                if config.mem_size != mem_size {
                    return Err(invalid(format!(
                        "icae_config.json says mem_size {} but {MEMORY_EMBED} has {mem_rows} rows (mem_size + 3)",
                        config.mem_size
                    )));
                }
                if parsed.rank.is_some_and(|r| r as usize != config.lora_r) {
                    return Err(invalid(format!(
                        "icae_config.json says lora_r {} but the LoRA tensors have rank {}",
                        config.lora_r,
                        parsed.rank.unwrap_or_default()
                    )));
                }
                if config.slot_projector != parsed.slot_projector.is_some() {
                    return Err(invalid(if config.slot_projector {
                        format!("icae_config.json says slot_projector true but {TENSORS_FILE} has no {SLOT_PROJECTOR_WEIGHT} / {SLOT_PROJECTOR_BIAS}")
                    } else {
                        format!("{TENSORS_FILE} holds {SLOT_PROJECTOR_WEIGHT} but icae_config.json does not record slot_projector: true")
                    }));
                }
                check_identity(&config.base_model, model)?;
                config
            }
            None => AdapterConfig {
                mem_size,
                compression_rate: options.compression_rate,
                lora_r: parsed.rank.unwrap_or(0) as usize,
                lora_alpha: options.lora_alpha,
                target_modules: parsed
                    .targets
                    .iter()
                    .map(|t| t.name().to_string())
                    .collect(),
                base_model: BaseModelId {
                    name: String::new(),
                    fingerprint: String::new(),
                    hidden_size: model.hidden_size,
                    num_layers: model.num_hidden_layers,
                    vocab_size: model.vocab_size,
                },
                chat,
                continue_with_lm_token: false,
                // A bare file describes its projector by holding its tensors.
                slot_projector: parsed.slot_projector.is_some(),
                trained: true,
                notes: format!("official ICAE v2 file {}", path.display()),
            },
        };
        if config.compression_rate == 0
            || config.lora_alpha <= 0.0
            || !config.lora_alpha.is_finite()
        {
            return Err(invalid(format!(
                "compression_rate must be >= 1 and lora_alpha > 0, got {} and {}",
                config.compression_rate, config.lora_alpha
            )));
        }
        let rank = parsed.rank.unwrap_or(1);
        let scale = config.lora_alpha / rank as f64;
        let to = |t: Tensor| t.to_device(device).to_kind(kind);
        let layers = parsed
            .layers
            .into_iter()
            .map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(target, (a, b))| (target, LoraPair { a: to(a), b: to(b) }))
                    .collect()
            })
            .collect();
        Ok(Adapter {
            config,
            lora: LoraWeights {
                scale,
                rank,
                layers,
            },
            memory_embed: to(parsed.memory_embed),
            slot_projector: parsed.slot_projector.map(|p| SlotProjector {
                weight: to(p.weight),
                bias: to(p.bias),
            }),
            digest: parsed.digest,
            source: path.display().to_string(),
        })
    }

    pub fn mem_size(&self) -> usize {
        self.config.mem_size
    }

    /// Embeddings of the `k` memory tokens, `[k, hidden]`.
    pub fn memory_tokens(&self) -> Tensor {
        self.memory_embed.narrow(0, 0, self.config.mem_size as i64)
    }

    /// Embedding of one special token, `[1, hidden]`.
    pub fn special(&self, token: SpecialToken) -> Tensor {
        self.memory_embed
            .narrow(0, self.config.mem_size as i64 + token as i64, 1)
    }

    /// Tokens per segment: `mem_size * compression_rate`.
    pub fn segment_capacity(&self) -> usize {
        self.config.mem_size * self.config.compression_rate
    }
}

/// Tensors of an adapter file, validated against the model shape.
struct ParsedTensors {
    memory_embed: Tensor,
    slot_projector: Option<SlotProjector>,
    layers: Vec<BTreeMap<Target, (Tensor, Tensor)>>,
    rank: Option<i64>,
    targets: Vec<Target>,
    digest: String,
}

fn read_tensors(path: &Path, model: &ModelConfig) -> Result<ParsedTensors, AdapterError> {
    let shown = path.display().to_string();
    let invalid = |reason: String| AdapterError::Invalid {
        path: shown.clone(),
        reason,
    };
    let mut halves: BTreeMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    let mut memory_embed = None;
    let (mut projector_weight, mut projector_bias) = (None, None);
    let mut hasher = Sha256::new();

    with_mapped(path, |st| {
        let mut views = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in views {
            let key = parse_key(&name).ok_or_else(|| {
                crate::error::ModelError::Format(format!(
                    "{shown}: tensor {name} is not part of an ICAE adapter (expected {MEMORY_EMBED} and LoRA tensors named like {})",
                    official_key(0, Target::Q, Half::A)
                ))
            })?;
            if !matches!(
                view.dtype(),
                safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
            ) {
                return Err(crate::error::ModelError::Format(format!(
                    "{shown}: tensor {name} has dtype {:?}, expected F32, F16 or BF16",
                    view.dtype()
                )));
            }
            hasher.update(format!("{name}|{:?}|{:?}|", view.dtype(), view.shape()));
            hasher.update(view.data());
            let tensor = view_to_tensor(path, &name, view.dtype(), view.shape(), view.data())?
                .to_kind(Kind::Float);
            match key {
                AdapterKey::MemoryEmbed => memory_embed = Some(tensor),
                AdapterKey::SlotProjectorWeight => projector_weight = Some(tensor),
                AdapterKey::SlotProjectorBias => projector_bias = Some(tensor),
                AdapterKey::Lora {
                    layer,
                    target,
                    half,
                } => {
                    let slot = halves.entry((layer, target)).or_default();
                    match half {
                        Half::A => slot.0 = Some(tensor),
                        Half::B => slot.1 = Some(tensor),
                    }
                }
            }
        }
        Ok(())
    })?;

    let hidden = model.hidden_size as i64;
    let memory_embed =
        memory_embed.ok_or_else(|| invalid(format!("tensor {MEMORY_EMBED} is missing")))?;
    let rows = memory_embed.size();
    if rows.len() != 2 || rows[1] != hidden || rows[0] < 4 {
        return Err(AdapterError::Shape {
            name: MEMORY_EMBED.into(),
            actual: rows,
            expected: format!("[mem_size + 3, {hidden}] with mem_size >= 1"),
        });
    }

    let slot_projector =
        SlotProjector::from_parts(&shown, projector_weight, projector_bias, hidden)?;

    let mut layers: Vec<BTreeMap<Target, (Tensor, Tensor)>> = (0..model.num_hidden_layers)
        .map(|_| BTreeMap::new())
        .collect();
    let mut rank = None;
    let mut targets = Vec::new();
    for ((layer, target), pair) in halves {
        let name = official_key(layer, target, Half::A);
        let (Some(a), Some(b)) = pair else {
            return Err(invalid(format!(
                "layer {layer} {target} has only one of lora_A / lora_B"
            )));
        };
        if layer >= model.num_hidden_layers {
            return Err(invalid(format!(
                "tensor {name} is for layer {layer} but the model has {} layers",
                model.num_hidden_layers
            )));
        }
        let (input, output) = projection_dims(model, target);
        let r = a.size().first().copied().unwrap_or(0);
        if a.size() != [r, input] || r == 0 {
            return Err(AdapterError::Shape {
                name,
                actual: a.size(),
                expected: format!("[r, {input}]"),
            });
        }
        if b.size() != [output, r] {
            return Err(AdapterError::Shape {
                name: official_key(layer, target, Half::B),
                actual: b.size(),
                expected: format!("[{output}, {r}] (rank {r} from lora_A)"),
            });
        }
        match rank {
            None => rank = Some(r),
            Some(prev) if prev != r => {
                return Err(invalid(format!(
                    "tensor {name} has rank {r}, other LoRA tensors have rank {prev}"
                )))
            }
            _ => {}
        }
        if !targets.contains(&target) {
            targets.push(target);
        }
        layers[layer].insert(target, (a, b));
    }
    targets.sort();
    Ok(ParsedTensors {
        memory_embed,
        slot_projector,
        layers,
        rank,
        targets,
        digest: hex::encode(hasher.finalize()),
    })
}

/// `(in, out)` features of a projection.
fn projection_dims(model: &ModelConfig, target: Target) -> (i64, i64) {
    let h = model.hidden_size as i64;
    let q = (model.num_attention_heads * model.head_dim()) as i64;
    let kv = (model.kv_heads() * model.head_dim()) as i64;
    let ffn = model.intermediate_size as i64;
    match target {
        Target::Q => (h, q),
        Target::K | Target::V => (h, kv),
        Target::O => (q, h),
        Target::Gate | Target::Up => (h, ffn),
        Target::Down => (ffn, h),
    }
}

fn check_identity(id: &BaseModelId, model: &ModelConfig) -> Result<(), AdapterError> {
    let pairs = [
        ("hidden_size", id.hidden_size, model.hidden_size),
        ("num_layers", id.num_layers, model.num_hidden_layers),
        ("vocab_size", id.vocab_size, model.vocab_size),
    ];
    for (what, recorded, actual) in pairs {
        if recorded != actual {
            return Err(AdapterError::Mismatch(format!(
                "adapter was made for {} with {what} {recorded}, this model has {actual}",
                id.name
            )));
        }
    }
    Ok(())
}

/// The one warning every command and service gives for an untrained adapter.
pub fn untrained_warning(adapter: &Path) -> String {
    format!(
        "adapter {} is UNTRAINED (made by `icae adapter init`): its slots carry no information, so reconstructions and answers are noise",
        adapter.display()
    )
}
