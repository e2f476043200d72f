//! `icae client …`: talk to running encoder-svc / decoder-svc over gRPC.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use icae_proto::v1::decoder_client::DecoderClient;
use icae_proto::v1::encoder_client::EncoderClient;
use icae_proto::v1::{
    document, generate_request, generate_response, slot_ref, CompressOptions, CompressRequest,
    Document, FinishReason, GenerateRequest, InfoRequest, Mode, Sampling, SlotList, SlotRef,
};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Request;

use crate::commands::generate::SamplingArgs;
use crate::common::{print_json, TextArgs};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Compress a text with encoder-svc; prints the slot handle.
    Compress(CompressArgs),
    /// Generate from stored slots (or the full text, as a baseline) with decoder-svc.
    Generate(GenerateArgs),
    /// Compress a text, then answer a question from its slots.
    Ask(AskArgs),
    /// Describe a running service.
    Info(InfoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Request timeout in seconds (sent as the gRPC deadline).
    #[arg(long, default_value_t = 600.0)]
    pub timeout_seconds: f64,
    /// Largest message accepted from the server, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
}

#[derive(Debug, Args)]
pub struct CompressArgs {
    /// Encoder address, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "ICAE_ENCODER_URL")]
    pub encoder: String,
    #[command(flatten)]
    pub text: TextArgs,
    /// Tenant namespace for the key.
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// Slot time to live (0 = server default).
    #[arg(long, default_value_t = 0)]
    pub ttl_seconds: u32,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Decoder address, e.g. http://127.0.0.1:50052.
    #[arg(long, env = "ICAE_DECODER_URL")]
    pub decoder: String,
    /// Slot key from `client compress`; repeat for several spans, in order.
    #[arg(long, required_unless_present = "baseline_text_file")]
    pub key: Vec<String>,
    /// Generate from this uncompressed text instead of slots (baseline).
    #[arg(long, conflicts_with = "key")]
    pub baseline_text_file: Option<std::path::PathBuf>,
    /// autoencode, continue or answer (needs --prompt).
    #[arg(long)]
    pub mode: String,
    #[arg(long)]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[arg(long, env = "ICAE_ENCODER_URL")]
    pub encoder: String,
    #[arg(long, env = "ICAE_DECODER_URL")]
    pub decoder: String,
    #[command(flatten)]
    pub text: TextArgs,
    /// The question.
    #[arg(long)]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Encoder address.
    #[arg(long, conflicts_with = "decoder", required_unless_present = "decoder")]
    pub encoder: Option<String>,
    /// Decoder address.
    #[arg(long)]
    pub decoder: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn run(cmd: ClientCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cmd {
            ClientCommand::Compress(args) => compress(args).await,
            ClientCommand::Generate(args) => generate(args).await,
            ClientCommand::Ask(args) => ask(args).await,
            ClientCommand::Info(args) => info(args).await,
        }
    })
}

