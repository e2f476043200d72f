use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use icae_core::gguf::import_gguf;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// GGUF v3 file (F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors are supported).
    pub file: PathBuf,
    /// Output directory; replaced if it exists.
    pub out_dir: PathBuf,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let started = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} importing [{bar:40}] {pos}/{len} tensors {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut progress = |done: usize, total: usize, name: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    };
    let summary = import_gguf(&args.file, &args.out_dir, &mut progress)
        .with_context(|| format!("importing {}", args.file.display()))?;
    bar.finish_and_clear();
    println!(
        "imported {} ({}, {} tensors, {:.1}M parameters, tied embeddings: {}) into {} in {:.1}s",
        args.file.display(),
        summary.architecture,
        summary.num_tensors,
        summary.num_parameters as f64 / 1e6,
        summary.tied_embeddings,
        summary.out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
