//! `icae-bench`: performance of the engine and the services, each measured side by side
//! with its reference in one run (these machines are noisy: ratios, not absolute times).
//! BENCHMARKS.md gives every command and its latest numbers.

mod decode;
mod forward;
mod refine;
mod serve;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "icae-bench",
    version,
    about = "Benchmarks of the ICAE engine and services, against HF transformers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compression tokens/s per input length, vs matmul peak and vs HF transformers.
    Forward(forward::ForwardArgs),
    /// Greedy decode tokens/s at batch 1 and 8 vs transformers `generate`, and batch 1 as
    /// a fraction of the memory-bandwidth limit.
    Decode(decode::DecodeArgs),
    /// Latency, throughput and bytes of the running services (see scripts/bench-serve.sh).
    Serve(serve::ServeArgs),
    /// A refinement step against a plain decoder forward, and against the PyTorch oracle.
    Refine(refine::RefineArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Forward(args) => forward::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Refine(args) => refine::run(args),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(serve::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
