//! `icae-bench serve`: the services' numbers (DESIGN.md §9), measured side by side in one run
//! against running encoder-svc and decoder-svc.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use icae_client::{
    baseline_text, compress_one, connect_decoder, connect_encoder, generate_request, greedy,
    slot_keys, status_error, ConnectOptions, Decoder, Encoder,
};
use icae_proto::v1::{CompressOptions, CompressResponse, InfoRequest, InfoResponse, Mode};
use serde_json::json;

use icae_cli::common::print_json;
use icae_cli::pwc::{generate, read_pwc, PwcRecord};

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
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    pub streams: Vec<usize>,
    /// Context lengths in tokens (about: the example article repeated and cut); each is
    /// measured from its slots and from its full text.
    #[arg(long, value_delimiter = ',', default_value = "512")]
    pub context_tokens: Vec<usize>,
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
    let decoder_info = decoder
        .info(InfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();

    // Encoder: gRPC + tokenization + Redis as a share of model time, on fresh documents.
    let mut overheads = Vec::new();
    let mut slot_bytes = 0;
    let mut num_tokens = 0;
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    for round in 0..args.rounds {
        let text = format!("{article}\n(revision {round} {})", std::process::id());
        let started = Instant::now();
        let response = compress(&mut encoder, text, returning_slots()).await?;
        let wall = started.elapsed().as_secs_f64();
        let model_duration = response.timings.as_ref().and_then(|t| t.model_duration);
        let model = icae_proto::time::secs_or_zero(model_duration);
        overheads.push((wall - model) / model);
        let doc = &response.documents[0];
        let handle = doc.handle.as_ref().context("no handle")?;
        slot_bytes = doc.slots.len() as u64;
        num_tokens = handle.num_tokens;
    }
    // The last document is stored: compressing it again is a cache hit.
    let last = format!(
        "{article}\n(revision {} {})",
        args.rounds - 1,
        std::process::id()
    );
    let cache_hit_started = Instant::now();
    let response = compress(&mut encoder, last, CompressOptions::default()).await?;
    let cache_hit_seconds = cache_hit_started.elapsed().as_secs_f64();
    anyhow::ensure!(
        response.documents[0]
            .handle
            .as_ref()
            .is_some_and(|h| h.cache_hit),
        "expected a cache hit"
    );

    // Per context length: the same question from the slots and from the full text
    // (alternating), then aggregate generation throughput at N concurrent streams.
    let mut contexts = Vec::new();
    for &target in &args.context_tokens {
        let text = context_text(&article, num_tokens as usize, target);
        let context = measure_context(&args, &mut encoder, &mut decoder, record, text).await?;
        contexts.push(json!({
            "context_tokens_requested": target,
            "context_tokens": context.num_tokens,
            "slot_bytes": context.slot_bytes,
            "kv_cache_bytes": context.kv_bytes(&info),
            "kv_over_slot_bytes": context.kv_bytes(&info) as f64 / context.slot_bytes as f64,
            "ttft_slots_seconds": median(context.slot_ttft.clone()),
            "ttft_full_text_seconds": median(context.full_ttft.clone()),
            "ttft_full_over_slots": median(context.full_ttft.clone()) / median(context.slot_ttft.clone()),
            "per_token_slots_seconds": median(context.slot_tpot.clone()),
            "per_token_full_text_seconds": median(context.full_tpot.clone()),
            "throughput": context.throughput.iter().map(|t| json!({
                "streams": t.streams, "tokens_per_second": t.end_to_end,
                "vs_one_stream": t.end_to_end / context.single_stream().end_to_end,
                "decode_tokens_per_second": t.decoding,
                "decode_vs_one_stream": t.decoding / context.single_stream().decoding,
            })).collect::<Vec<_>>(),
        }));
    }

    let report = json!({
        "bench": "serve",
        "device": info.device, "dtype": info.dtype,
        "decoder_device": decoder_info.device, "decoder_dtype": decoder_info.dtype,
        "adapter_trained": info.adapter_trained,
        "rounds": args.rounds, "tokens_per_stream": args.tokens,
        "article_tokens": num_tokens, "article_slot_bytes": slot_bytes,
        "encoder_overhead_share_of_model_time": median(overheads.clone()),
        "encoder_cache_hit_seconds": cache_hit_seconds,
        "contexts": contexts,
    });
    if args.json {
        return print_json(&report);
    }
    println!(
        "encoder {} {}, decoder {} {}, article {} tokens ({} bytes of slots), medians of {} rounds",
        info.device,
        info.dtype,
        decoder_info.device,
        decoder_info.dtype,
        num_tokens,
        slot_bytes,
        args.rounds
    );
    println!(
        "encoder: gRPC + tokenize + Redis = {:.1}% of model time; cache hit {:.4}s",
        100.0 * median(overheads),
        cache_hit_seconds
    );
    for c in &contexts {
        let f = |k: &str| c[k].as_f64().unwrap_or(f64::NAN);
        println!("context {} tokens:", c["context_tokens"]);
        println!(
            "  stored slots {} bytes vs full-text KV cache {} bytes: {:.1}x smaller",
            c["slot_bytes"],
            c["kv_cache_bytes"],
            f("kv_over_slot_bytes")
        );
        println!(
            "  time to first token: slots {:.3}s, full text {:.3}s ({:.2}x)",
            f("ttft_slots_seconds"),
            f("ttft_full_text_seconds"),
            f("ttft_full_over_slots")
        );
        println!(
            "  time per output token: slots {:.4}s, full text {:.4}s",
            f("per_token_slots_seconds"),
            f("per_token_full_text_seconds")
        );
        for t in c["throughput"].as_array().into_iter().flatten() {
            let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "  {:>2} concurrent streams: {:.1} tokens/s end to end ({:.2}x one stream), \
                 decoding {:.1} tokens/s ({:.2}x)",
                t["streams"],
                f("tokens_per_second"),
                f("vs_one_stream"),
                f("decode_tokens_per_second"),
                f("decode_vs_one_stream"),
            );
        }
    }
    Ok(())
}

