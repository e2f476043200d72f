//! `icae-bench decode`: greedy decoding tokens/s of the engine (the decoder's batched step,
//! `icae_core::generate::decode_batch`, as decoder-svc's scheduler drives it) against HF
//! transformers `generate` in the same dtype and on the same device, alternating in one run;
//! and batch 1 as a fraction of the memory-bandwidth limit measured in the same run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use icae_core::args::ModelArgs;
use icae_core::device::{cpu_has_native_bf16, kind_name};
use icae_core::generate::decode_batch;
use icae_core::model::{KvCache, LlamaModel, ModelConfig};
use icae_core::tokenizer::TextTokenizer;
use icae_core::{SamplingParams, Sequence};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::worker::{synchronize, torch_device_name, PyWorker};
use icae_cli::common::print_json;
use icae_cli::pwc::read_pwc;

#[derive(Debug, Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes (sequences decoded together).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Prompt tokens of every sequence (all equal, so HF needs no padding).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens every sequence generates (end-of-sequence tokens do not stop either engine).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed repetitions per batch size and engine (the best is kept).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Text the prompts are cut from (repeated as needed).
    #[arg(long, default_value = "examples/pwc_dev.jsonl")]
    pub data: PathBuf,
    /// Python with transformers for the comparison; "" skips it.
    #[arg(long, env = "ICAE_PYTHON", default_value = "python3")]
    pub python: String,
    /// The HF reference script.
    #[arg(long, default_value = "scripts/bench/hf_generate.py")]
    pub hf_script: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// One engine's timing of one batch: prefill, then `new_tokens - 1` decoding steps.
#[derive(Debug, Clone, Copy)]
struct Timing {
    prefill: f64,
    decode: f64,
}

impl Timing {
    fn total(&self) -> f64 {
        self.prefill + self.decode
    }
}

/// Decoding tokens/s: tokens that came out of decoding steps (every token after the first of
/// each sequence, which the prefill gives) over the time from the end of the prefill.
fn decode_tokens_per_second(batch: usize, new_tokens: usize, decode_seconds: f64) -> f64 {
    (batch * new_tokens.saturating_sub(1)) as f64 / decode_seconds
}

/// Bytes one batch-1 decoding step reads: every weight the step multiplies by (attention
/// and MLP projections, norms, the LM head; an embedding row is negligible) plus the K and
/// V of `positions` cached positions, all in `kind`.
fn decode_step_bytes(c: &ModelConfig, kind: Kind, positions: f64) -> f64 {
    let (h, ffn) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_attention_heads * c.head_dim()) as f64;
    let kv = (c.kv_heads() * c.head_dim()) as f64;
    let per_layer = h * (q + 2.0 * kv) + q * h + 3.0 * h * ffn + 2.0 * h;
    let weights = c.num_hidden_layers as f64 * per_layer + h + c.vocab_size as f64 * h;
    let elt = kind.elt_size_in_bytes() as f64;
    let per_position = KvCache::bytes_for(
        1,
        c.num_hidden_layers as i64,
        c.kv_heads() as i64,
        c.head_dim() as i64,
        kind,
    ) as f64;
    weights * elt + per_position * positions
}

/// Mean cached positions a decoding step attends over: step k (1..new_tokens-1) runs token
/// k at position prompt + k - 1 and reads prompt + k positions.
fn mean_positions(prompt: usize, new_tokens: usize) -> f64 {
    prompt as f64 + new_tokens as f64 / 2.0
}

/// Copy bandwidth of `device`: bytes read plus bytes written per second by `dst.copy_(src)`
/// of a buffer far larger than any cache (the best of several copies).
fn copy_bandwidth(device: Device) -> f64 {
    let _guard = tch::no_grad_guard();
    let bytes: i64 = if device == Device::Cpu {
        256 << 20
    } else {
        2 << 30
    };
    let src = Tensor::ones([bytes / 4], (Kind::Float, device));
    let mut dst = Tensor::zeros([bytes / 4], (Kind::Float, device));
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        synchronize(device);
        let started = Instant::now();
        dst.copy_(&src);
        synchronize(device);
        best = best.min(started.elapsed().as_secs_f64());
    }
    2.0 * bytes as f64 / best
}

/// The prompts of a batch: consecutive windows of the bench tokens, as
/// scripts/bench/hf_generate.py cuts them.
fn prompts(ids: &[u32], batch: usize, prompt_tokens: usize) -> Vec<&[u32]> {
    (0..batch)
        .map(|b| &ids[b * prompt_tokens..(b + 1) * prompt_tokens])
        .collect()
}

