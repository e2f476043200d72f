use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::slots::{encode_slots, token_digest, SlotMeta};
use icae_core::SlotDtype;

use crate::common::{load_icae, print_json, TextArgs};

#[derive(Debug, Args)]
pub struct CompressArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    #[command(flatten)]
    pub text: TextArgs,
    /// Output safetensors file: tensor `slots` [n, hidden] plus metadata.
    #[arg(long)]
    pub out: PathBuf,
    /// Precision of the stored slots: f32 (whatever --dtype the model runs in) or bf16
    /// (half the bytes). `icae generate` reads both.
    #[arg(long, env = "ICAE_SLOT_DTYPE", default_value = "f32")]
    pub slot_dtype: SlotDtype,
    /// Refuse inputs longer than this many tokens.
    #[arg(long, default_value_t = 32_768)]
    pub max_input_tokens: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CompressArgs) -> Result<()> {
    let icae = load_icae(&args.model, &args.adapter)?;
    let text = args.text.read()?;
    let ids = icae.tokenizer.encode(&text)?;
    icae.check_token_ids(&ids, args.max_input_tokens)?;
    let started = Instant::now();
    let compressed = icae.compress(&ids)?;
    let elapsed = started.elapsed().as_secs_f64();
    let meta = SlotMeta {
        fingerprint: icae.fingerprint.clone(),
        num_tokens: compressed.num_tokens,
        num_segments: compressed.num_segments,
        created_at: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        traceparent: None,
        token_digest: Some(token_digest(&ids)),
    };
    let bytes = encode_slots(&args.slot_dtype.cast(&compressed.slots), &meta)?;
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    let num_slots = compressed.slots.size()[0];
    let ratio = compressed.num_tokens as f64 / num_slots as f64;
    if args.json {
        print_json(&serde_json::json!({
            "num_tokens": compressed.num_tokens, "num_slots": num_slots, "num_segments": compressed.num_segments,
            "ratio": ratio, "bytes": bytes.len(), "seconds": elapsed, "fingerprint": icae.fingerprint,
            "adapter_trained": icae.adapter.config.trained, "out": args.out,
            "slot_dtype": args.slot_dtype.to_string(),
        }))
    } else {
        println!(
            "{} tokens -> {} slots ({} segments, {:.2}x) , {} bytes, {:.3}s -> {}",
            compressed.num_tokens,
            num_slots,
            compressed.num_segments,
            ratio,
            bytes.len(),
            elapsed,
            args.out.display()
        );
        Ok(())
    }
}
