//! encoder-svc: the ICAE Encoder gRPC service. Compresses documents into memory slots on a
//! dedicated model thread and stores them in Redis under content-addressed keys.

mod server;
mod worker;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use icae_core::service::runtime::{self, CommonArgs, ServeOptions};
use icae_core::service::Admission;
use icae_core::store::SlotStore;
use icae_core::tokenizer::TextTokenizer;
use icae_proto::v1::encoder_server::EncoderServer;
use tracing::{error, info};

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
    runtime::init_logging(config.common.json_output);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "encoder-svc failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let common = &config.common;
    common.validate()?;
    if config.max_documents_per_request == 0 || config.max_batch_documents == 0 {
        return Err(
            "--max-documents-per-request and --max-batch-documents must be at least 1".into(),
        );
    }
    runtime::init_metrics(&common.host, common.metrics_port)?;
    let store = Arc::new(
        SlotStore::new(&common.redis_url, common.redis_timeout()).map_err(|e| e.to_string())?,
    );
    let tokenizer = Arc::new(TextTokenizer::load(&common.model).map_err(|e| e.to_string())?);
    let admission = Admission::new(common.max_concurrent_requests);
    let (readiness, health) = runtime::health(icae_proto::ENCODER_SERVICE, admission.clone()).await;

    let worker = worker::spawn(
        common.clone(),
        config.max_batch_documents,
        common.max_concurrent_requests,
        readiness.clone(),
    );
    let service =
        server::EncoderService::new(&config, store.clone(), tokenizer, worker, admission.clone());
    let server = EncoderServer::new(service)
        .max_decoding_message_size(common.max_message_bytes)
        .max_encoding_message_size(common.max_message_bytes);
    info!(model = %common.model.display(), adapter = %common.adapter.display(), redis = %store.describe(), "starting encoder-svc");
    let options = ServeOptions {
        host: common.host.clone(),
        port: common.port,
        grace: Duration::from_secs(common.shutdown_grace_seconds),
        admission,
        file_descriptor_set: icae_proto::FILE_DESCRIPTOR_SET,
    };
    runtime::serve(options, readiness, health, server).await
}
