use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::device::kind_name;
use icae_core::fingerprint::base_fingerprint;
use icae_core::model::ModelConfig;
use serde_json::{json, Value};

use icae_cli::common::{load_icae, print_json};

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Also describe this adapter (directory or official .safetensors file).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long, default_value_t = icae_core::adapter::DEFAULT_LORA_ALPHA)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = icae_core::adapter::DEFAULT_COMPRESSION_RATE)]
    pub compression_rate: usize,
    #[arg(long)]
    pub json: bool,
}

/// Parameters of the architecture, counted from the config.
fn parameter_count(c: &ModelConfig) -> u64 {
    let (h, ffn, v) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let q = (c.num_attention_heads * c.head_dim()) as u64;
    let kv = (c.kv_heads() * c.head_dim()) as u64;
    let layer = h * q + 2 * h * kv + q * h + 3 * h * ffn + 2 * h;
    let head = if c.tie_word_embeddings { 0 } else { v * h };
    v * h + c.num_hidden_layers as u64 * layer + h + head
}

pub fn run(args: InfoArgs) -> Result<()> {
    let config_path = args.model.model.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let c = ModelConfig::from_json(&text)?;
    let mut info = json!({
        "model": args.model.model,
        "architecture": c.model_type,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "attention_heads": c.num_attention_heads,
        "kv_heads": c.kv_heads(),
        "head_dim": c.head_dim(),
        "vocab_size": c.vocab_size,
        "max_positions": c.max_position_embeddings,
        "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling.as_ref().map(|s| s.rope_type.clone()),
        "tied_embeddings": c.tie_word_embeddings,
        "parameters": parameter_count(&c),
    });
    match &args.adapter {
        None => {
            info["base_fingerprint"] = json!(base_fingerprint(&args.model.model)?);
        }
        Some(path) => {
            let adapter_args = AdapterArgs {
                adapter: path.clone(),
                lora_alpha: args.lora_alpha,
                compression_rate: args.compression_rate,
            };
            let icae = load_icae(&args.model, &adapter_args)?;
            let a = &icae.adapter.config;
            info["device"] = json!(format!("{:?}", icae.device()));
            info["dtype"] = json!(kind_name(icae.kind()));
            info["base_fingerprint"] = json!(icae.base_fingerprint);
            info["adapter"] = json!({
                "path": path,
                "mem_size": a.mem_size,
                "compression_rate": a.compression_rate,
                "tokens_per_segment": icae.adapter.segment_capacity(),
                "lora_r": a.lora_r,
                "lora_alpha": a.lora_alpha,
                "target_modules": a.target_modules,
                "trained": a.trained,
                "chat_prefix": a.chat.as_ref().map(|c| c.prefix.clone()),
                "chat_suffix": a.chat.as_ref().map(|c| c.suffix.clone()),
                "notes": a.notes,
            });
            info["fingerprint"] = json!(icae.fingerprint);
        }
    }
    if args.json {
        return print_json(&info);
    }
    print_tree(&info, 0);
    Ok(())
}

fn print_tree(value: &Value, indent: usize) {
    if let Value::Object(map) = value {
        for (key, v) in map {
            match v {
                Value::Object(_) => {
                    println!("{:indent$}{key}:", "");
                    print_tree(v, indent + 2);
                }
                Value::String(s) => println!("{:indent$}{key}: {s:?}", ""),
                other => println!("{:indent$}{key}: {other}", ""),
            }
        }
    }
}
