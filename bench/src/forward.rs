//! `icae-bench forward`: compression throughput of the Rust engine, as a fraction of the
//! matmul FLOP/s this machine reaches and against HF transformers, measured in one run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::device::{cpu_has_native_bf16, kind_name};
use icae_core::model::ModelConfig;
use icae_core::IcaeModel;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::worker::{synchronize, torch_device_name, PyWorker};
use icae_cli::common::{load_icae, print_json};
use icae_cli::pwc::read_pwc;

#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Input lengths in tokens (one document each).
    #[arg(long, value_delimiter = ',', default_value = "128,512,2048")]
    pub lengths: Vec<usize>,
    /// Documents compressed together in the batch case; 0 skips it.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens of each document of the batch case.
    #[arg(long, default_value_t = 512)]
    pub batch_tokens: usize,
    /// Timed repetitions per case and engine (the best is kept).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Text the inputs are cut from (repeated as needed).
    #[arg(long, default_value = "examples/pwc_dev.jsonl")]
    pub data: PathBuf,
    /// Python with transformers + peft for the comparison; "" skips it.
    #[arg(long, env = "ICAE_PYTHON", default_value = "python3")]
    pub python: String,
    /// The HF reference script.
    #[arg(long, default_value = "scripts/bench/hf_compress.py")]
    pub hf_script: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// One timed case: `batch` documents of `tokens` tokens compressed together.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Case {
    tokens: usize,
    batch: usize,
}

/// The cases of a run: each length alone, then the batch case (if any).
fn cases(args: &ForwardArgs) -> Vec<Case> {
    let mut cases: Vec<Case> = args
        .lengths
        .iter()
        .map(|&tokens| Case { tokens, batch: 1 })
        .collect();
    if args.batch > 0 && args.batch_tokens > 0 {
        cases.push(Case {
            tokens: args.batch_tokens,
            batch: args.batch,
        });
    }
    cases
}

/// The documents of a case: consecutive windows of the bench tokens, as
/// scripts/bench/hf_compress.py's `batch_documents` cuts them.
fn documents(ids: &[u32], case: Case) -> Vec<&[u32]> {
    (0..case.batch)
        .map(|b| &ids[b * case.tokens..(b + 1) * case.tokens])
        .collect()
}

pub fn run(args: ForwardArgs) -> Result<()> {
    if args.adapter.adapter.is_file() {
        bail!("bench forward needs an adapter directory (the HF reference reads icae_config.json)");
    }
    let cases = cases(&args);
    anyhow::ensure!(
        !cases.is_empty(),
        "nothing to measure: give --lengths or --batch"
    );
    let icae = load_icae(&args.model, &args.adapter)?;
    let (device, kind) = (icae.device(), icae.kind());
    let needed = cases.iter().map(|c| c.tokens * c.batch).max().unwrap_or(0);
    let ids = bench_tokens(&icae, &args.data, needed)?;
    let mut hf = if args.python.is_empty() {
        None
    } else {
        Some(start_hf(&args, &ids, device, kind)?)
    };
    let peak = matmul_peak_flops(device, kind);

    // Rust and HF runs alternate, so both see the same machine state; the best of each is kept.
    let mut rows = Vec::new();
    for &case in &cases {
        let docs = documents(&ids, case);
        let request = json!({"length": case.tokens, "batch": case.batch});
        let time_rust = || -> Result<f64> {
            synchronize(device);
            let started = Instant::now();
            icae.compress_many(&docs)?;
            synchronize(device);
            Ok(started.elapsed().as_secs_f64())
        };
        time_rust()?; // warm-up
        if let Some(hf) = hf.as_mut() {
            hf.seconds(&request)?;
        }
        let (mut rust_best, mut hf_best) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..args.repeats.max(1) {
            rust_best = rust_best.min(time_rust()?);
            if let Some(hf) = hf.as_mut() {
                hf_best = hf_best.min(hf.seconds(&request)?);
            }
        }
        let tokens = (case.tokens * case.batch) as f64;
        let flops = case.batch as f64 * compression_flops(&icae, case.tokens);
        let rust_tps = tokens / rust_best;
        let hf_tps = hf.as_ref().map(|_| tokens / hf_best);
        rows.push(json!({
            "tokens": case.tokens,
            "batch": case.batch,
            "segments": icae.num_segments(case.tokens),
            "rust_tokens_per_second": rust_tps,
            "rust_gflops": flops / rust_best / 1e9,
            "fraction_of_matmul_peak": flops / rust_best / peak,
            "hf_tokens_per_second": hf_tps,
            "speedup_vs_hf": hf_tps.map(|h| rust_tps / h),
        }));
    }
    let report = json!({
        "bench": "forward",
        "device": torch_device_name(device),
        "dtype": kind_name(kind),
        "threads": tch::get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "hf_threads": hf.as_ref().map(|h| h.threads()),
        "hf_dtype": hf.as_ref().map(|h| h.ready["dtype"].clone()),
        "hf_device": hf.as_ref().map(|h| h.ready["device"].clone()),
        "matmul_peak_gflops": peak / 1e9,
        "repeats": args.repeats,
        "rows": rows,
    });
    if args.json {
        return print_json(&report);
    }
    println!(
        "device {}, {}, {} threads (HF: {}), {} matmul peak {:.1} GFLOP/s (measured now), best of {} alternating runs",
        torch_device_name(device),
        kind_name(kind),
        tch::get_num_threads(),
        hf.as_ref().map_or("-".into(), |h| h.threads().to_string()),
        kind_name(kind),
        peak / 1e9,
        args.repeats
    );
    println!("tokens  batch  segments  rust tok/s  rust GFLOP/s  of peak  HF tok/s  rust/HF");
    for row in &rows {
        println!(
            "{:>6}  {:>5}  {:>8}  {:>10.0}  {:>12.1}  {:>6.1}%  {:>8}  {:>7}",
            row["tokens"],
            row["batch"],
            row["segments"],
            row["rust_tokens_per_second"].as_f64().unwrap_or_default(),
            row["rust_gflops"].as_f64().unwrap_or_default(),
            100.0 * row["fraction_of_matmul_peak"].as_f64().unwrap_or_default(),
            row["hf_tokens_per_second"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.0}")),
            row["speedup_vs_hf"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}x")),
        );
    }
    Ok(())
}

