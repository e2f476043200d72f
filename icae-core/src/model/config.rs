//! The subset of an HF Llama/Mistral `config.json` the engine needs.

use serde::Deserialize;

use crate::error::ModelError;

#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// transformers v5 writes `rope_parameters` (theta and scaling together) instead of
    /// `rope_theta` + `rope_scaling`; `from_json` folds it into those two.
    #[serde(default)]
    rope_parameters: Option<RopeScaling>,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

/// `eos_token_id` is an integer in most configs and a list in Llama-3's.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The `rope_scaling` block. Older configs call the kind `type`, newer ones `rope_type`.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Only in transformers v5 `rope_parameters`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_positions() -> usize {
    4096
}

impl ModelConfig {
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let mut config: ModelConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        if let Some(params) = config.rope_parameters.take() {
            if let Some(theta) = params.rope_theta {
                config.rope_theta = theta;
            }
            if params.rope_type != "default" {
                config.rope_scaling = Some(params);
            }
        }
        config.validate()?;
        Ok(config)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::Config(what));
        if !matches!(self.model_type.as_str(), "llama" | "mistral") {
            return bad(format!(
                "model_type \"{}\" is not supported (supported: llama, mistral)",
                self.model_type
            ));
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return bad(format!(
                    "hidden_act \"{act}\" is not supported (supported: silu)"
                ));
            }
        }
        if self.attention_bias || self.mlp_bias {
            return bad("attention_bias / mlp_bias are not supported".into());
        }
        let (heads, kv) = (self.num_attention_heads, self.kv_heads());
        if heads == 0 || kv == 0 || heads % kv != 0 {
            return bad(format!("num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv}"));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return bad(format!(
                "head_dim {} must be even and positive",
                self.head_dim()
            ));
        }
        if let Some(scaling) = &self.rope_scaling {
            match scaling.rope_type.as_str() {
                "default" => {}
                "linear" | "llama3" if scaling.factor.is_some_and(|f| f > 0.0) => {}
                "linear" | "llama3" => return bad(format!("rope_scaling {} needs a positive factor", scaling.rope_type)),
                other => {
                    return bad(format!("rope_scaling type \"{other}\" is not supported (supported: default, linear, llama3)"))
                }
            }
        }
        Ok(())
    }
}
