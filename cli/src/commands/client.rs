//! `icae client …`: talk to running encoder-svc / decoder-svc over gRPC.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use icae_client::{
    baseline_text, compress_one, connect_decoder, connect_encoder, finish_reason,
    finish_reason_name, generate_request, generate_with, parse_mode, slot_keys, status_error,
    BearerToken, ClientTls, ConnectOptions,
};
use icae_proto::time;
use icae_proto::v1::{
    CompressOptions, CompressResponse, GenerateRequest, InfoRequest, Mode, Sampling,
};
use serde_json::json;

use crate::commands::generate::SamplingArgs;
use icae_cli::common::{print_json, TextArgs};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Compress a text with encoder-svc; prints the slot handle.
    Compress(CompressArgs),
    /// Generate from stored slots (or the full text, as a baseline) with decoder-svc.
    Generate(GenerateArgs),
    /// Compress a text, then answer a question from its slots.
    Ask(AskArgs),
    /// Describe a running service: one JSON object, the InfoResponse's fields and limits
    /// (the TTLs as whole seconds: default_ttl_seconds, max_ttl_seconds; 0 from the decoder).
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
    /// PEM CA certificate that signed the services' certificates (https:// addresses;
    /// without it the web PKI roots are trusted).
    #[arg(long, env = "ICAE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mTLS (with --tls-key). Its variables are named apart
    /// from the services' ICAE_TLS_CERT/KEY, so a client in a service's pod is not confused.
    #[arg(long, env = "ICAE_CLIENT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ICAE_CLIENT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token sent as `authorization: Bearer <token>` (prefer --token-file or the
    /// environment: a flag is visible in the process list).
    #[arg(long, env = "ICAE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored).
    #[arg(long, env = "ICAE_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

impl ConnectArgs {
    fn options(&self) -> Result<ConnectOptions> {
        let any_tls = self.tls_ca.is_some() || self.tls_cert.is_some();
        let tls = any_tls
            .then(|| {
                ClientTls::from_files(
                    self.tls_ca.as_deref(),
                    self.tls_cert.as_deref(),
                    self.tls_key.as_deref(),
                )
            })
            .transpose()?;
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(BearerToken::new(token).context("--token")?),
            (None, Some(path)) => Some(BearerToken::from_file(path)?),
            (None, None) => None,
        };
        Ok(ConnectOptions {
            // Clamped because a zero deadline would fail every call before it is sent.
            timeout: Some(Duration::from_secs_f64(self.timeout_seconds.max(0.001))),
            max_message_bytes: Some(self.max_message_bytes),
            tls,
            token,
        })
    }
}

#[derive(Debug, Args)]
pub struct CompressArgs {
    /// Encoder address, e.g. http://127.0.0.1:50051 (https:// for TLS).
    #[arg(long, env = "ICAE_ENCODER_URL")]
    pub encoder: String,
    #[command(flatten)]
    pub text: TextArgs,
    /// Tenant namespace for the key.
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// Slot time to live in seconds, sent as CompressOptions.ttl (0: unset, the server's
    /// default; at most 30 days).
    #[arg(long, default_value_t = 0)]
    pub ttl_seconds: u32,
    /// Refine the slots with this many optimiser steps (0: plain ICAE; the server's
    /// --max-refine-steps bounds it).
    #[arg(long, default_value_t = 0)]
    pub refine_steps: u32,
    /// Stop refining once the reconstruction loss (nats per token) is at or below this.
    #[arg(long, requires = "refine_steps")]
    pub target_loss: Option<f64>,
    /// Ask for the reconstruction loss of plain slots too (refined slots always have it).
    #[arg(long)]
    pub reconstruction_loss: bool,
    /// Slots per segment (0: the adapter's mem_size); fewer for a higher rate, meant with
    /// --refine-steps.
    #[arg(long, default_value_t = 0)]
    pub slots_per_segment: u32,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the handle as one JSON object: key, num_slots, num_tokens, num_segments,
    /// model_fingerprint, expire_time (RFC 3339, UTC), cache_hit, refine_steps,
    /// reconstruction_loss and seconds (the server's total).
    #[arg(long)]
    pub json: bool,
}