/// The HF transformers reference (scripts/bench/hf_compress.py) in our dtype, on our device.
fn start_hf(args: &ForwardArgs, ids: &[u32], device: Device, kind: Kind) -> Result<PyWorker> {
    PyWorker::start_reference(
        &args.python,
        &args.hf_script,
        &args.model.model,
        ids,
        (device, kind),
        vec!["--adapter".into(), args.adapter.adapter.clone().into()],
    )
}

/// Token ids of the example article, repeated until `needed` tokens exist.
pub(crate) fn bench_tokens(
    icae: &IcaeModel,
    data: &std::path::Path,
    needed: usize,
) -> Result<Vec<u32>> {
    let records = read_pwc(data)?;
    let article = &records
        .first()
        .context("no records in the bench data")?
        .input;
    let one = icae.tokenizer.encode(article)?;
    anyhow::ensure!(!one.is_empty(), "the bench article has no tokens");
    Ok(one.iter().copied().cycle().take(needed).collect())
}

/// The best matmul FLOP/s in `kind` on `device` over shapes like the model's projections
/// (and, on a GPU, large squares: a small model's shapes leave most of a GPU idle).
pub(crate) fn matmul_peak_flops(device: Device, kind: Kind) -> f64 {
    let _guard = tch::no_grad_guard();
    let mut shapes = vec![
        (512i64, 576i64, 1536i64),
        (1024, 1024, 1024),
        (2048, 576, 576),
    ];
    if device != Device::Cpu {
        shapes.extend([(4096, 4096, 4096), (8192, 8192, 8192)]);
    }
    let mut best: f64 = 0.0;
    for (m, k, n) in shapes {
        let a = Tensor::randn([m, k], (kind, device));
        let b = Tensor::randn([k, n], (kind, device));
        let _ = a.matmul(&b); // warm-up
        let reps = 10;
        synchronize(device);
        let started = Instant::now();
        for _ in 0..reps {
            let _ = a.matmul(&b);
        }
        synchronize(device);
        let flops = 2.0 * (m * k * n) as f64 * reps as f64;
        best = best.max(flops / started.elapsed().as_secs_f64());
    }
    best
}

/// Multiply-add FLOPs of compressing `tokens` tokens: projections, LoRA and attention of
/// every segment (tokens + memory slots); the LM head is not run.
fn compression_flops(icae: &IcaeModel, tokens: usize) -> f64 {
    let c: &ModelConfig = &icae.base.config;
    let segments = icae.num_segments(tokens);
    let seg_len = tokens.div_ceil(segments);
    let (h, ffn) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_attention_heads * c.head_dim()) as f64;
    let kv = (c.kv_heads() * c.head_dim()) as f64;
    let r = icae.adapter.lora.rank as f64;
    let lora_targets = icae.adapter.lora.targets().len() as f64;
    let per_position =
        2.0 * (h * (q + 2.0 * kv) + q * h + 3.0 * h * ffn + lora_targets * r * (h + q));
    let mut total = 0.0;
    let mut remaining = tokens;
    for _ in 0..segments {
        let n = (remaining.min(seg_len) + icae.adapter.mem_size()) as f64;
        remaining = remaining.saturating_sub(seg_len);
        // QK^T and AV over the causal half.
        let attention = 2.0 * 2.0 * q * n * n / 2.0;
        total += c.num_hidden_layers as f64 * (n * per_position + attention);
    }
    total
}
