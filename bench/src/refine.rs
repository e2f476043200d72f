//! `icae-bench refine`: the cost of test-time slot refinement. Per case (documents of one
//! length, alone or several refined together): one refinement step against one plain decoder
//! forward of the same layout (the score a plain compression reports), and the engine's step
//! against the PyTorch oracle's (training/icae_train/refine.py, which refines documents one
//! after another) on the same documents, alternating, in one run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, ValueEnum};
use icae_core::args::{AdapterArgs, ModelArgs};
use icae_core::device::kind_name;
use icae_core::model::attention::{override_kernel, Kernel};
use icae_core::refine::reconstruction_losses;
use icae_core::{IcaeModel, RefineOptions, Refinement, SlotDtype};
use serde_json::json;

use crate::forward::bench_tokens;
use crate::worker::{synchronize, torch_device_name, PyWorker};
use icae_cli::common::{load_icae, print_json};

#[derive(Debug, Args)]
pub struct RefineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Document lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    pub lengths: Vec<usize>,
    /// Documents refined together in the batch case; 0 skips it.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens of each document of the batch case.
    #[arg(long, default_value_t = 128)]
    pub batch_tokens: usize,
    /// Refinement steps per timed run.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Timed repetitions per case and engine (the best is kept).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Text the documents are cut from (repeated as needed).
    #[arg(long, default_value = "examples/pwc_dev.jsonl")]
    pub data: PathBuf,
    /// Python with the training package (icae_train) for the oracle; "" skips it.
    #[arg(long, env = "ICAE_PYTHON", default_value = "python3")]
    pub python: String,
    /// The oracle's timing script.
    #[arg(long, default_value = "scripts/bench/py_refine.py")]
    pub oracle_script: PathBuf,
    /// Which attention kernel the engine uses while gradients flow: its own choice by
    /// shape, or one of the two everywhere (to compare them within a whole step).
    #[arg(long, value_enum, default_value_t = AttentionChoice::Auto)]
    pub attention: AttentionChoice,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttentionChoice {
    Auto,
    Fused,
    SpelledOut,
}

impl AttentionChoice {
    fn kernel(self) -> Option<Kernel> {
        match self {
            AttentionChoice::Auto => None,
            AttentionChoice::Fused => Some(Kernel::Fused),
            AttentionChoice::SpelledOut => Some(Kernel::SpelledOut),
        }
    }
}

