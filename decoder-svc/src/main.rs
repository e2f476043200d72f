//! decoder-svc: the ICAE Decoder gRPC service. Fetches memory slots from Redis (or takes
//! them inline) and streams generated text; the model runs on one dedicated thread that
//! steps all active sequences together.

mod server;
mod worker;

use std::process::ExitCode;

use clap::Parser;
use icae_core::service::runtime::{self, CommonArgs};
use icae_proto::v1::decoder_server::DecoderServer;

#[derive(Debug, Parser)]
#[command(
    name = "decoder-svc",
    version,
    about = "ICAE decoder: generates text from memory slots stored in Redis"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Most slot sets (spans) one request may concatenate.
    #[arg(long, env = "ICAE_MAX_SPANS", default_value_t = 16)]
    pub max_spans: usize,
    /// Most sequences decoded together in one batched step.
    #[arg(long, env = "ICAE_MAX_BATCH_SEQUENCES", default_value_t = 16)]
    pub max_batch_sequences: usize,
}

fn main() -> ExitCode {
    let config = Config::parse();
    let common = config.common.clone();
    runtime::main_with("decoder-svc", &common, || run(config))
}

async fn run(config: Config) -> Result<(), String> {
    if config.max_spans == 0 || config.max_batch_sequences == 0 {
        return Err("--max-spans and --max-batch-sequences must be at least 1".into());
    }
    let common = &config.common;
    let shared = runtime::prepare(common, icae_proto::DECODER_SERVICE).await?;
    let worker = worker::spawn(common, config.max_batch_sequences, shared.readiness.clone());
    let service = server::DecoderService::new(
        &config,
        shared.store.clone(),
        shared.tokenizer.clone(),
        worker,
        shared.admission.clone(),
    );
    let server = DecoderServer::new(service)
        .max_decoding_message_size(common.max_message_bytes)
        .max_encoding_message_size(common.max_message_bytes);
    runtime::serve(common, shared, server).await
}
