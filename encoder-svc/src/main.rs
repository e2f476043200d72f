//! encoder-svc: the ICAE Encoder gRPC service. Compresses documents into memory slots on a
//! dedicated model thread and stores them in Redis under content-addressed keys.

mod backend;
mod batcher;
mod compressing;
mod job;
mod pipeline;
mod refining;
mod server;
mod ttl;

use std::process::ExitCode;

use clap::Parser;
use icae_core::SlotDtype;
use icae_proto::v1::encoder_service_server::EncoderServiceServer;
use icae_serving::config::at_least_one;
use icae_serving::model_thread::load_icae;
use icae_serving::runtime::{run_service, ServiceParts};
use icae_serving::{serve, EncoderFlags, EncoderLimits, Ports, ServiceArgs};
use tracing::info;

use crate::backend::EncoderModel;
use crate::batcher::{BatchLimits, Batcher};
use crate::pipeline::CompressPipeline;
use crate::server::EncoderApi;

#[derive(Debug, Parser)]
// A flag given twice takes its last value (scripts add to a base command line).
#[command(
    args_override_self = true,
    name = "encoder-svc",
    version,
    about = "ICAE encoder: compresses documents into memory slots stored in Redis"
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Most documents in one Compress request.
    #[arg(long, env = "ICAE_MAX_DOCUMENTS_PER_REQUEST", value_parser = at_least_one::<usize>(), default_value_t = 64)]
    pub max_documents_per_request: usize,
    /// Most documents the model thread compresses in one batch.
    #[arg(long, env = "ICAE_MAX_BATCH_DOCUMENTS", value_parser = at_least_one::<usize>(), default_value_t = 16)]
    pub max_batch_documents: usize,
    /// Most tokens of all documents of one Compress request together: bounds the model
    /// time one request can take (larger requests are refused with INVALID_ARGUMENT).
    #[arg(long, env = "ICAE_MAX_REQUEST_TOKENS", value_parser = at_least_one::<usize>(), default_value_t = 65_536)]
    pub max_request_tokens: usize,
    /// Most tokens the model thread puts into one batch of requests (a larger request runs
    /// alone), so that a big request does not hold many small ones in its batch.
    #[arg(long, env = "ICAE_MAX_BATCH_TOKENS", value_parser = at_least_one::<usize>(), default_value_t = 16_384)]
    pub max_batch_tokens: usize,
    /// Precision slots are stored in Redis and returned in: f32 (whatever --dtype the model
    /// runs in) or bf16 (half the bytes). Decoders read both.
    #[arg(long, env = "ICAE_SLOT_DTYPE", default_value = "f32")]
    pub slot_dtype: SlotDtype,
    /// Merge the adapter's LoRA into the base weights at load (this process never decodes):
    /// faster compression, the same slots up to float rounding and the same fingerprint.
    /// `false` runs LoRA beside the base weights, as the decoder-side model does.
    #[arg(long, env = "ICAE_MERGE_LORA", default_value_t = true, action = clap::ArgAction::Set)]
    pub merge_lora: bool,
    /// Most test-time refinement steps one Compress request may ask for (`refine_steps`).
    /// 0 turns refinement and fidelity scores off, and with a merged LoRA saves the copy of
    /// the base weights refinement's decoder pass needs.
    #[arg(long, env = "ICAE_MAX_REFINE_STEPS", default_value_t = 200)]
    pub max_refine_steps: usize,
    /// Most tokens of all documents of one refining or scoring request: its backward pass
    /// keeps the activations of all of them (about 2 MB per token for the default model
    /// in f32, more for long documents: docs/refinement.md).
    #[arg(long, env = "ICAE_MAX_REFINE_TOKENS", value_parser = at_least_one::<usize>(), default_value_t = 2048)]
    pub max_refine_tokens: usize,
}

/// gRPC 50051, metrics 9091: distinct from the other service's, so both run on one host.
const DEFAULT_PORTS: Ports = Ports {
    grpc: 50051,
    metrics: 9091,
};

fn main() -> ExitCode {
    let config = Config::parse();
    let args = config.service.clone();
    run_service("encoder-svc", &args, || run(config))
}

async fn run(config: Config) -> Result<(), String> {
    let args = &config.service;
    let parts = ServiceParts::build(args, icae_proto::ENCODER_SERVICE, DEFAULT_PORTS).await?;
    let (model, adapter) = (args.model.clone(), args.adapter.clone());
    let merge_lora = config.merge_lora;
    let refines = config.max_refine_steps > 0;
    let slot_dtype = config.slot_dtype;
    let (batcher, load_failure) = Batcher::spawn(
        args.max_concurrent_requests,
        BatchLimits {
            max_documents: config.max_batch_documents,
            max_tokens: config.max_batch_tokens,
        },
        parts.readiness.clone(),
        move || {
            let (icae, summary) = load_icae(&model, &adapter)?;
            let backend = EncoderModel::new(icae, merge_lora, refines, slot_dtype);
            if merge_lora {
                info!(
                    "LoRA merged into the base weights (--merge-lora): this process only encodes"
                );
            }
            Ok((backend, summary))
        },
    );
    let limits = EncoderLimits::from_args(
        args,
        EncoderFlags {
            max_documents_per_request: config.max_documents_per_request,
            max_request_tokens: config.max_request_tokens,
            max_refine_steps: config.max_refine_steps,
            max_refine_tokens: config.max_refine_tokens,
        },
    );
    let service = EncoderApi {
        pipeline: CompressPipeline {
            store: parts.store.clone(),
            tokenizer: parts.tokenizer.clone(),
            batcher,
            limits,
            slot_dtype: config.slot_dtype,
        },
        admission: parts.admission.clone(),
    };
    let server = EncoderServiceServer::new(service)
        // Requests larger than anything the limits let through are refused before decoding.
        .max_decoding_message_size(limits.max_request_bytes())
        .max_encoding_message_size(args.max_message_bytes);
    serve(args, parts, server, load_failure).await
}

#[cfg(test)]
mod tests {
    use icae_serving::testing::{assert_pod_ready_defaults, ServiceCommand};

    use super::*;

    impl ServiceCommand for Config {
        fn service_args(&self) -> &ServiceArgs {
            &self.service
        }
    }

    #[test]
    fn defaults_suit_a_pod_and_loopback_stays_selectable() {
        assert_eq!(
            DEFAULT_PORTS,
            Ports {
                grpc: 50051,
                metrics: 9091
            }
        );
        assert_pod_ready_defaults::<Config>("encoder-svc", DEFAULT_PORTS);
    }

    #[test]
    fn lora_is_merged_unless_turned_off() {
        let parse = |args: &[&str]| {
            let base = ["encoder-svc", "--model", "m", "--adapter", "a"];
            Config::try_parse_from([&base[..], args].concat())
                .unwrap()
                .merge_lora
        };
        assert!(parse(&[]));
        assert!(!parse(&["--merge-lora", "false"]));
        assert!(parse(&["--merge-lora", "true"]));
    }
}
