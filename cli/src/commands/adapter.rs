use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use icae_core::adapter::{
    init_untrained, InitOptions, DEFAULT_COMPRESSION_RATE, DEFAULT_LORA_ALPHA,
};
use icae_core::fingerprint::base_fingerprint;
use icae_core::model::{LlamaModel, Target};
use icae_core::tokenizer::TextTokenizer;
use tch::{Device, Kind};

#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Write a deterministic UNTRAINED adapter (LoRA B = 0, seeded memory embeddings).
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// HF-layout base model directory.
    #[arg(long, env = "ICAE_MODEL")]
    pub model: PathBuf,
    /// Memory slots per segment.
    #[arg(long, default_value_t = 32)]
    pub mem_size: usize,
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    #[arg(long, default_value_t = DEFAULT_LORA_ALPHA)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = DEFAULT_COMPRESSION_RATE)]
    pub compression_rate: usize,
    /// LoRA target modules, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub target_modules: Vec<Target>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output adapter directory (replaced if it exists).
    pub out: PathBuf,
}

pub fn run(cmd: AdapterCommand) -> Result<()> {
    match cmd {
        AdapterCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> Result<()> {
    let model = LlamaModel::load(&args.model, Device::Cpu, Kind::Float)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = TextTokenizer::load(&args.model)?;
    // Memory embeddings start on the scale of real token embeddings.
    let embed_rms = {
        let _guard = tch::no_grad_guard();
        let all = model.embed(&tch::Tensor::arange(
            model.config.vocab_size as i64,
            (Kind::Int64, Device::Cpu),
        ));
        all.pow_tensor_scalar(2)
            .mean(Kind::Float)
            .sqrt()
            .double_value(&[])
    };
    let name = args
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let options = InitOptions {
        mem_size: args.mem_size,
        lora_r: args.lora_r,
        lora_alpha: args.lora_alpha,
        compression_rate: args.compression_rate,
        targets: args.target_modules.clone(),
        seed: args.seed,
    };
    let config = init_untrained(
        &args.out,
        &model.config,
        &name,
        &base_fingerprint(&args.model)?,
        embed_rms,
        tokenizer.chat_pieces(),
        &options,
    )?;
    println!(
        "wrote UNTRAINED adapter {} (mem_size {}, rate {}, LoRA r {} on {}) — for plumbing only, its slots carry no information",
        args.out.display(),
        config.mem_size,
        config.compression_rate,
        config.lora_r,
        config.target_modules.join(",")
    );
    Ok(())
}