/// What one context length measured.
struct ContextRun {
    num_tokens: u32,
    slot_bytes: u64,
    slot_ttft: Vec<f64>,
    slot_tpot: Vec<f64>,
    full_ttft: Vec<f64>,
    full_tpot: Vec<f64>,
    throughput: Vec<Throughput>,
}

/// Tokens per second of N concurrent streams: end to end (all tokens over the wall time),
/// and while decoding (each stream's tokens after its first, over its time after the
/// first, summed over the streams), where batching acts and prefill does not count.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    streams: usize,
    end_to_end: f64,
    decoding: f64,
}

impl Throughput {
    /// `streams` as (tokens, seconds to the first token, seconds to the end) over `wall`.
    fn of(streams: &[(usize, f64, f64)], wall: f64) -> Throughput {
        let tokens: usize = streams.iter().map(|s| s.0).sum();
        let decoding = streams
            .iter()
            .filter(|(n, first, end)| *n > 1 && end > first)
            .map(|(n, first, end)| (n - 1) as f64 / (end - first))
            .sum();
        Throughput {
            streams: streams.len(),
            end_to_end: tokens as f64 / wall,
            decoding,
        }
    }
}

impl ContextRun {
    fn kv_bytes(&self, info: &InfoResponse) -> u64 {
        info.kv_bytes_per_position * u64::from(self.num_tokens)
    }

    fn single_stream(&self) -> Throughput {
        let none = Throughput {
            streams: 1,
            end_to_end: f64::NAN,
            decoding: f64::NAN,
        };
        self.throughput
            .iter()
            .find(|t| t.streams == 1)
            .copied()
            .unwrap_or(none)
    }
}