pub fn run(args: RefineArgs) -> Result<()> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(!args.lengths.is_empty(), "give --lengths");
    override_kernel(args.attention.kernel());
    let icae = load_icae(&args.model, &args.adapter)?;
    let (device, kind) = (icae.device(), icae.kind());
    anyhow::ensure!(
        matches!(kind, tch::Kind::Float | tch::Kind::BFloat16),
        "bench refine compares with the oracle in f32 or bf16: run it with --dtype f32 or bf16"
    );
    let mut cases: Vec<(usize, usize)> = args.lengths.iter().map(|&l| (l, 1)).collect();
    if args.batch > 0 && args.batch_tokens > 0 {
        cases.push((args.batch_tokens, args.batch));
    }
    let needed = cases.iter().map(|(l, b)| l * b).max().unwrap_or(0);
    let ids = bench_tokens(&icae, &args.data, needed)?;
    let mut oracle = if args.python.is_empty() {
        None
    } else {
        Some(PyWorker::start_reference(
            &args.python,
            &args.oracle_script,
            &args.model.model,
            &ids,
            (device, kind),
            vec!["--adapter".into(), args.adapter.adapter.clone().into()],
        )?)
    };
    let mut rows = Vec::new();
    for (length, batch) in cases {
        // Consecutive windows of the bench tokens, as the oracle cuts them.
        let documents: Vec<&[u32]> = (0..batch)
            .map(|b| &ids[b * length..(b + 1) * length])
            .collect();
        let request = json!({"length": length, "batch": batch, "steps": args.steps});
        // Warm-ups, then alternating runs; the best of each is kept.
        step_seconds(&icae, &documents, args.steps)?;
        forward_seconds(&icae, &documents)?;
        if let Some(oracle) = oracle.as_mut() {
            oracle.seconds(&request)?;
        }
        let (mut step, mut forward, mut python) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
        for _ in 0..args.repeats.max(1) {
            step = step.min(step_seconds(&icae, &documents, args.steps)?);
            forward = forward.min(forward_seconds(&icae, &documents)?);
            if let Some(oracle) = oracle.as_mut() {
                python = python.min(oracle.seconds(&request)?);
            }
        }
        let python = oracle.as_ref().map(|_| python);
        rows.push(json!({
            "tokens": length,
            "batch": batch,
            "slots": icae.num_segments(length) * icae.adapter.mem_size(),
            "step_seconds": step,
            "forward_seconds": forward,
            "step_over_forward": step / forward,
            "oracle_step_seconds": python,
            "speedup_vs_oracle": python.map(|p| p / step),
        }));
    }
    let report = json!({
        "bench": "refine",
        "device": torch_device_name(device),
        "dtype": kind_name(kind),
        "threads": tch::get_num_threads(),
        "oracle_threads": oracle.as_ref().map(|o| o.threads()),
        "steps": args.steps,
        "repeats": args.repeats,
        "attention": format!("{:?}", args.attention),
        "rows": rows,
    });
    if args.json {
        return print_json(&report);
    }
    println!(
        "device {}, {}, attention {:?}, {} threads (oracle: {}), {} steps a run, best of {} alternating runs",
        torch_device_name(device),
        kind_name(kind),
        args.attention,
        tch::get_num_threads(),
        oracle
            .as_ref()
            .map_or("-".into(), |o| o.threads().to_string()),
        args.steps,
        args.repeats
    );
    println!(
        "tokens  batch  slots  step s  forward s  step/forward  oracle step s  engine speed-up"
    );
    for row in &rows {
        let number = |key: &str| row[key].as_f64().unwrap_or_default();
        println!(
            "{:>6}  {:>5}  {:>5}  {:>6.3}  {:>9.3}  {:>12.2}  {:>13}  {:>15}",
            row["tokens"],
            row["batch"],
            row["slots"],
            number("step_seconds"),
            number("forward_seconds"),
            number("step_over_forward"),
            row["oracle_step_seconds"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.3}")),
            row["speedup_vs_oracle"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}x")),
        );
    }
    Ok(())
}

/// Seconds per step of refining `documents` together for `steps` steps from their encoder
/// slots, the final score included (as the oracle's `refine` does).
fn step_seconds(icae: &IcaeModel, documents: &[&[u32]], steps: usize) -> Result<f64> {
    let start = documents
        .iter()
        .zip(icae.compress_many(documents)?)
        .map(|(ids, compressed)| (ids.to_vec(), compressed.slots))
        .collect();
    let model = icae.read_back_model()?;
    synchronize(icae.device());
    let started = Instant::now();
    let mut refinement = Refinement::new(
        start,
        RefineOptions {
            learning_rate: 0.1,
            ..RefineOptions::steps(steps)
        },
    );
    while refinement.step(model, &|_| true)?.is_some() {}
    refinement.finish(model, SlotDtype::F32)?;
    synchronize(icae.device());
    Ok(started.elapsed().as_secs_f64() / steps as f64)
}

/// Seconds of one plain decoder forward over the same layouts (reconstruction scores).
fn forward_seconds(icae: &IcaeModel, documents: &[&[u32]]) -> Result<f64> {
    let slots: Vec<_> = icae
        .compress_many(documents)?
        .into_iter()
        .map(|c| c.slots)
        .collect();
    let inputs: Vec<(&[u32], &tch::Tensor)> = documents.iter().copied().zip(&slots).collect();
    synchronize(icae.device());
    let started = Instant::now();
    reconstruction_losses(icae.read_back_model()?, &inputs)?;
    synchronize(icae.device());
    Ok(started.elapsed().as_secs_f64())
}
