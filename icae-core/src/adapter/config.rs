//! `icae_config.json`: what an adapter directory records beside its tensors.

use serde::{Deserialize, Serialize};

use crate::tokenizer::ChatPieces;

pub const CONFIG_FILE: &str = "icae_config.json";
pub const TENSORS_FILE: &str = "adapter.safetensors";
pub const DEFAULT_LORA_ALPHA: f64 = 32.0;
pub const DEFAULT_COMPRESSION_RATE: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Number of memory slots per segment (`k`).
    pub mem_size: usize,
    /// Mean compression rate: a segment holds up to `mem_size * compression_rate` tokens.
    pub compression_rate: usize,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    /// Identity of the base model the adapter was made for.
    pub base_model: BaseModelId,
    /// Prefix/suffix of the ANSWER layout (from the base model's chat template).
    #[serde(default)]
    pub chat: Option<ChatPieces>,
    /// Whether CONTINUE appends the LM special token after the slots (official default: no).
    #[serde(default)]
    pub continue_with_lm_token: bool,
    /// Whether `adapter.safetensors` holds a slot projector (`slot_projector.weight`/`.bias`,
    /// our extension) that the encoder applies to the slots. Absent in official files and
    /// older directories: no projector, which is the identity. Written only when true, so
    /// adapters without one keep their exact `icae_config.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slot_projector: bool,
    /// False for `icae adapter init` output: slots from it carry no information.
    pub trained: bool,
    /// Free text: how the adapter was produced.
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModelId {
    pub name: String,
    /// `LlamaModel` weights fingerprint (see `fingerprint.rs`); empty when unknown.
    #[serde(default)]
    pub fingerprint: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub vocab_size: usize,
}
