//! The transformer engine: config, weights, rotary embeddings, LoRA, KV cache, forward pass.

pub mod attention;
mod config;
mod kv_cache;
mod llama;
mod lora;
mod rope;
mod weights;

pub use config::{ModelConfig, RopeScaling, TokenIds};
pub use kv_cache::KvCache;
pub use llama::LlamaModel;
pub use lora::{LoraPair, LoraWeights, Target};
pub use weights::{model_files, view_to_tensor, with_mapped, TensorMap};
