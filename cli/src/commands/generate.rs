use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::slots::decode_slots;
use icae_core::{Mode, SamplingParams};
use serde_json::json;
use tch::Tensor;

use icae_cli::common::{load_icae, print_json};

#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Always take the most likely token (the default when no sampling flag is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k", "seed"])]
    pub greedy: bool,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed of the sampler.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this string appears (repeatable); it is not included in the output.
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        let sampling = self.temperature.is_some()
            || self.top_p.is_some()
            || self.top_k.is_some()
            || self.seed.is_some();
        SamplingParams {
            max_new_tokens: self.max_new_tokens,
            temperature: if sampling {
                self.temperature.unwrap_or(1.0)
            } else {
                0.0
            },
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or(0),
            stop: self.stop.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Slot file from `icae compress`; repeat for several slot sets, read in order.
    #[arg(long, required = true)]
    pub slots: Vec<PathBuf>,
    /// autoencode (reconstruct), continue, or answer (needs --prompt).
    #[arg(long)]
    pub mode: String,
    /// The question or instruction for --mode answer.
    #[arg(long)]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Upper bound for --max-new-tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_new_tokens_limit: usize,
    /// Print {"text", "token_ids", "finish_reason"} instead of streaming the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let mode: Mode = args.mode.parse()?;
    let params = args.sampling.params();
    params.validate(args.max_new_tokens_limit)?;
    let icae = load_icae(&args.model, &args.adapter)?;
    let slot_sets = args
        .slots
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading slots {}", path.display()))?;
            let (slots, meta) =
                decode_slots(&bytes).with_context(|| format!("slots {}", path.display()))?;
            if meta.fingerprint != icae.fingerprint {
                bail!(
                    "slots {} were made by model fingerprint {}, this model + adapter is {}",
                    path.display(),
                    meta.fingerprint,
                    icae.fingerprint
                );
            }
            Ok(slots)
        })
        .collect::<Result<Vec<Tensor>>>()?;
    let prompt_ids = match &args.prompt {
        Some(p) => Some(icae.tokenizer.encode_fragment(p)?),
        None => None,
    };
    let embeds = icae.decoder_input(&slot_sets, mode, prompt_ids.as_deref())?;
    let started = Instant::now();
    let stream = !args.json;
    let generation = icae.generate(&embeds, params, |delta| {
        if stream {
            print!("{delta}");
            let _ = std::io::stdout().flush();
        }
    })?;
    if args.json {
        print_json(&json!({
            "text": generation.text,
            "token_ids": generation.token_ids,
            "finish_reason": generation.finish_reason.as_str(),
            "prompt_positions": generation.prompt_len,
            "seconds": started.elapsed().as_secs_f64(),
            "adapter_trained": icae.adapter.config.trained,
        }))
    } else {
        println!();
        eprintln!(
            "[{} tokens, finish: {}, {:.2}s]",
            generation.token_ids.len(),
            generation.finish_reason.as_str(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
