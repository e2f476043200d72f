//! encoder-svc: the ICAE Encoder gRPC service. Compresses documents into memory slots on a
//! dedicated model thread and stores them in Redis under content-addressed keys.

mod server;
mod worker;

use std::process::ExitCode;

use clap::Parser;
use icae_core::service::runtime::{self, CommonArgs};
use icae_proto::v1::encoder_server::EncoderServer;

#[derive(Debug, Parser)]
#[command(
    name = "encoder-svc",
    version,
    about = "ICAE encoder: compresses documents into memory slots stored in Redis"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Most documents in one Compress request.
    #[arg(long, env = "ICAE_MAX_DOCUMENTS_PER_REQUEST", default_value_t = 64)]
    pub max_documents_per_request: usize,
    /// Most documents the model thread compresses in one batch.
    #[arg(long, env = "ICAE_MAX_BATCH_DOCUMENTS", default_value_t = 16)]
    pub max_batch_documents: usize,
}

fn main() -> ExitCode {
    let config = Config::parse();
    let common = config.common.clone();
    runtime::main_with("encoder-svc", &common, || run(config))
}

async fn run(config: Config) -> Result<(), String> {
    if config.max_documents_per_request == 0 || config.max_batch_documents == 0 {
        return Err(
            "--max-documents-per-request and --max-batch-documents must be at least 1".into(),
        );
    }
    let common = &config.common;
    let shared = runtime::prepare(common, icae_proto::ENCODER_SERVICE).await?;
    let worker = worker::spawn(common, config.max_batch_documents, shared.readiness.clone());
    let service = server::EncoderService::new(
        &config,
        shared.store.clone(),
        shared.tokenizer.clone(),
        worker,
        shared.admission.clone(),
    );
    let server = EncoderServer::new(service)
        .max_decoding_message_size(common.max_message_bytes)
        .max_encoding_message_size(common.max_message_bytes);
    runtime::serve(common, shared, server).await
}
