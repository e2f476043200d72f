//! A rolling restart under load, measured: two replicas of each service on loopback, steady
//! Compress and Generate load through icae-client's `Replicas`, then every replica replaced
//! one at a time (SIGTERM, wait for its exit, start it again on its port: a Deployment with
//! `maxUnavailable: 1`). Prints, for the calls started before, during and after the
//! rollout, how many there were, how many failed and their latency percentiles.
//!
//!     source scripts/env.sh
//!     cargo run --release --locked -p integration-tests --example rollout -- --phase-seconds 30

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use icae_client::{decoder_replicas, encoder_replicas, ConnectOptions, RetryPolicy};
use integration_tests::load::{compress_load, generate_load, Call, CallLog};
use integration_tests::*;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Seconds of load before the rollout, and again after it.
    #[arg(long, default_value_t = 30)]
    phase_seconds: u64,
    /// Load tasks per service, each sending one call after another.
    #[arg(long, default_value_t = 3)]
    tasks: usize,
    /// libtorch threads of each service (four share the machine).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Send calls that failed with UNAVAILABLE again (`RetryPolicy::default()`); without
    /// it only calls that never reached a server go to the other replica.
    #[arg(long)]
    retry: bool,
}

/// Latencies and failures of the calls of one method started in one phase.
fn summary(calls: &[&Call]) -> serde_json::Value {
    let mut ms: Vec<f64> = calls
        .iter()
        .filter(|c| c.error.is_none())
        .map(|c| c.latency.as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    // Nearest rank.
    let percentile = |p: f64| {
        let rank = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len().max(1));
        ms.get(rank - 1).copied().unwrap_or(f64::NAN)
    };
    json!({
        "calls": calls.len(),
        "failed": calls.iter().filter(|c| c.error.is_some()).count(),
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let redis = Redis::start();
    let threads = args.threads.to_string();
    let flags = ["--shutdown-grace-seconds", "120", "--threads", &threads];
    let mut services = Vec::new();
    for kind in [Kind::Encoder, Kind::Encoder, Kind::Decoder, Kind::Decoder] {
        services.push(Service::start(kind, &redis.url(), &flags).await);
    }
    let urls = |kind: Kind| -> Vec<String> {
        let of_kind = services.iter().filter(|s| s.kind == kind);
        of_kind.map(Service::url).collect()
    };
    let policy = match args.retry {
        true => RetryPolicy::default(),
        false => RetryPolicy::none(),
    };
    let options = ConnectOptions::default();
    let encoders = Arc::new(encoder_replicas(&urls(Kind::Encoder), &options, policy).unwrap());
    let decoders = Arc::new(decoder_replicas(&urls(Kind::Decoder), &options, policy).unwrap());
    let key = compress_key(&services[0].url(), "A document read back again and again.").await;

    let log = CallLog::new();
    let mut load = compress_load(&encoders, &log, args.tasks);
    load.extend(generate_load(&decoders, &key, &log, args.tasks));
    let phase = Duration::from_secs(args.phase_seconds);
    tokio::time::sleep(phase).await;

    let rollout_start = Instant::now();
    for service in &mut services {
        service.sigterm();
        let status = service.wait_exit(Duration::from_secs(300)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}\n{}",
            service.logs()
        );
        service.restart().await;
    }
    let rollout_end = Instant::now();
    tokio::time::sleep(phase).await;
    log.stop();
    for task in load {
        task.await.unwrap();
    }

    let calls = log.calls();
    let phase_of = |call: &Call| match call.started {
        t if t < rollout_start => "before",
        t if t < rollout_end => "during",
        _ => "after",
    };
    let mut report = json!({
        "machine": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        }),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "tasks_per_service": args.tasks,
        "threads_per_service": args.threads,
        "retry_policy": if args.retry { "default" } else { "none" },
        "phase_seconds": args.phase_seconds,
        "rollout_seconds": (rollout_end - rollout_start).as_secs_f64(),
    });
    println!("| method | phase | calls | failed | p50 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for method in ["compress", "generate"] {
        for name in ["before", "during", "after"] {
            let of_phase: Vec<&Call> = calls
                .iter()
                .filter(|c| c.method == method && phase_of(c) == name)
                .collect();
            let row = summary(&of_phase);
            println!(
                "| {method} | {name} | {} | {} | {:.0} | {:.0} | {:.0} |",
                row["calls"],
                row["failed"],
                row["p50_ms"].as_f64().unwrap_or(f64::NAN),
                row["p99_ms"].as_f64().unwrap_or(f64::NAN),
                row["max_ms"].as_f64().unwrap_or(f64::NAN),
            );
            report[method][name] = row;
        }
    }
    let errors = log.errors();
    report["errors"] = json!(errors.iter().take(5).collect::<Vec<_>>());
    println!("{report}");
}