async fn measure_context(
    args: &ServeArgs,
    encoder: &mut Encoder,
    decoder: &mut Decoder,
    record: &PwcRecord,
    text: String,
) -> Result<ContextRun> {
    let response = compress(encoder, text.clone(), returning_slots()).await?;
    let doc = &response.documents[0];
    let handle = doc.handle.as_ref().context("no handle")?;
    let key = handle.key.clone();
    let mut run = ContextRun {
        num_tokens: handle.num_tokens,
        slot_bytes: doc.slots.len() as u64,
        slot_ttft: Vec::new(),
        slot_tpot: Vec::new(),
        full_ttft: Vec::new(),
        full_tpot: Vec::new(),
        throughput: Vec::new(),
    };
    for _ in 0..args.rounds {
        let with_slots = generate(
            decoder,
            generate_request(
                slot_keys(&[&key]),
                Mode::Answer,
                &record.prompt,
                greedy(args.tokens),
            ),
        )
        .await?;
        run.slot_ttft.push(with_slots.first_token_seconds);
        run.slot_tpot.push(with_slots.per_token_seconds());
        let full = generate(
            decoder,
            generate_request(
                baseline_text(text.clone()),
                Mode::Answer,
                &record.prompt,
                greedy(args.tokens),
            ),
        )
        .await?;
        run.full_ttft.push(full.first_token_seconds);
        run.full_tpot.push(full.per_token_seconds());
    }
    let options = ConnectOptions::default();
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
        let mut streams = Vec::new();
        for task in tasks {
            let generated = task.await??;
            let (first, end) = (generated.first_token_seconds, generated.seconds);
            streams.push((generated.token_ids.len(), first, end));
        }
        let wall = started.elapsed().as_secs_f64();
        run.throughput.push(Throughput::of(&streams, wall));
    }
    Ok(run)
}

/// About `target` tokens of text: the article (of `article_tokens` tokens) repeated, cut at
/// the character count that many tokens take on average. The services report the exact count.
fn context_text(article: &str, article_tokens: usize, target: usize) -> String {
    let chars: Vec<char> = article.chars().collect();
    if article_tokens == 0 || chars.is_empty() {
        return article.to_string();
    }
    let wanted = (chars.len() as f64 * target as f64 / article_tokens as f64).round() as usize;
    let mut text = String::new();
    let mut taken = 0;
    while taken < wanted {
        if taken > 0 {
            if wanted - taken <= 2 {
                break;
            }
            text.push_str("\n\n");
            taken += 2;
        }
        let take = (wanted.saturating_sub(taken)).min(chars.len());
        text.extend(&chars[..take]);
        taken += take;
    }
    text
}

/// One document through the encoder.
async fn compress(
    encoder: &mut Encoder,
    text: String,
    options: CompressOptions,
) -> Result<CompressResponse> {
    let response = encoder.compress(compress_one(text, options)).await;
    Ok(response.map_err(status_error)?.into_inner())
}

/// Options of a Compress whose answer carries the slots (their bytes are measured).
fn returning_slots() -> CompressOptions {
    CompressOptions {
        return_slots: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_throughput_leaves_each_streams_prefill_out() {
        // Two streams of 11 tokens: first tokens at 1 s and 3 s, ends at 2 s and 4 s.
        let t = Throughput::of(&[(11, 1.0, 2.0), (11, 3.0, 4.0)], 4.0);
        assert_eq!(t.streams, 2);
        assert!((t.end_to_end - 22.0 / 4.0).abs() < 1e-9);
        // 10 tokens after the first in 1 s, each.
        assert!((t.decoding - 20.0).abs() < 1e-9);
        // A stream of one token has no decoding time.
        assert_eq!(Throughput::of(&[(1, 1.0, 1.0)], 1.0).decoding, 0.0);
    }

    #[test]
    fn context_text_repeats_the_article_to_about_the_target() {
        let article = "abcd efgh"; // 9 characters; say 3 tokens
        assert_eq!(context_text(article, 3, 3), article);
        assert_eq!(context_text(article, 3, 2), "abcd e");
        let long = context_text(article, 3, 7);
        assert_eq!(long, "abcd efgh\n\nabcd efgh");
        assert_eq!(context_text(article, 3, 8).chars().count(), 24);
        assert_eq!(context_text("", 0, 100), "");
    }

    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(vec![]).is_nan());
    }
}
