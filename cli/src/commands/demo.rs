//! The main job, against running services: compress the example article with encoder-svc,
//! plainly and with test-time refinement (each with its fidelity score), reconstruct it and
//! answer its questions with decoder-svc from both sets of slots and from the full text
//! (baseline) side by side, with ratios, bytes and latencies.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use icae_cli::pwc::{generate, read_pwc};
use icae_client::{
    baseline_text, compress_one, connect_decoder, connect_encoder, generate_request, greedy,
    slot_keys, status_error, ConnectOptions, Encoder, Generated,
};
use icae_core::adapter::untrained_warning;
use icae_proto::v1::{CompressOptions, InfoRequest, Mode, SlotHandle};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Encoder address, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "ICAE_ENCODER_URL")]
    pub encoder: String,
    /// Decoder address, e.g. http://127.0.0.1:50052.
    #[arg(long, env = "ICAE_DECODER_URL")]
    pub decoder: String,
    /// PwC-format JSONL: {"input", "prompt", "answer"} per line (all lines share one input).
    #[arg(long, default_value = "examples/pwc_dev.jsonl")]
    pub data: PathBuf,
    /// Questions to answer (0 = none).
    #[arg(long, default_value_t = 3)]
    pub questions: usize,
    #[arg(long, default_value_t = 48)]
    pub max_answer_tokens: u32,
    /// Refinement steps for the refined compression (0: show plain slots only).
    #[arg(long, default_value_t = 100)]
    pub refine_steps: u32,
    /// Slots per segment of the refined compression (0: the adapter's mem_size). At 16 of
    /// the default adapter's 32, refinement reads the article back exactly, in half the
    /// bytes (docs/refinement.md).
    #[arg(long, default_value_t = 16)]
    pub refine_slots_per_segment: u32,
}

pub fn run(args: DemoArgs) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(demo(args))
}

/// Positions the decoder read before generating.
fn prompt_positions(generated: &Generated) -> u32 {
    generated
        .last
        .as_ref()
        .map_or(0, |last| last.prompt_positions)
}

async fn demo(args: DemoArgs) -> Result<()> {
    let records = read_pwc(&args.data)?;
    let article = records
        .first()
        .context("the data file has no records")?
        .input
        .clone();
    let options = ConnectOptions::default();
    let mut encoder = connect_encoder(&args.encoder, &options).await?;
    let mut decoder = connect_decoder(&args.decoder, &options).await?;
    let info = encoder
        .info(InfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "encoder {} and decoder {}: model {}, adapter {} (mem_size {}, rate {}, {} {}), fingerprint {}",
        args.encoder, args.decoder, info.model, info.adapter, info.mem_size, info.compression_rate, info.device, info.dtype, info.model_fingerprint
    );
    if !info.adapter_trained {
        println!("WARNING: {}", untrained_warning(Path::new(&info.adapter)));
    }

    let plain = compress_article(&mut encoder, &article, 0, 0).await?;
    let handle = &plain.handle;
    let kv_bytes = info.kv_bytes_per_position * u64::from(handle.num_tokens);
    println!(
        "\ncompressed the article: {} tokens -> {} slots ({} segments, {:.2}x fewer positions) in {:.3}s (cache hit: {}), reconstruction loss {}",
        handle.num_tokens,
        handle.num_slots,
        handle.num_segments,
        f64::from(handle.num_tokens) / f64::from(handle.num_slots),
        plain.seconds,
        handle.cache_hit,
        loss_text(handle.reconstruction_loss)
    );
    println!(
        "stored in Redis as {}: {} bytes, against {} bytes of KV cache the decoder would keep for the full text ({:.1}x less)",
        handle.key,
        plain.bytes,
        kv_bytes,
        kv_bytes as f64 / plain.bytes.max(1) as f64
    );
    let refined = match args.refine_steps {
        0 => None,
        steps => {
            let slots_per_segment = args.refine_slots_per_segment;
            let refined =
                compress_article(&mut encoder, &article, steps, slots_per_segment).await?;
            println!(
                "refined the slots: {} slots ({} per segment, {} bytes), {} steps in {:.1}s (cache hit: {}), reconstruction loss {} -> {}, stored as {}",
                refined.handle.num_slots,
                refined.handle.num_slots / refined.handle.num_segments.max(1),
                refined.bytes,
                refined.handle.refine_steps,
                refined.seconds,
                refined.handle.cache_hit,
                loss_text(handle.reconstruction_loss),
                loss_text(refined.handle.reconstruction_loss),
                refined.handle.key
            );
            Some(refined)
        }
    };

    println!("\n  original:            {}", excerpt(&article));
    let mut sets = vec![("plain slots", handle.key.clone())];
    if let Some(refined) = &refined {
        sets.push(("refined slots", refined.handle.key.clone()));
    }
    for (name, key) in &sets {
        let reconstruction = generate(
            &mut decoder,
            generate_request(
                slot_keys(&[key]),
                Mode::Autoencode,
                "",
                greedy(handle.num_tokens + 16),
            ),
        )
        .await?;
        println!(
            "  from {name:<14} {} (exact: {}; {} positions, {} tokens, first token {:.3}s, total {:.2}s)",
            excerpt(&reconstruction.text),
            same_text(&reconstruction.text, &article),
            prompt_positions(&reconstruction),
            reconstruction.token_ids.len(),
            reconstruction.first_token_seconds,
            reconstruction.seconds
        );
    }

    for record in records.iter().take(args.questions) {
        println!("\nQ: {}\n  reference: {}", record.prompt, record.answer);
        for (name, key) in &sets {
            let answer = generate(
                &mut decoder,
                generate_request(
                    slot_keys(&[key]),
                    Mode::Answer,
                    &record.prompt,
                    greedy(args.max_answer_tokens),
                ),
            )
            .await?;
            print_answer(name, &answer);
        }
        let baseline = generate(
            &mut decoder,
            generate_request(
                baseline_text(article.clone()),
                Mode::Answer,
                &record.prompt,
                greedy(args.max_answer_tokens),
            ),
        )
        .await?;
        print_answer("full text", &baseline);
    }
    Ok(())
}

/// One compression of the article and what the demo prints of it.
struct ArticleSlots {
    handle: SlotHandle,
    bytes: usize,
    seconds: f64,
}

async fn compress_article(
    encoder: &mut Encoder,
    article: &str,
    refine_steps: u32,
    slots_per_segment: u32,
) -> Result<ArticleSlots> {
    let started = Instant::now();
    let options = CompressOptions {
        return_slots: true,
        refine_steps,
        slots_per_segment,
        reconstruction_loss: true,
        ..Default::default()
    };
    let response = encoder
        .compress(compress_one(article.to_string(), options))
        .await
        .map_err(status_error)?
        .into_inner();
    let doc = response
        .documents
        .first()
        .context("no document in the response")?;
    Ok(ArticleSlots {
        handle: doc.handle.clone().context("no handle")?,
        bytes: doc.slots.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn print_answer(name: &str, answer: &Generated) {
    println!(
        "  {name:<14} ({:>4} positions, first token {:.3}s, total {:.2}s): {}",
        prompt_positions(answer),
        answer.first_token_seconds,
        answer.seconds,
        excerpt(&answer.text)
    );
}

fn loss_text(loss: Option<f64>) -> String {
    loss.map_or("unknown".into(), |l| format!("{l:.3} nats/token"))
}

/// Whether a reconstruction is the original text, to the byte (the tokenizer is lossless,
/// so the right tokens give exactly the article).
fn same_text(reconstruction: &str, original: &str) -> &'static str {
    if reconstruction == original {
        "yes"
    } else {
        "no"
    }
}

fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}
