use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::refine::{reconstruction_losses, DEFAULT_LEARNING_RATE};
use icae_core::slots::{encode_slots, token_digest, SlotFidelity, SlotMeta};
use icae_core::{IcaeModel, RefineOptions, Refinement, SlotDtype, ToCompress};
use indicatif::{ProgressBar, ProgressStyle};
use tch::Tensor;

use icae_cli::common::{load_icae, print_json, TextArgs};

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
    /// Refine the slots with this many optimiser steps against the frozen decoder's
    /// reconstruction of the text (0: plain ICAE). Costs about 3 decoder forwards per step;
    /// worth it for a document compressed once and read many times (docs/refinement.md).
    #[arg(long, default_value_t = 0)]
    pub refine_steps: usize,
    /// Stop refining once the reconstruction loss (nats per token) is at or below this.
    #[arg(long)]
    pub target_loss: Option<f64>,
    /// Adam's learning rate on the slot vectors.
    #[arg(long, default_value_t = DEFAULT_LEARNING_RATE)]
    pub refine_lr: f64,
    /// Measure the reconstruction loss of plain slots too (one decoder forward; refined
    /// slots always have it).
    #[arg(long)]
    pub reconstruction_loss: bool,
    /// Slots per segment: the adapter's mem_size when absent (the rate it was trained for);
    /// fewer for a higher rate, meant with --refine-steps (docs/refinement.md).
    #[arg(long)]
    pub slots_per_segment: Option<usize>,
    /// Refuse more refinement steps than this.
    #[arg(long, default_value_t = 200)]
    pub max_refine_steps: usize,
    /// Refuse inputs longer than this many tokens.
    #[arg(long, default_value_t = 32_768)]
    pub max_input_tokens: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CompressArgs) -> Result<()> {
    let options = RefineOptions {
        steps: args.refine_steps,
        target_loss: args.target_loss,
        learning_rate: args.refine_lr,
    };
    options.check(args.max_refine_steps)?;
    let icae = load_icae(&args.model, &args.adapter)?;
    let text = args.text.read()?;
    let ids = icae.tokenizer.encode(&text)?;
    icae.check_token_ids(&ids, args.max_input_tokens)?;
    let slots_per_segment = args
        .slots_per_segment
        .unwrap_or_else(|| icae.adapter.mem_size());
    icae.check_slots_per_segment(slots_per_segment)?;
    let started = Instant::now();
    let document = ToCompress::whole(&ids, slots_per_segment);
    let compressed = icae
        .compress_wanted(&[document], &|_| true)?
        .remove(0)
        .context("compression returned no slots")?;
    let compress_seconds = started.elapsed().as_secs_f64();
    let (slots, fidelity) = if options.steps > 0 {
        refine(&icae, &ids, compressed.slots, options, args.slot_dtype)?
    } else if args.reconstruction_loss {
        let stored = args.slot_dtype.cast(&compressed.slots);
        let losses = reconstruction_losses(icae.read_back_model()?, &[(&ids, &stored)])?;
        let fidelity = SlotFidelity {
            reconstruction_loss: Some(losses[0]),
            ..SlotFidelity::default()
        };
        (compressed.slots, fidelity)
    } else {
        (compressed.slots, SlotFidelity::default())
    };
    let elapsed = started.elapsed().as_secs_f64();
    let meta = SlotMeta {
        fingerprint: icae.fingerprint.clone(),
        num_tokens: compressed.num_tokens,
        num_segments: compressed.num_segments,
        created_at: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        traceparent: None,
        token_digest: Some(token_digest(&ids)),
        fidelity,
    };
    let bytes = encode_slots(&args.slot_dtype.cast(&slots), &meta)?;
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    let num_slots = slots.size()[0];
    let ratio = compressed.num_tokens as f64 / num_slots as f64;
    if args.json {
        print_json(&serde_json::json!({
            "num_tokens": compressed.num_tokens, "num_slots": num_slots, "num_segments": compressed.num_segments,
            "ratio": ratio, "slots_per_segment": slots_per_segment, "bytes": bytes.len(), "seconds": elapsed, "compress_seconds": compress_seconds,
            "refine_seconds": elapsed - compress_seconds, "refine_steps": fidelity.steps_run,
            "reconstruction_loss": fidelity.reconstruction_loss, "fingerprint": icae.fingerprint,
            "adapter_trained": icae.adapter.config.trained, "out": args.out,
            "slot_dtype": args.slot_dtype.to_string(),
        }))
    } else {
        let refined = match fidelity.reconstruction_loss {
            Some(loss) if fidelity.refine_steps > 0 => format!(
                ", refined {} steps, reconstruction loss {loss:.4} nats/token",
                fidelity.steps_run
            ),
            Some(loss) => format!(", reconstruction loss {loss:.4} nats/token"),
            None => String::new(),
        };
        println!(
            "{} tokens -> {} slots ({} segments, {:.2}x){refined}, {} bytes, {:.3}s -> {}",
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

/// Refine one document's slots, with a progress bar when stderr is a terminal.
fn refine(
    icae: &IcaeModel,
    ids: &[u32],
    slots: Tensor,
    options: RefineOptions,
    storage: SlotDtype,
) -> Result<(Tensor, SlotFidelity)> {
    let model = icae.read_back_model()?;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(options.steps as u64).with_style(
            ProgressStyle::with_template("refining [{bar:40}] {pos}/{len} steps {msg}")
                .expect("static template")
                .progress_chars("=> "),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut refinement = Refinement::new(vec![(ids.to_vec(), slots)], options);
    while let Some(report) = refinement.step(model, &|_| true)? {
        bar.inc(report.stepped as u64);
        bar.set_message(format!("loss {:.4}", report.mean_loss));
    }
    bar.finish_and_clear();
    let refined = refinement
        .finish(model, storage)?
        .remove(0)
        .context("refinement returned no slots")?;
    let fidelity = SlotFidelity {
        refine_steps: options.steps,
        target_loss: options.target_loss,
        steps_run: refined.steps_run,
        reconstruction_loss: Some(refined.reconstruction_loss),
    };
    Ok((refined.slots, fidelity))
}
