//! What both service binaries do around their gRPC service: the tokio runtime, logs and
//! traces, and the parts every service builds before its own (store, tokenizer, admission,
//! health).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use icae_core::tokenizer::TextTokenizer;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tracing::{error, info};

use crate::admission::Admission;
use crate::config::{Ports, ServiceArgs};
use crate::health::Readiness;
use crate::metrics::init_metrics;
use crate::model_threads::{exit_now, model_threads_finished};
use crate::security::auth::Authenticator;
use crate::security::tls::ReloadingTls;
use crate::store::SlotStore;
use crate::telemetry;

/// What every service builds before its own gRPC service. Readiness starts NOT_SERVING
/// until the model loads.
pub struct ServiceParts {
    pub store: Arc<SlotStore>,
    pub tokenizer: Arc<TextTokenizer>,
    pub admission: Admission,
    pub readiness: Readiness,
    pub health: HealthServer<HealthService>,
    pub ports: Ports,
    pub security: Security,
}

/// The transport's security, loaded before the model so that a bad file stops the start at
/// once, with its name.
pub struct Security {
    pub authenticator: Authenticator,
    /// None: plaintext gRPC.
    pub tls: Option<Arc<ReloadingTls>>,
}

impl Security {
    pub fn load(args: &ServiceArgs) -> Result<Security, String> {
        let authenticator = Authenticator::from_args(&args.security).map_err(|e| e.to_string())?;
        authenticator.watch_tokens_file()?;
        let tls = match args.security.tls_files() {
            Some(files) => Some(Arc::new(
                ReloadingTls::load(files).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        Ok(Security { authenticator, tls })
    }
}

impl ServiceParts {
    /// Check the flags, start the metrics endpoint, and build the shared parts (no Redis
    /// connection is made yet).
    pub async fn build(
        args: &ServiceArgs,
        service: &'static str,
        default_ports: Ports,
    ) -> Result<Self, String> {
        let security = Security::load(args)?;
        let ports = args.ports(default_ports);
        init_metrics(&args.metrics_host, ports.metrics)?;
        let store = Arc::new(
            SlotStore::new(&args.redis_url, args.store_options()?).map_err(|e| e.to_string())?,
        );
        let tokenizer =
            Arc::new(TextTokenizer::load(&args.model.model).map_err(|e| e.to_string())?);
        let admission = Admission::new(args.max_concurrent_requests, short_name(service))
            .with_shutdown_grace(args.shutdown_grace_seconds);
        let (readiness, health) = Readiness::new(service, admission.clone()).await;
        info!(model = %args.model.model.display(), adapter = %args.adapter.adapter.display(), redis = %store.describe(), service, "starting");
        Ok(ServiceParts {
            store,
            tokenizer,
            admission,
            readiness,
            health,
            ports,
            security,
        })
    }
}

/// Start a tokio runtime, logs and traces, run `serve`, flush the traces, and turn the
/// outcome into the process exit code.
pub fn run_service<F, Fut>(name: &'static str, args: &ServiceArgs, serve: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let telemetry = match telemetry::init(args.json_output, args.otlp_endpoint.as_deref(), name)
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = serve().await;
        telemetry.shutdown().await;
        match result {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "{name} failed");
                ExitCode::FAILURE
            }
        }
    });
    // A tokenizer task still running must not hold the exit: the grace period is over.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Every request is gone with the runtime, so the model thread's queue is closed: it
    // stops after the model call it is in.
    if !model_threads_finished(MODEL_THREAD_STOP_WAIT) {
        eprintln!(
            "{name}: the model thread did not stop within {}s; exiting without it",
            MODEL_THREAD_STOP_WAIT.as_secs()
        );
        exit_now(if code == ExitCode::SUCCESS { 0 } else { 1 });
    }
    code
}

/// How long the exit waits for the model thread to finish its current model call.
const MODEL_THREAD_STOP_WAIT: Duration = Duration::from_secs(10);

/// "encoder" for icae.v1.EncoderService: the `service` label of the metrics.
fn short_name(service: &'static str) -> &'static str {
    match service {
        icae_proto::ENCODER_SERVICE => "encoder",
        icae_proto::DECODER_SERVICE => "decoder",
        other => other,
    }
}
