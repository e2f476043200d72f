//! `icae bench forward`: compression throughput of the Rust engine, as a fraction of the
//! matmul FLOP/s this machine reaches and against HF transformers, measured in one run.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::model::ModelConfig;
use icae_core::IcaeModel;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::commands::demo::read_pwc;
use crate::common::{load_icae, print_json};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Compression tokens/s per input length, vs matmul peak and vs HF transformers.
    Forward(ForwardArgs),
    /// Latency, throughput and bytes of the running services (see scripts/bench-serve.sh).
    Serve(crate::commands::bench_serve::ServeArgs),
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Input lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "128,512,2048")]
    pub lengths: Vec<usize>,
    /// Timed repetitions per length and engine (the best is kept).
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

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Forward(args) => forward(args),
        BenchCommand::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(crate::commands::bench_serve::run(args)),
    }
}

fn forward(args: ForwardArgs) -> Result<()> {
    if args.adapter.adapter.is_file() {
        bail!("bench forward needs an adapter directory (the HF reference reads icae_config.json)");
    }
    let icae = load_icae(&args.model, &args.adapter)?;
    let ids = bench_tokens(
        &icae,
        &args.data,
        args.lengths.iter().copied().max().unwrap_or(0),
    )?;
    let mut hf = if args.python.is_empty() {
        None
    } else {
        Some(HfReference::start(&args, &ids)?)
    };
    let peak = matmul_peak_flops(icae.device(), icae.kind());

    // Rust and HF runs alternate, so both see the same machine state; the best of each is kept.
    let mut rows = Vec::new();
    for &length in &args.lengths {
        let doc = &ids[..length];
        icae.compress(doc)?; // warm-up
        if let Some(hf) = hf.as_mut() {
            hf.time(length)?;
        }
        let (mut rust_best, mut hf_best) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..args.repeats.max(1) {
            let started = Instant::now();
            icae.compress(doc)?;
            rust_best = rust_best.min(started.elapsed().as_secs_f64());
            if let Some(hf) = hf.as_mut() {
                hf_best = hf_best.min(hf.time(length)?);
            }
        }
        let flops = compression_flops(&icae, length);
        let rust_tps = length as f64 / rust_best;
        let hf_tps = hf.as_ref().map(|_| length as f64 / hf_best);
        rows.push(json!({
            "tokens": length,
            "segments": icae.num_segments(length),
            "rust_tokens_per_second": rust_tps,
            "rust_gflops": flops / rust_best / 1e9,
            "fraction_of_matmul_peak": flops / rust_best / peak,
            "hf_tokens_per_second": hf_tps,
            "speedup_vs_hf": hf_tps.map(|h| rust_tps / h),
        }));
    }
    let report = json!({
        "device": format!("{:?}", icae.device()),
        "threads": tch::get_num_threads(),
        "hf_threads": hf.as_ref().map(|h| h.threads),
        "matmul_peak_gflops": peak / 1e9,
        "repeats": args.repeats,
        "rows": rows,
    });
    if args.json {
        return print_json(&report);
    }
    println!(
        "device {:?}, {} threads (HF: {}), matmul peak {:.1} GFLOP/s (measured now), best of {} alternating runs",
        icae.device(),
        tch::get_num_threads(),
        hf.as_ref().map_or("-".into(), |h| h.threads.to_string()),
        peak / 1e9,
        args.repeats
    );
    println!("tokens  segments  rust tok/s  rust GFLOP/s  of peak  HF tok/s  rust/HF");
    for row in &rows {
        println!(
            "{:>6}  {:>8}  {:>10.0}  {:>12.1}  {:>6.1}%  {:>8}  {:>7}",
            row["tokens"],
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

/// The HF transformers reference (scripts/bench/hf_compress.py), kept running so its
/// timings interleave with ours.
struct HfReference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    threads: u64,
    _ids_file: tempfile::NamedTempFile,
}

impl HfReference {
    fn start(args: &ForwardArgs, ids: &[u32]) -> Result<Self> {
        let ids_file = tempfile::NamedTempFile::new()?;
        std::fs::write(ids_file.path(), serde_json::to_vec(ids)?)?;
        let mut child = Command::new(&args.python)
            .arg(&args.hf_script)
            .arg("--model")
            .arg(&args.model.model)
            .arg("--adapter")
            .arg(&args.adapter.adapter)
            .arg("--ids")
            .arg(ids_file.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {}", args.python, args.hf_script.display()))?;
        let stdin = child.stdin.take().context("HF reference stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("HF reference stdout")?);
        let mut hf = HfReference {
            child,
            stdin,
            stdout,
            threads: 0,
            _ids_file: ids_file,
        };
        let ready = hf.read()?;
        hf.threads = ready["threads"].as_u64().unwrap_or(0);
        Ok(hf)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the HF reference exited early (its error is above)");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Seconds HF takes to compress the first `length` tokens.
    fn time(&mut self, length: usize) -> Result<f64> {
        writeln!(self.stdin, "{length}")?;
        self.stdin.flush()?;
        self.read()?["seconds"]
            .as_f64()
            .context("HF reference answered without seconds")
    }
}

impl Drop for HfReference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Token ids of the example article, repeated until `needed` tokens exist.
fn bench_tokens(icae: &IcaeModel, data: &std::path::Path, needed: usize) -> Result<Vec<u32>> {
    let records = read_pwc(data)?;
    let article = &records
        .first()
        .context("no records in the bench data")?
        .input;
    let one = icae.tokenizer.encode(article)?;
    anyhow::ensure!(!one.is_empty(), "the bench article has no tokens");
    Ok(one.iter().copied().cycle().take(needed).collect())
}

/// The best matmul FLOP/s over shapes like the model's projections.
fn matmul_peak_flops(device: Device, kind: Kind) -> f64 {
    let _guard = tch::no_grad_guard();
    let mut best: f64 = 0.0;
    for &(m, k, n) in &[
        (512i64, 576i64, 1536i64),
        (1024, 1024, 1024),
        (2048, 576, 576),
    ] {
        let a = Tensor::randn([m, k], (kind, device));
        let b = Tensor::randn([k, n], (kind, device));
        let _ = a.matmul(&b); // warm-up
        let reps = 10;
        let started = Instant::now();
        for _ in 0..reps {
            let _ = a.matmul(&b);
        }
        if device != Device::Cpu {
            tch::Cuda::synchronize(0);
        }
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
