//! Arguments and helpers shared by several commands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use icae_core::adapter::{DEFAULT_COMPRESSION_RATE, DEFAULT_LORA_ALPHA};
use icae_core::{DeviceSpec, IcaeModel, LoadOptions};

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// HF-layout model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "ICAE_MODEL")]
    pub model: PathBuf,
    /// Where to run the model: cpu, cuda, cuda:N or auto (first GPU if any).
    #[arg(long, env = "ICAE_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
}

#[derive(Debug, Clone, Args)]
pub struct AdapterArgs {
    /// Adapter directory (adapter.safetensors + icae_config.json) or an official ICAE v2
    /// .safetensors file.
    #[arg(long, env = "ICAE_ADAPTER")]
    pub adapter: PathBuf,
    /// LoRA alpha for official files (adapter directories record their own).
    #[arg(long, default_value_t = DEFAULT_LORA_ALPHA)]
    pub lora_alpha: f64,
    /// Mean compression rate for official files (adapter directories record their own).
    #[arg(long, default_value_t = DEFAULT_COMPRESSION_RATE)]
    pub compression_rate: usize,
}

impl AdapterArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            lora_alpha: self.lora_alpha,
            compression_rate: self.compression_rate,
        }
    }
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct TextArgs {
    /// The text itself.
    #[arg(long)]
    pub text: Option<String>,
    /// A UTF-8 file holding the text.
    #[arg(long)]
    pub text_file: Option<PathBuf>,
}

impl TextArgs {
    pub fn read(&self) -> Result<String> {
        match (&self.text, &self.text_file) {
            (Some(text), _) => Ok(text.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading --text-file {}", path.display())),
            (None, None) => bail!("give --text or --text-file"),
        }
    }
}

/// Load model + adapter and warn loudly when the adapter is untrained.
pub fn load_icae(model: &ModelArgs, adapter: &AdapterArgs) -> Result<IcaeModel> {
    let icae = IcaeModel::load(
        &model.model,
        &adapter.adapter,
        &adapter.load_options(),
        model.device,
    )
    .with_context(|| {
        format!(
            "loading model {} with adapter {}",
            model.model.display(),
            adapter.adapter.display()
        )
    })?;
    warn_if_untrained(&icae, &adapter.adapter);
    Ok(icae)
}

pub fn warn_if_untrained(icae: &IcaeModel, path: &Path) {
    if !icae.adapter.config.trained {
        eprintln!(
            "WARNING: adapter {} is UNTRAINED (made by `icae adapter init`): its slots carry no information, so reconstructions and answers are noise",
            path.display()
        );
    }
}

pub fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
