//! The main job, against running services: compress the example article with encoder-svc,
//! reconstruct it and answer its questions with decoder-svc from the slots, and from the
//! full text (baseline) side by side, with ratios, bytes and latencies.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use icae_proto::v1::decoder_client::DecoderClient;
use icae_proto::v1::encoder_client::EncoderClient;
use icae_proto::v1::{
    generate_request, generate_response, slot_ref, CompressOptions, GenerateRequest, InfoRequest,
    Mode, Sampling, SlotList, SlotRef,
};
use serde::Deserialize;

use crate::commands::client::one_document;
use tonic::transport::Channel;

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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(demo(args))
}

/// What one generation produced and how long it took.
pub struct Timed {
    pub text: String,
    pub tokens: usize,
    pub prompt_positions: u32,
    pub first_token_s: f64,
    pub total_s: f64,
}

impl Timed {
    /// Seconds per generated token after the first.
    pub fn per_token_s(&self) -> f64 {
        (self.total_s - self.first_token_s) / self.tokens.saturating_sub(1).max(1) as f64
    }
}

pub fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

pub async fn generate(
    decoder: &mut DecoderClient<Channel>,
    request: GenerateRequest,
) -> Result<Timed> {
    let started = Instant::now();
    let mut stream = decoder
        .generate(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    let (mut text, mut tokens, mut first) = (String::new(), 0, None);
    while let Some(message) = stream.message().await.map_err(rpc_error)? {
        match message.event {
            Some(generate_response::Event::Delta(delta)) => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                tokens += delta.token_ids.len();
                text.push_str(&delta.text);
            }
            Some(generate_response::Event::Final(last)) => {
                return Ok(Timed {
                    text,
                    tokens,
                    prompt_positions: last.prompt_positions,
                    first_token_s: first.unwrap_or_default(),
                    total_s: started.elapsed().as_secs_f64(),
                })
            }
            None => {}
        }
    }
    anyhow::bail!("the stream ended without a final message")
}

pub fn request(
    context: generate_request::Context,
    mode: Mode,
    prompt: &str,
    max_new_tokens: u32,
) -> GenerateRequest {
    GenerateRequest {
        context: Some(context),
        mode: mode as i32,
        prompt: prompt.into(),
        sampling: Some(Sampling {
            max_new_tokens,
            ..Default::default()
        }),
    }
}

async fn demo(args: DemoArgs) -> Result<()> {
    let records = read_pwc(&args.data)?;
    let article = records
        .first()
        .context("the data file has no records")?
        .input
        .clone();
    let mut encoder = EncoderClient::connect(args.encoder.clone())
        .await
        .context("connecting to the encoder")?;
    let mut decoder = DecoderClient::connect(args.decoder.clone())
        .await
        .context("connecting to the decoder")?;
    let info = encoder.info(InfoRequest {}).await?.into_inner();
    println!(
        "encoder {} and decoder {}: model {}, adapter {} (mem_size {}, rate {}, {} {}), fingerprint {}",
        args.encoder, args.decoder, info.model, info.adapter, info.mem_size, info.compression_rate, info.device, info.dtype, info.model_fingerprint
    );
    if !info.adapter_trained {
        println!("WARNING: the adapter is UNTRAINED: reconstructions and answers from slots are noise until a trained adapter is used");
    }

    let started = Instant::now();
    let compress = one_document(
        article.clone(),
        CompressOptions {
            return_slots: true,
            ..Default::default()
        },
    );
    let response = encoder
        .compress(compress)
        .await
        .map_err(rpc_error)?
        .into_inner();
    let compress_s = started.elapsed().as_secs_f64();
    let doc = response
        .documents
        .first()
        .context("no document in the response")?;
    let handle = doc.handle.clone().context("no handle")?;
    let kv_bytes = info.kv_bytes_per_position * u64::from(handle.num_tokens);
    println!(
        "\ncompressed the article: {} tokens -> {} slots ({} segments, {:.2}x fewer positions) in {:.3}s (cache hit: {})",
        handle.num_tokens,
        handle.num_slots,
        handle.num_segments,
        f64::from(handle.num_tokens) / f64::from(handle.num_slots),
        compress_s,
        handle.cache_hit
    );
    println!(
        "stored in Redis as {}: {} bytes, against {} bytes of KV cache the decoder would keep for the full text ({:.1}x less)",
        handle.key,
        doc.slots.len(),
        kv_bytes,
        kv_bytes as f64 / doc.slots.len().max(1) as f64
    );

    let slots = || {
        generate_request::Context::Slots(SlotList {
            items: vec![SlotRef {
                source: Some(slot_ref::Source::Key(handle.key.clone())),
            }],
        })
    };
    let reconstruction = generate(
        &mut decoder,
        request(slots(), Mode::Autoencode, "", handle.num_tokens + 16),
    )
    .await?;
    println!(
        "\nreconstruction from {} positions: {} tokens, first token {:.3}s, total {:.2}s",
        reconstruction.prompt_positions,
        reconstruction.tokens,
        reconstruction.first_token_s,
        reconstruction.total_s
    );
    println!("  original:      {}", excerpt(&article));
    println!("  reconstructed: {}", excerpt(&reconstruction.text));

    for record in records.iter().take(args.questions) {
        let from_slots = generate(
            &mut decoder,
            request(
                slots(),
                Mode::Answer,
                &record.prompt,
                args.max_answer_tokens,
            ),
        )
        .await?;
        let baseline = generate(
            &mut decoder,
            request(
                generate_request::Context::BaselineText(article.clone()),
                Mode::Answer,
                &record.prompt,
                args.max_answer_tokens,
            ),
        )
        .await?;
        println!("\nQ: {}\n  reference: {}", record.prompt, record.answer);
        println!(
            "  slots     ({:>4} positions, first token {:.3}s, total {:.2}s): {}",
            from_slots.prompt_positions,
            from_slots.first_token_s,
            from_slots.total_s,
            excerpt(&from_slots.text)
        );
        println!(
            "  full text ({:>4} positions, first token {:.3}s, total {:.2}s): {}",
            baseline.prompt_positions,
            baseline.first_token_s,
            baseline.total_s,
            excerpt(&baseline.text)
        );
    }
    Ok(())
}

fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}
