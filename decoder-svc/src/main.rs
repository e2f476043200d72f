//! decoder-svc: the ICAE Decoder gRPC service. Fetches memory slots from Redis (or takes
//! them inline) and streams generated text; the model runs on one dedicated thread that
//! steps all active sequences together.

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
use icae_proto::v1::decoder_server::DecoderServer;
use tracing::{error, info};

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
            error!(error = %e, "decoder-svc failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let common = &config.common;
    common.validate()?;
    if config.max_spans == 0 || config.max_batch_sequences == 0 {
        return Err("--max-spans and --max-batch-sequences must be at least 1".into());
    }
    runtime::init_metrics(&common.host, common.metrics_port)?;
    let store = Arc::new(
        SlotStore::new(&common.redis_url, common.redis_timeout()).map_err(|e| e.to_string())?,
    );
    let tokenizer = Arc::new(TextTokenizer::load(&common.model).map_err(|e| e.to_string())?);
    let admission = Admission::new(common.max_concurrent_requests);
    let (readiness, health) = runtime::health(icae_proto::DECODER_SERVICE, admission.clone()).await;

    let worker = worker::spawn(
        common.clone(),
        config.max_batch_sequences,
        readiness.clone(),
    );
    let service =
        server::DecoderService::new(&config, store.clone(), tokenizer, worker, admission.clone());
    let server = DecoderServer::new(service)
        .max_decoding_message_size(common.max_message_bytes)
        .max_encoding_message_size(common.max_message_bytes);
    info!(model = %common.model.display(), adapter = %common.adapter.display(), redis = %store.describe(), "starting decoder-svc");
    let options = ServeOptions {
        host: common.host.clone(),
        port: common.port,
        grace: Duration::from_secs(common.shutdown_grace_seconds),
        admission,
        file_descriptor_set: icae_proto::FILE_DESCRIPTOR_SET,
    };
    runtime::serve(options, readiness, health, server).await
}
