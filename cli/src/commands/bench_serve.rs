//! `icae bench serve`: the services' numbers (DESIGN.md §9), measured side by side in one run
//! against running encoder-svc and decoder-svc.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use icae_client::{
    baseline_text, compress_one, connect_decoder, connect_encoder, generate_request, greedy,
    slot_keys, status_error, ConnectOptions,
};
use icae_proto::v1::{CompressOptions, InfoRequest, Mode};
use serde_json::json;

use crate::commands::demo::{generate, read_pwc};
use crate::common::print_json;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "ICAE_ENCODER_URL")]
    pub encoder: String,
    #[arg(long, env = "ICAE_DECODER_URL")]
    pub decoder: String,
    #[arg(long, default_value = "examples/pwc_dev.jsonl")]
    pub data: PathBuf,
    /// Rounds of each latency measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Concurrent stream counts for the throughput measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub streams: Vec<usize>,
    /// Tokens each stream generates.
    #[arg(long, default_value_t = 48)]
    pub tokens: u32,
    #[arg(long)]
    pub json: bool,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let records = read_pwc(&args.data)?;
    let record = records.first().context("no records")?;
    let article = record.input.clone();
    let options = ConnectOptions::default();
    let mut encoder = connect_encoder(&args.encoder, &options).await?;
    let mut decoder = connect_decoder(&args.decoder, &options).await?;
    let info = encoder
        .info(InfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();

    // Encoder: gRPC + tokenization + Redis as a share of model time, on fresh documents.
    let mut overheads = Vec::new();
    let mut key = String::new();
    let mut slot_bytes = 0;
    let mut num_tokens = 0;
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    for round in 0..args.rounds {
        let text = format!("{article}\n(revision {round} {})", std::process::id());
        let started = Instant::now();
        let request = compress_one(
            text,
            CompressOptions {
                return_slots: true,
                ..Default::default()
            },
        );
        let response = encoder
            .compress(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let wall = started.elapsed().as_secs_f64();
        let model = response.timings.as_ref().map_or(0.0, |t| t.model_seconds);
        overheads.push((wall - model) / model);
        let doc = &response.documents[0];
        let handle = doc.handle.as_ref().context("no handle")?;
        key = handle.key.clone();
        slot_bytes = doc.slots.len() as u64;
        num_tokens = handle.num_tokens;
    }
    // The last document is stored: compressing it again is a cache hit.
    let last = format!(
        "{article}\n(revision {} {})",
        args.rounds - 1,
        std::process::id()
    );
    let hit = compress_one(last, CompressOptions::default());
    let cache_hit_started = Instant::now();
    let response = encoder
        .compress(hit)
        .await
        .map_err(status_error)?
        .into_inner();
    let cache_hit_seconds = cache_hit_started.elapsed().as_secs_f64();
    anyhow::ensure!(
        response.documents[0]
            .handle
            .as_ref()
            .is_some_and(|h| h.cache_hit),
        "expected a cache hit"
    );
    let kv_bytes = info.kv_bytes_per_position * u64::from(num_tokens);

    // Decoder: the same question with the slots and with the full text, alternating.
    let (mut slot_ttft, mut slot_tpot, mut full_ttft, mut full_tpot) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let with_slots = generate(
            &mut decoder,
            generate_request(
                slot_keys(&[&key]),
                Mode::Answer,
                &record.prompt,
                greedy(args.tokens),
            ),
        )
        .await?;
        slot_ttft.push(with_slots.first_token_seconds);
        slot_tpot.push(with_slots.per_token_seconds());
        let full = generate(
            &mut decoder,
            generate_request(
                baseline_text(article.clone()),
                Mode::Answer,
                &record.prompt,
                greedy(args.tokens),
            ),
        )
        .await?;
        full_ttft.push(full.first_token_seconds);
        full_tpot.push(full.per_token_seconds());
    }

    // Aggregate generation throughput at N concurrent streams.
    let mut throughput = Vec::new();
    for &n in &args.streams {
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (url, key, tokens) = (args.decoder.clone(), key.clone(), args.tokens);
                let options = options.clone();
                // A connection per stream, as independent clients would have.
                tokio::spawn(async move {
                    let mut client = connect_decoder(&url, &options).await?;
                    generate(
                        &mut client,
                        generate_request(slot_keys(&[&key]), Mode::Autoencode, "", greedy(tokens)),
                    )
                    .await
                })
            })
            .collect();
        let mut generated = 0;
        for task in tasks {
            generated += task.await??.token_ids.len();
        }
        throughput.push((n, generated as f64 / started.elapsed().as_secs_f64()));
    }
    let single = throughput
        .iter()
        .find(|(n, _)| *n == 1)
        .map_or(f64::NAN, |t| t.1);

    let report = json!({
        "device": info.device, "dtype": info.dtype, "adapter_trained": info.adapter_trained,
        "article_tokens": num_tokens, "slot_bytes": slot_bytes, "kv_cache_bytes": kv_bytes,
        "kv_over_slot_bytes": kv_bytes as f64 / slot_bytes as f64,
        "encoder_overhead_share_of_model_time": median(overheads.clone()),
        "encoder_cache_hit_seconds": cache_hit_seconds,
        "ttft_slots_seconds": median(slot_ttft.clone()), "ttft_full_text_seconds": median(full_ttft.clone()),
        "ttft_full_over_slots": median(full_ttft.clone()) / median(slot_ttft.clone()),
        "per_token_slots_seconds": median(slot_tpot.clone()), "per_token_full_text_seconds": median(full_tpot.clone()),
        "throughput": throughput.iter().map(|(n, tps)| json!({"streams": n, "tokens_per_second": tps, "vs_one_stream": tps / single})).collect::<Vec<_>>(),
    });
    if args.json {
        return print_json(&report);
    }
    println!(
        "device {} {}, article {} tokens, medians of {} rounds",
        info.device, info.dtype, num_tokens, args.rounds
    );
    println!(
        "stored slots {} bytes vs full-text KV cache {} bytes: {:.1}x smaller",
        slot_bytes,
        kv_bytes,
        kv_bytes as f64 / slot_bytes as f64
    );
    println!(
        "encoder: gRPC + tokenize + Redis = {:.1}% of model time; cache hit {:.4}s",
        100.0 * median(overheads),
        cache_hit_seconds
    );
    println!(
        "decoder time to first token: slots {:.3}s, full text {:.3}s ({:.2}x)",
        median(slot_ttft.clone()),
        median(full_ttft.clone()),
        median(full_ttft) / median(slot_ttft)
    );
    println!(
        "decoder time per output token: slots {:.4}s, full text {:.4}s",
        median(slot_tpot),
        median(full_tpot)
    );
    for (n, tps) in &throughput {
        println!(
            "{n:>2} concurrent streams: {tps:.1} tokens/s ({:.2}x one stream)",
            tps / single
        );
    }
    Ok(())
}
