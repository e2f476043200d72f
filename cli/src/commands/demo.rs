//! The main job: compress the example article, reconstruct it and answer its questions
//! from the slots, with the full-context baseline beside it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use icae_core::model::KvCache;
use icae_core::slots::{encode_slots, SlotMeta};
use icae_core::{IcaeModel, Mode, SamplingParams};
use serde::Deserialize;

use crate::common::{load_icae, AdapterArgs, ModelArgs};

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// PwC-format JSONL: {"input", "prompt", "answer"} per line (all lines share one input).
    #[arg(long, default_value = "examples/pwc_dev.jsonl")]
    pub data: PathBuf,
    /// Questions to answer (0 = none).
    #[arg(long, default_value_t = 3)]
    pub questions: usize,
    #[arg(long, default_value_t = 64)]
    pub max_answer_tokens: usize,
}

#[derive(Debug, Deserialize)]
pub struct PwcRecord {
    pub input: String,
    pub prompt: String,
    pub answer: String,
}

pub fn read_pwc(path: &std::path::Path) -> Result<Vec<PwcRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

pub fn run(args: DemoArgs) -> Result<()> {
    let records = read_pwc(&args.data)?;
    let article = &records
        .first()
        .context("the data file has no records")?
        .input;
    let load_started = Instant::now();
    let icae = load_icae(&args.model, &args.adapter)?;
    println!(
        "model {} + adapter {} loaded in {:.1}s (fingerprint {}, mem_size {}, rate {}{})",
        args.model.model.display(),
        args.adapter.adapter.display(),
        load_started.elapsed().as_secs_f64(),
        icae.fingerprint,
        icae.adapter.config.mem_size,
        icae.adapter.config.compression_rate,
        if icae.adapter.config.trained {
            ""
        } else {
            ", UNTRAINED"
        }
    );

    let ids = icae.tokenizer.encode(article)?;
    let started = Instant::now();
    let compressed = icae.compress(&ids)?;
    let compress_s = started.elapsed().as_secs_f64();
    let num_slots = compressed.slots.size()[0];
    let slot_bytes = encode_slots(
        &compressed.slots,
        &SlotMeta {
            fingerprint: icae.fingerprint.clone(),
            num_tokens: ids.len(),
            num_segments: compressed.num_segments,
            created_at: 0,
            traceparent: None,
        },
    )?
    .len();
    let c = &icae.base.config;
    let kv_bytes = KvCache::bytes_for(
        ids.len() as i64,
        c.num_hidden_layers as i64,
        c.kv_heads() as i64,
        c.head_dim() as i64,
        icae.kind(),
    );
    println!(
        "compressed {} tokens -> {} slots in {} segments: {:.2}x fewer positions, {:.3}s ({:.0} tokens/s)",
        ids.len(),
        num_slots,
        compressed.num_segments,
        ids.len() as f64 / num_slots as f64,
        compress_s,
        ids.len() as f64 / compress_s
    );
    println!(
        "slots: {slot_bytes} bytes stored vs {kv_bytes} bytes of KV cache for the full text ({:.1}x smaller)",
        kv_bytes as f64 / slot_bytes as f64
    );

    let started = Instant::now();
    let embeds = icae.decoder_input(
        std::slice::from_ref(&compressed.slots),
        Mode::Autoencode,
        None,
    )?;
    let reconstruction = icae.generate(&embeds, SamplingParams::greedy(ids.len() + 16), |_| {})?;
    let reconstruct_s = started.elapsed().as_secs_f64();
    let matching = reconstruction
        .token_ids
        .iter()
        .zip(&ids)
        .take_while(|(a, b)| a == b)
        .count();
    println!(
        "reconstruction: {} tokens in {:.2}s, exact prefix {matching}/{} tokens, finish {}",
        reconstruction.token_ids.len(),
        reconstruct_s,
        ids.len(),
        reconstruction.finish_reason.as_str()
    );
    println!("  original:      {}", excerpt(article));
    println!("  reconstructed: {}", excerpt(&reconstruction.text));

    for record in records.iter().take(args.questions) {
        let prompt_ids = icae.tokenizer.encode_fragment(&record.prompt)?;
        let params = SamplingParams::greedy(args.max_answer_tokens);
        let (from_slots, slots_s) = answer(
            &icae,
            &icae.decoder_input(
                std::slice::from_ref(&compressed.slots),
                Mode::Answer,
                Some(&prompt_ids),
            )?,
            &params,
        )?;
        let (from_text, text_s) = answer(
            &icae,
            &icae.baseline_input(&ids, Mode::Answer, Some(&prompt_ids))?,
            &params,
        )?;
        println!(
            "Q: {}\n  reference:         {}",
            record.prompt, record.answer
        );
        println!("  from slots  {slots_s:5.2}s: {}", excerpt(&from_slots));
        println!("  full text   {text_s:5.2}s: {}", excerpt(&from_text));
    }
    Ok(())
}

fn answer(
    icae: &IcaeModel,
    embeds: &tch::Tensor,
    params: &SamplingParams,
) -> Result<(String, f64)> {
    let started = Instant::now();
    let generation = icae.generate(embeds, params.clone(), |_| {})?;
    Ok((generation.text, started.elapsed().as_secs_f64()))
}

fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}