async fn channel(url: &str) -> Result<Channel> {
    Channel::from_shared(url.to_string())
        .with_context(|| format!("invalid address {url}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

fn request<T>(message: T, connect: &ConnectArgs) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_secs_f64(connect.timeout_seconds.max(0.001)));
    request
}

/// Turn a gRPC status into one readable line.
fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

pub async fn compress_text(
    encoder: &str,
    text: String,
    namespace: &str,
    ttl_seconds: u32,
    connect: &ConnectArgs,
) -> Result<icae_proto::v1::CompressResponse> {
    let mut client = EncoderClient::new(channel(encoder).await?)
        .max_decoding_message_size(connect.max_message_bytes);
    let options = CompressOptions {
        ttl_seconds,
        namespace: namespace.to_string(),
        return_slots: false,
    };
    let message = one_document(text, options);
    Ok(client
        .compress(request(message, connect))
        .await
        .map_err(status)?
        .into_inner())
}

async fn compress(args: CompressArgs) -> Result<()> {
    let response = compress_text(
        &args.encoder,
        args.text.read()?,
        &args.namespace,
        args.ttl_seconds,
        &args.connect,
    )
    .await?;
    let handle = response
        .documents
        .first()
        .and_then(|d| d.handle.clone())
        .context("the encoder returned no handle")?;
    let timings = response.timings.unwrap_or_default();
    if args.json {
        return print_json(&json!({
            "key": handle.key, "num_slots": handle.num_slots, "num_tokens": handle.num_tokens,
            "num_segments": handle.num_segments, "model_fingerprint": handle.model_fingerprint,
            "expires_at_unix": handle.expires_at_unix, "cache_hit": handle.cache_hit,
            "seconds": timings.total_seconds,
        }));
    }
    println!(
        "{} ({} tokens -> {} slots, cache hit: {}, {:.3}s)",
        handle.key, handle.num_tokens, handle.num_slots, handle.cache_hit, timings.total_seconds
    );
    Ok(())
}

/// A Compress request for one text.
pub fn one_document(text: String, options: CompressOptions) -> CompressRequest {
    CompressRequest {
        documents: vec![Document {
            content: Some(document::Content::Text(text)),
        }],
        options: Some(options),
    }
}

fn sampling(args: &SamplingArgs) -> Sampling {
    let params = args.params();
    Sampling {
        max_new_tokens: params.max_new_tokens as u32,
        temperature: params.temperature as f32,
        top_k: params.top_k as u32,
        top_p: params.top_p as f32,
        seed: params.seed,
        stop: params.stop,
    }
}

fn mode(name: &str) -> Result<Mode> {
    Ok(match name.parse::<icae_core::Mode>()? {
        icae_core::Mode::Autoencode => Mode::Autoencode,
        icae_core::Mode::Continue => Mode::Continue,
        icae_core::Mode::Answer => Mode::Answer,
    })
}

/// Stream a generation to stdout (or collect it for --json).
async fn stream(
    decoder: &str,
    message: GenerateRequest,
    connect: &ConnectArgs,
    json_output: bool,
) -> Result<()> {
    let mut client = DecoderClient::new(channel(decoder).await?)
        .max_decoding_message_size(connect.max_message_bytes);
    let mut responses = client
        .generate(request(message, connect))
        .await
        .map_err(status)?
        .into_inner();
    let (mut text, mut token_ids) = (String::new(), Vec::new());
    while let Some(response) = responses.message().await.map_err(status)? {
        match response.event {
            Some(generate_response::Event::Delta(delta)) => {
                token_ids.extend(delta.token_ids);
                if !json_output {
                    print!("{}", delta.text);
                    std::io::stdout().flush()?;
                }
                text.push_str(&delta.text);
            }
            Some(generate_response::Event::Final(last)) => {
                let reason =
                    FinishReason::try_from(last.finish_reason).unwrap_or(FinishReason::Unspecified);
                let timings = last.timings.unwrap_or_default();
                if json_output {
                    return print_json(&json!({
                        "text": text, "token_ids": token_ids,
                        "finish_reason": reason.as_str_name().trim_start_matches("FINISH_REASON_").to_lowercase(),
                        "prompt_positions": last.prompt_positions,
                        "time_to_first_token_seconds": timings.time_to_first_token_seconds,
                        "seconds": timings.total_seconds,
                    }));
                }
                println!();
                eprintln!(
                    "[{} tokens, finish {}, first token {:.3}s, total {:.3}s]",
                    last.generated_tokens,
                    reason.as_str_name(),
                    timings.time_to_first_token_seconds,
                    timings.total_seconds
                );
                return Ok(());
            }
            None => {}
        }
    }
    bail!("the stream ended without a final message")
}

async fn generate(args: GenerateArgs) -> Result<()> {
    let context = match &args.baseline_text_file {
        Some(path) => generate_request::Context::BaselineText(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => generate_request::Context::Slots(SlotList {
            items: args
                .key
                .iter()
                .map(|k| SlotRef {
                    source: Some(slot_ref::Source::Key(k.clone())),
                })
                .collect(),
        }),
    };
    let message = GenerateRequest {
        context: Some(context),
        mode: mode(&args.mode)? as i32,
        prompt: args.prompt.clone().unwrap_or_default(),
        sampling: Some(sampling(&args.sampling)),
    };
    stream(&args.decoder, message, &args.connect, args.json).await
}

async fn ask(args: AskArgs) -> Result<()> {
    let response = compress_text(&args.encoder, args.text.read()?, "", 0, &args.connect).await?;
    let key = response
        .documents
        .first()
        .and_then(|d| d.handle.as_ref())
        .context("the encoder returned no handle")?
        .key
        .clone();
    let message = GenerateRequest {
        context: Some(generate_request::Context::Slots(SlotList {
            items: vec![SlotRef {
                source: Some(slot_ref::Source::Key(key)),
            }],
        })),
        mode: Mode::Answer as i32,
        prompt: args.prompt.clone(),
        sampling: Some(sampling(&args.sampling)),
    };
    stream(&args.decoder, message, &args.connect, args.json).await
}

async fn info(args: InfoArgs) -> Result<()> {
    let response = match (&args.encoder, &args.decoder) {
        (Some(url), _) => {
            EncoderClient::new(channel(url).await?)
                .info(request(InfoRequest {}, &args.connect))
                .await
        }
        (None, Some(url)) => {
            DecoderClient::new(channel(url).await?)
                .info(request(InfoRequest {}, &args.connect))
                .await
        }
        (None, None) => bail!("give --encoder or --decoder"),
    }
    .map_err(status)?
    .into_inner();
    let limits = response.limits.unwrap_or_default();
    print_json(&json!({
        "service": response.service, "version": response.version, "model": response.model,
        "adapter": response.adapter, "adapter_trained": response.adapter_trained,
        "model_fingerprint": response.model_fingerprint, "hidden_size": response.hidden_size,
        "mem_size": response.mem_size, "compression_rate": response.compression_rate,
        "device": response.device, "dtype": response.dtype,
        "active_sequences": response.active_sequences, "queue_size": response.queue_size,
        "limits": {
            "max_input_tokens": limits.max_input_tokens, "max_new_tokens": limits.max_new_tokens,
            "max_concurrent_requests": limits.max_concurrent_requests, "max_message_bytes": limits.max_message_bytes,
            "default_ttl_seconds": limits.default_ttl_seconds, "max_documents_per_request": limits.max_documents_per_request,
            "max_spans": limits.max_spans,
        },
    }))
}
