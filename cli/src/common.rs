//! Arguments and helpers shared by several commands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use icae_core::adapter::untrained_warning;
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::IcaeModel;

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
    model.apply_threads();
    let icae = IcaeModel::load(
        &model.model,
        &adapter.adapter,
        &adapter.load_options(),
        model.device,
        model.dtype,
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

fn warn_if_untrained(icae: &IcaeModel, path: &Path) {
    if !icae.adapter.config.trained {
        eprintln!("WARNING: {}", untrained_warning(path));
    }
}

pub fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
