//! decoder-svc: the ICAE Decoder gRPC service. Fetches memory slots from Redis (or takes
//! them inline) and streams generated text; the model runs on one dedicated thread that
//! steps all active sequences together.

mod backend;
mod convert;
mod event_stream;
mod pipeline;
mod request;
mod scheduler;
mod server;
mod slot_reads;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use icae_proto::v1::decoder_service_server::DecoderServiceServer;
use icae_serving::config::at_least_one;
use icae_serving::model_thread::load_icae;
use icae_serving::runtime::{run_service, ServiceParts};
use icae_serving::{serve, DecoderLimits, Ports, ServiceArgs};

use crate::pipeline::GeneratePipeline;
use crate::scheduler::{Scheduler, StepLimits};
use crate::server::DecoderApi;
use crate::slot_reads::SlotReader;

#[derive(Debug, Parser)]
// A flag given twice takes its last value (scripts add to a base command line).
#[command(
    args_override_self = true,
    name = "decoder-svc",
    version,
    about = "ICAE decoder: generates text from memory slots stored in Redis"
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Most slot sets one request may concatenate (in order).
    #[arg(
        long,
        env = "ICAE_MAX_SLOT_SETS",
        value_parser = at_least_one::<usize>(),
        alias = "max-spans",
        default_value_t = 16
    )]
    pub max_slot_sets: usize,
    /// Most sequences decoded together in one batched step (requests still prefilling
    /// count).
    #[arg(long, env = "ICAE_MAX_BATCH_SEQUENCES", value_parser = at_least_one::<usize>(), default_value_t = 16)]
    pub max_batch_sequences: usize,
    /// Most prompt positions prefilled between two decoding steps, over all new requests: a
    /// long prompt is prefilled in chunks of this size, so running streams wait one chunk
    /// per token instead of the whole prefill. Smaller: steadier streams, slower first token
    /// for long prompts.
    #[arg(long, env = "ICAE_MAX_PREFILL_TOKENS_PER_STEP", value_parser = at_least_one::<usize>(), default_value_t = 256)]
    pub max_prefill_tokens_per_step: usize,
    /// Most MiB of slot values read from Redis at once, over all requests. A request waits
    /// up to --redis-timeout-ms for its share, then gets RESOURCE_EXHAUSTED; one whose slot
    /// sets alone need more is refused at once.
    #[arg(long, env = "ICAE_MAX_SLOT_READ_MIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=MAX_SLOT_READ_MIB as i64))]
    pub max_slot_read_mib: u32,
    /// Seconds a Generate stream waits on a client that reads nothing (its receive window
    /// stays full) before the stream is ended: its generation is cancelled and its buffered
    /// tokens dropped. The request's slot is freed when its work is done in any case.
    #[arg(long, env = "ICAE_STREAM_SEND_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_send_timeout_seconds: u64,
}

/// 1 TiB: the budget's KiB units then fit a u32.
const MAX_SLOT_READ_MIB: u32 = 1 << 20;

impl Config {
    /// What the scheduler runs each step with (each at least 1: the flags' parser refuses
    /// 0, which would stop it from making progress).
    fn step_limits(&self) -> StepLimits {
        StepLimits {
            max_batch_sequences: self.max_batch_sequences,
            max_prefill_tokens_per_step: self.max_prefill_tokens_per_step,
        }
    }
}

/// gRPC 50052, metrics 9092: distinct from the other service's, so both run on one host.
const DEFAULT_PORTS: Ports = Ports {
    grpc: 50052,
    metrics: 9092,
};

fn main() -> ExitCode {
    let config = Config::parse();
    let args = config.service.clone();
    run_service("decoder-svc", &args, || run(config))
}

async fn run(config: Config) -> Result<(), String> {
    let step_limits = config.step_limits();
    let args = &config.service;
    let parts = ServiceParts::build(args, icae_proto::DECODER_SERVICE, DEFAULT_PORTS).await?;
    let (model, adapter) = (args.model.clone(), args.adapter.clone());
    let (scheduler, load_failure) = Scheduler::spawn(
        args.max_concurrent_requests,
        step_limits,
        parts.readiness.clone(),
        move || load_icae(&model, &adapter),
    );
    let limits = DecoderLimits::from_args(
        args,
        config.max_slot_sets,
        config.max_slot_read_mib as usize * 1024 * 1024,
    );
    let service = DecoderApi {
        pipeline: GeneratePipeline {
            slot_reader: SlotReader::new(
                parts.store.clone(),
                limits.max_slot_read_bytes,
                args.redis_timeout(),
            ),
            tokenizer: parts.tokenizer.clone(),
            scheduler,
            limits,
        },
        admission: parts.admission.clone(),
        stream_send_timeout: Duration::from_secs(config.stream_send_timeout_seconds),
    };
    let server = DecoderServiceServer::new(service)
        .max_decoding_message_size(args.max_message_bytes)
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
                grpc: 50052,
                metrics: 9092
            }
        );
        assert_pod_ready_defaults::<Config>("decoder-svc", DEFAULT_PORTS);
    }

    #[test]
    fn prefill_chunk_size_defaults_to_256_and_must_be_at_least_one() {
        let parse = |extra: &[&str]| {
            let required = ["decoder-svc", "--model", "m", "--adapter", "a"];
            Config::try_parse_from([&required, extra].concat()).map(|c| c.step_limits())
        };
        assert_eq!(parse(&[]).unwrap().max_prefill_tokens_per_step, 256);
        let limits = parse(&["--max-prefill-tokens-per-step", "32"]).unwrap();
        assert_eq!(limits.max_prefill_tokens_per_step, 32);
        for flag in [
            "--max-prefill-tokens-per-step",
            "--max-batch-sequences",
            "--max-slot-sets",
        ] {
            let err = parse(&[flag, "0"]).err().unwrap().to_string();
            assert!(err.contains(flag) && err.contains("'0'"), "{err}");
            assert!(err.contains("1.."), "{err}");
        }
    }
}