impl CompressArgs {
    fn options(&self) -> CompressOptions {
        CompressOptions {
            ttl: (self.ttl_seconds > 0).then(|| time::seconds(self.ttl_seconds.into())),
            namespace: self.namespace.clone(),
            refine_steps: self.refine_steps,
            target_loss: self.target_loss,
            reconstruction_loss: self.reconstruction_loss,
            slots_per_segment: self.slots_per_segment,
            ..Default::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Decoder address, e.g. http://127.0.0.1:50052 (https:// for TLS).
    #[arg(long, env = "ICAE_DECODER_URL")]
    pub decoder: String,
    /// Slot key from `client compress`; repeat for several slot sets, read in order.
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
    /// Print one JSON object at the end: text, token_ids, finish_reason, prompt_positions,
    /// time_to_first_token_seconds and seconds (the server's timings, in seconds).
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
    /// Print one JSON object at the end: text, token_ids, finish_reason, prompt_positions,
    /// time_to_first_token_seconds and seconds (the server's timings, in seconds).
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

async fn compress_text(
    encoder: &str,
    text: String,
    options: CompressOptions,
    connect: &ConnectArgs,
) -> Result<CompressResponse> {
    let mut client = connect_encoder(encoder, &connect.options()?).await?;
    Ok(client
        .compress(compress_one(text, options))
        .await
        .map_err(status_error)?
        .into_inner())
}

async fn compress(args: CompressArgs) -> Result<()> {
    let response = compress_text(
        &args.encoder,
        args.text.read()?,
        args.options(),
        &args.connect,
    )
    .await?;
    let handle = response
        .documents
        .first()
        .and_then(|d| d.handle.clone())
        .context("the encoder returned no handle")?;
    let total_seconds = time::secs_or_zero(response.timings.and_then(|t| t.total_duration));
    if args.json {
        return print_json(&json!({
            "key": handle.key, "num_slots": handle.num_slots, "num_tokens": handle.num_tokens,
            "num_segments": handle.num_segments, "model_fingerprint": handle.model_fingerprint,
            "expire_time": handle.expire_time.map(|t| t.to_string()), "cache_hit": handle.cache_hit,
            "refine_steps": handle.refine_steps, "reconstruction_loss": handle.reconstruction_loss,
            "seconds": total_seconds,
        }));
    }
    let fidelity = handle
        .reconstruction_loss
        .map(|loss| {
            format!(
                ", reconstruction loss {loss:.4} after {} refine steps",
                handle.refine_steps
            )
        })
        .unwrap_or_default();
    println!(
        "{} ({} tokens -> {} slots, cache hit: {}{fidelity}, {:.3}s)",
        handle.key, handle.num_tokens, handle.num_slots, handle.cache_hit, total_seconds
    );
    Ok(())
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

/// Stream a generation to stdout (or collect it for --json).
async fn stream(
    decoder: &str,
    message: GenerateRequest,
    connect: &ConnectArgs,
    json_output: bool,
) -> Result<()> {
    let mut client = connect_decoder(decoder, &connect.options()?).await?;
    let generated = generate_with(&mut client, message, |text| {
        if !json_output {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    })
    .await
    .map_err(status_error)?;
    let last = generated.completed()?;
    let reason = finish_reason(last.finish_reason);
    let timings = last.timings.unwrap_or_default();
    let first_token_seconds = time::secs_or_zero(timings.time_to_first_token);
    let total_seconds = time::secs_or_zero(timings.total_duration);
    if json_output {
        return print_json(&json!({
            "text": generated.text, "token_ids": generated.token_ids,
            "finish_reason": finish_reason_name(reason),
            "prompt_positions": last.prompt_positions,
            "time_to_first_token_seconds": first_token_seconds,
            "seconds": total_seconds,
        }));
    }
    println!();
    eprintln!(
        "[{} tokens, finish {}, first token {:.3}s, total {:.3}s]",
        last.generated_tokens,
        reason.as_str_name(),
        first_token_seconds,
        total_seconds
    );
    Ok(())
}

async fn generate(args: GenerateArgs) -> Result<()> {
    let context = match &args.baseline_text_file {
        Some(path) => baseline_text(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => slot_keys(&args.key),
    };
    let message = generate_request(
        context,
        parse_mode(&args.mode)?,
        args.prompt.as_deref().unwrap_or_default(),
        sampling(&args.sampling),
    );
    stream(&args.decoder, message, &args.connect, args.json).await
}

async fn ask(args: AskArgs) -> Result<()> {
    let response = compress_text(
        &args.encoder,
        args.text.read()?,
        CompressOptions::default(),
        &args.connect,
    )
    .await?;
    let key = response
        .documents
        .first()
        .and_then(|d| d.handle.as_ref())
        .context("the encoder returned no handle")?
        .key
        .clone();
    let message = generate_request(
        slot_keys(&[key]),
        Mode::Answer,
        &args.prompt,
        sampling(&args.sampling),
    );
    stream(&args.decoder, message, &args.connect, args.json).await
}

async fn info(args: InfoArgs) -> Result<()> {
    let options = args.connect.options()?;
    let response = match (&args.encoder, &args.decoder) {
        (Some(url), _) => {
            connect_encoder(url, &options)
                .await?
                .info(InfoRequest {})
                .await
        }
        (None, Some(url)) => {
            connect_decoder(url, &options)
                .await?
                .info(InfoRequest {})
                .await
        }
        (None, None) => bail!("give --encoder or --decoder"),
    }
    .map_err(status_error)?
    .into_inner();
    let limits = response.limits.unwrap_or_default();
    print_json(&json!({
        "service": response.service, "version": response.version, "model": response.model,
        "adapter": response.adapter, "adapter_trained": response.adapter_trained,
        "model_fingerprint": response.model_fingerprint, "hidden_size": response.hidden_size,
        "mem_size": response.mem_size, "compression_rate": response.compression_rate,
        "device": response.device, "dtype": response.dtype, "slot_dtype": response.slot_dtype,
        "active_sequences": response.active_sequences, "queue_size": response.queue_size,
        "limits": {
            "max_input_tokens": limits.max_input_tokens, "max_new_tokens": limits.max_new_tokens,
            "max_concurrent_requests": limits.max_concurrent_requests, "max_message_bytes": limits.max_message_bytes,
            "max_request_bytes": limits.max_request_bytes,
            "default_ttl_seconds": whole_seconds(limits.default_ttl),
            "max_ttl_seconds": whole_seconds(limits.max_ttl),
            "max_documents_per_request": limits.max_documents_per_request,
            "max_spans": limits.max_spans,
        },
    }))
}

/// A whole-second Duration of the API (a TTL) as an integer (0 when unset).
fn whole_seconds(d: Option<time::Duration>) -> i64 {
    d.map_or(0, |d| d.seconds)
}

#[cfg(test)]
mod tests {
    use icae_proto::v1::{FinishReason, Mode};

    /// The client names modes exactly as the in-process commands do (the engine's parser).
    #[test]
    fn modes_parse_as_the_engine_parses_them() {
        for name in [
            "autoencode",
            "AE",
            "continue",
            "lm",
            "Answer",
            "ft",
            "unspecified",
            "",
        ] {
            let client = icae_client::parse_mode(name).map_err(|e| e.to_string());
            let engine = name
                .parse::<icae_core::Mode>()
                .map(|mode| match mode {
                    icae_core::Mode::Autoencode => Mode::Autoencode,
                    icae_core::Mode::Continue => Mode::Continue,
                    icae_core::Mode::Answer => Mode::Answer,
                })
                .map_err(|e| e.to_string());
            assert_eq!(client, engine, "{name:?}");
        }
    }

    /// `icae client generate --json` and `icae generate --json` name finish reasons alike.
    #[test]
    fn finish_reasons_are_named_as_the_engine_names_them() {
        for (proto, engine) in [
            (FinishReason::Eos, icae_core::FinishReason::Eos),
            (FinishReason::Length, icae_core::FinishReason::Length),
            (FinishReason::Stop, icae_core::FinishReason::Stop),
        ] {
            assert_eq!(icae_client::finish_reason_name(proto), engine.as_str());
        }
    }
}