/// Prefill each prompt (one pass each, as decoder-svc does for a request alone), then decode
/// all sequences together greedily until each has `new_tokens` tokens.
fn run_ours(
    model: &LlamaModel,
    tokenizer: &TextTokenizer,
    prompts: &[&[u32]],
    new_tokens: usize,
) -> Result<Timing> {
    let _guard = tch::no_grad_guard();
    synchronize(model.device);
    let started = Instant::now();
    let mut sequences = prompts
        .iter()
        .map(|p| {
            let ids: Vec<i64> = p.iter().map(|&t| t as i64).collect();
            let embeds = model.embed(&Tensor::from_slice(&ids).view([1, ids.len() as i64]));
            // No end-of-sequence ids: every sequence generates exactly new_tokens.
            Sequence::start(
                model,
                &embeds,
                SamplingParams::greedy(new_tokens),
                Vec::new(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    synchronize(model.device);
    let prefilled = Instant::now();
    loop {
        let mut running = 0;
        for sequence in sequences.iter_mut() {
            if sequence.finished().is_none() && sequence.choose(tokenizer)?.finished.is_none() {
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        let mut refs: Vec<&mut Sequence> = sequences.iter_mut().collect();
        decode_batch(model, &mut refs)?;
    }
    synchronize(model.device);
    let generated: usize = sequences.iter().map(|s| s.generated().len()).sum();
    anyhow::ensure!(
        generated == prompts.len() * new_tokens,
        "generated {generated} tokens, expected {}",
        prompts.len() * new_tokens
    );
    Ok(Timing {
        prefill: (prefilled - started).as_secs_f64(),
        decode: prefilled.elapsed().as_secs_f64(),
    })
}

fn ask_hf(hf: &mut PyWorker, batch: usize, args: &DecodeArgs) -> Result<Timing> {
    let answer = hf.ask(&json!({
        "batch": batch, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
    }))?;
    let generated = answer["generated"].as_u64().unwrap_or(0) as usize;
    anyhow::ensure!(
        generated == batch * args.new_tokens,
        "HF generated {generated} tokens, expected {}",
        batch * args.new_tokens
    );
    Ok(Timing {
        prefill: answer["prefill_seconds"]
            .as_f64()
            .context("prefill_seconds")?,
        decode: answer["decode_seconds"]
            .as_f64()
            .context("decode_seconds")?,
    })
}

pub fn run(args: DecodeArgs) -> Result<()> {
    anyhow::ensure!(
        args.new_tokens >= 2,
        "--new-tokens must be at least 2 (the first comes from the prefill)"
    );
    anyhow::ensure!(
        args.prompt_tokens >= 1,
        "--prompt-tokens must be at least 1"
    );
    anyhow::ensure!(
        !args.batches.is_empty() && args.batches.iter().all(|&b| b > 0),
        "--batches must list batch sizes of at least 1"
    );
    args.model.apply_threads();
    let device = args.model.device.resolve()?;
    let kind = args.model.dtype.resolve(device);
    let model = LlamaModel::load(&args.model.model, device, kind)
        .with_context(|| format!("loading {}", args.model.model.display()))?;
    let tokenizer = TextTokenizer::load(&args.model.model)?;
    let needed = args.prompt_tokens * args.batches.iter().copied().max().unwrap_or(1);
    let ids = bench_ids(&tokenizer, &args.data, needed)?;
    let mut hf = if args.python.is_empty() {
        None
    } else {
        Some(PyWorker::start_reference(
            &args.python,
            &args.hf_script,
            &args.model.model,
            &ids,
            (device, kind),
            Vec::new(),
        )?)
    };
    let bandwidth = copy_bandwidth(device);

    let mut rows = Vec::new();
    for &batch in &args.batches {
        let batch_prompts = prompts(&ids, batch, args.prompt_tokens);
        run_ours(&model, &tokenizer, &batch_prompts, args.new_tokens)?; // warm-up
        if let Some(hf) = hf.as_mut() {
            ask_hf(hf, batch, &args)?;
        }
        let (mut ours, mut theirs): (Option<Timing>, Option<Timing>) = (None, None);
        for _ in 0..args.repeats.max(1) {
            let t = run_ours(&model, &tokenizer, &batch_prompts, args.new_tokens)?;
            if ours.is_none_or(|o| t.decode < o.decode) {
                ours = Some(t);
            }
            if let Some(hf) = hf.as_mut() {
                let t = ask_hf(hf, batch, &args)?;
                if theirs.is_none_or(|o| t.decode < o.decode) {
                    theirs = Some(t);
                }
            }
        }
        let ours = ours.context("no timing")?;
        let rust_tps = decode_tokens_per_second(batch, args.new_tokens, ours.decode);
        let hf_tps = theirs.map(|t| decode_tokens_per_second(batch, args.new_tokens, t.decode));
        let step = ours.decode / (args.new_tokens - 1) as f64;
        let step_bytes = decode_step_bytes(
            &model.config,
            kind,
            mean_positions(args.prompt_tokens, args.new_tokens),
        );
        // Only batch 1 is bandwidth bound in the usual sense: larger batches read the
        // weights once for several tokens (and their caches besides).
        let bandwidth_fraction = (batch == 1).then(|| step_bytes / bandwidth / step);
        rows.push(json!({
            "batch": batch,
            "rust_decode_tokens_per_second": rust_tps,
            "rust_step_seconds": step,
            "rust_prefill_seconds": ours.prefill,
            "rust_generate_tokens_per_second": (batch * args.new_tokens) as f64 / ours.total(),
            "hf_decode_tokens_per_second": hf_tps,
            "hf_prefill_seconds": theirs.map(|t| t.prefill),
            "hf_generate_tokens_per_second": theirs.map(|t| (batch * args.new_tokens) as f64 / t.total()),
            "decode_speedup_vs_hf": hf_tps.map(|h| rust_tps / h),
            "generate_speedup_vs_hf": theirs.map(|t| t.total() / ours.total()),
            "step_bytes_read": (batch == 1).then_some(step_bytes),
            "bandwidth_limit_step_seconds": (batch == 1).then(|| step_bytes / bandwidth),
            "fraction_of_bandwidth_limit": bandwidth_fraction,
        }));
    }
    let report = json!({
        "bench": "decode",
        "device": torch_device_name(device),
        "dtype": kind_name(kind),
        "threads": tch::get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "hf_threads": hf.as_ref().map(|h| h.threads()),
        "hf_dtype": hf.as_ref().map(|h| h.ready["dtype"].clone()),
        "hf_device": hf.as_ref().map(|h| h.ready["device"].clone()),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "copy_bandwidth_gb_per_second": bandwidth / 1e9,
        "bandwidth_convention": "copy_ of a large buffer, bytes read + bytes written over time; \
            limit = bytes a batch-1 step reads (weights + KV cache at the mean context) / that",
        "rows": rows,
    });
    if args.json {
        return print_json(&report);
    }
    println!(
        "device {}, {}, {} threads (HF: {}); prompts of {} tokens, {} new tokens each; copy bandwidth {:.1} GB/s (read + written, measured now); best of {} alternating runs",
        torch_device_name(device),
        kind_name(kind),
        tch::get_num_threads(),
        hf.as_ref().map_or("-".into(), |h| h.threads().to_string()),
        args.prompt_tokens,
        args.new_tokens,
        bandwidth / 1e9,
        args.repeats
    );
    println!("batch  rust decode tok/s  HF decode tok/s  rust/HF  rust/HF (with prefill)  of bandwidth limit");
    let fmt = |v: &serde_json::Value, f: &dyn Fn(f64) -> String| v.as_f64().map_or("-".into(), f);
    for row in &rows {
        println!(
            "{:>5}  {:>17.1}  {:>15}  {:>7}  {:>22}  {:>18}",
            row["batch"],
            row["rust_decode_tokens_per_second"]
                .as_f64()
                .unwrap_or_default(),
            fmt(&row["hf_decode_tokens_per_second"], &|v| format!("{v:.1}")),
            fmt(&row["decode_speedup_vs_hf"], &|v| format!("{v:.2}x")),
            fmt(&row["generate_speedup_vs_hf"], &|v| format!("{v:.2}x")),
            fmt(&row["fraction_of_bandwidth_limit"], &|v| format!(
                "{:.0}%",
                100.0 * v
            )),
        );
    }
    Ok(())
}

/// Token ids of the bench text's first record, repeated until `needed` exist.
fn bench_ids(tokenizer: &TextTokenizer, data: &std::path::Path, needed: usize) -> Result<Vec<u32>> {
    let records = read_pwc(data)?;
    let article = &records
        .first()
        .context("no records in the bench data")?
        .input;
    let one = tokenizer.encode(article)?;
    anyhow::ensure!(!one.is_empty(), "the bench article has no tokens");
    Ok(one.iter().copied().cycle().take(needed).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_135m() -> ModelConfig {
        ModelConfig::from_json(
            r#"{"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "vocab_size": 49152,
                "tie_word_embeddings": true, "max_position_embeddings": 8192}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_step_reads_every_weight_once_and_the_cache() {
        let c = smollm2_135m();
        // 134,515,008 parameters (the embedding counted once, as the tied LM head).
        let params = 134_515_008.0;
        assert_eq!(decode_step_bytes(&c, Kind::Float, 0.0), params * 4.0);
        assert_eq!(decode_step_bytes(&c, Kind::BFloat16, 0.0), params * 2.0);
        // K and V: 30 layers x 3 heads x 64 dims x 2 bytes each, per position.
        let kv = 2.0 * 30.0 * 3.0 * 64.0 * 2.0;
        assert_eq!(
            decode_step_bytes(&c, Kind::BFloat16, 100.0),
            params * 2.0 + 100.0 * kv
        );
    }

    #[test]
    fn decode_rate_counts_tokens_after_the_first() {
        assert_eq!(decode_tokens_per_second(8, 65, 2.0), 256.0);
        assert_eq!(mean_positions(512, 64), 544.0);
    }

    #[test]
    fn prompts_are_consecutive_windows() {
        let ids: Vec<u32> = (0..12).collect();
        assert_eq!(
            prompts(&ids, 3, 4),
            vec![&ids[0..4], &ids[4..8], &ids[8..12]]
        );
    }
}
