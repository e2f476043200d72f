//! What both service binaries do around their gRPC service: configuration shared by both,
//! logging, Prometheus metrics, grpc.health.v1, reflection, and the SIGTERM drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use super::{telemetry, Admission};
use crate::device::DeviceSpec;
use crate::store::{SlotStore, StoreOptions};
use crate::tokenizer::TextTokenizer;

const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// Flags both services take; every flag can also be set by its environment variable.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// HF-layout base model directory.
    #[arg(long, env = "ICAE_MODEL")]
    pub model: PathBuf,
    /// Adapter directory or official ICAE v2 .safetensors file. The decoder needs the same
    /// adapter as the encoder (for the special tokens and the fingerprint).
    #[arg(long, env = "ICAE_ADAPTER")]
    pub adapter: PathBuf,
    /// LoRA alpha for official adapter files (adapter directories record their own).
    #[arg(long, env = "ICAE_LORA_ALPHA", default_value_t = crate::adapter::DEFAULT_LORA_ALPHA)]
    pub lora_alpha: f64,
    /// Compression rate for official adapter files (adapter directories record their own).
    #[arg(long, env = "ICAE_COMPRESSION_RATE", default_value_t = crate::adapter::DEFAULT_COMPRESSION_RATE)]
    pub compression_rate: usize,
    /// Redis: redis://[user:password@]host:port[/db], rediss:// for TLS, or Redis Cluster as
    /// redis+cluster://host:port,host:port (rediss+cluster:// for TLS).
    #[arg(long, env = "ICAE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PEM file of the CA that signed the Redis server's certificate, for TLS URLs with a
    /// private CA (without it, TLS trusts the web PKI roots).
    #[arg(long, env = "ICAE_REDIS_CA_CERT")]
    pub redis_ca_cert: Option<PathBuf>,
    /// Timeout of each Redis operation (and of connecting), in milliseconds.
    #[arg(long, env = "ICAE_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,
    /// Address to listen on.
    #[arg(long, env = "ICAE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// gRPC port.
    #[arg(long, env = "ICAE_PORT")]
    pub port: u16,
    /// Prometheus /metrics port (0 disables the endpoint).
    #[arg(long, env = "ICAE_METRICS_PORT", default_value_t = 0)]
    pub metrics_port: u16,
    /// Slot time to live in seconds when a request does not set one.
    #[arg(long, env = "ICAE_SLOT_TTL_SECONDS", default_value_t = 3600)]
    pub slot_ttl_seconds: u32,
    /// Most tokens one document (or baseline text) may have.
    #[arg(long, env = "ICAE_MAX_INPUT_TOKENS", default_value_t = 32_768)]
    pub max_input_tokens: usize,
    /// Most tokens one generation may produce.
    #[arg(long, env = "ICAE_MAX_NEW_TOKENS", default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Requests in flight at once (streams count until they end); more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "ICAE_MAX_CONCURRENT_REQUESTS", default_value_t = 32)]
    pub max_concurrent_requests: usize,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "ICAE_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, env = "ICAE_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "ICAE_JSON_OUTPUT")]
    pub json_output: bool,
    /// Export OpenTelemetry traces over OTLP/gRPC to this collector (e.g.
    /// http://otel-collector:4317); W3C `traceparent` metadata continues the caller's trace.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// After SIGTERM, how long in-flight requests may take to finish, in seconds.
    #[arg(long, env = "ICAE_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
}

impl CommonArgs {
    pub fn load_options(&self) -> crate::adapter::LoadOptions {
        crate::adapter::LoadOptions {
            lora_alpha: self.lora_alpha,
            compression_rate: self.compression_rate,
        }
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }

    /// Timeout and CA certificate for the slot store (reads --redis-ca-cert).
    pub fn store_options(&self) -> Result<StoreOptions, String> {
        let ca_cert_pem = match &self.redis_ca_cert {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read --redis-ca-cert {}: {e}", path.display()))?;
                if !pem
                    .windows(PEM_CERTIFICATE.len())
                    .any(|w| w == PEM_CERTIFICATE)
                {
                    return Err(format!(
                        "--redis-ca-cert {} holds no PEM certificate (no {:?} line)",
                        path.display(),
                        String::from_utf8_lossy(PEM_CERTIFICATE)
                    ));
                }
                Some(pem)
            }
        };
        Ok(StoreOptions {
            timeout: self.redis_timeout(),
            ca_cert_pem,
        })
    }

    /// Refuse limits that would make the service unusable.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--max-input-tokens", self.max_input_tokens),
            ("--max-new-tokens", self.max_new_tokens),
            ("--max-concurrent-requests", self.max_concurrent_requests),
            ("--max-message-bytes", self.max_message_bytes),
            ("--slot-ttl-seconds", self.slot_ttl_seconds as usize),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("{name} must be at least 1, got 0")),
            None => Ok(()),
        }
    }
}

/// Serve Prometheus metrics on `port` (0: none).
pub fn init_metrics(host: &str, port: u16) -> Result<(), String> {
    if port == 0 {
        return Ok(());
    }
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("metrics address {host}:{port}: {e}"))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("starting the metrics endpoint on {addr}: {e}"))
}

/// Readiness of the named service in grpc.health.v1.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    service: &'static str,
    admission: Admission,
}

impl Readiness {
    /// The model is loaded: ready, unless the server already drains.
    pub async fn set_ready(&self) {
        if !self.admission.is_draining() {
            self.reporter
                .set_service_status(self.service, ServingStatus::Serving)
                .await;
        }
    }

    pub async fn set_not_ready(&self) {
        self.reporter
            .set_service_status(self.service, ServingStatus::NotServing)
            .await;
    }
}

/// What every service builds before its own gRPC service: the slot store, the tokenizer,
/// admission control and health (readiness starts NOT_SERVING until the model loads).
pub struct Shared {
    pub store: Arc<SlotStore>,
    pub tokenizer: Arc<TextTokenizer>,
    pub admission: Admission,
    pub readiness: Readiness,
    health: HealthServer<HealthService>,
}

pub async fn prepare(common: &CommonArgs, service: &'static str) -> Result<Shared, String> {
    common.validate()?;
    init_metrics(&common.host, common.metrics_port)?;
    let store = Arc::new(
        SlotStore::new(&common.redis_url, common.store_options()?).map_err(|e| e.to_string())?,
    );
    let tokenizer = Arc::new(TextTokenizer::load(&common.model).map_err(|e| e.to_string())?);
    let admission = Admission::new(common.max_concurrent_requests);
    let reporter = HealthReporter::new();
    reporter
        .set_service_status(service, ServingStatus::NotServing)
        .await;
    let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    info!(model = %common.model.display(), adapter = %common.adapter.display(), redis = %store.describe(), service, "starting");
    Ok(Shared {
        store,
        tokenizer,
        admission: admission.clone(),
        readiness: Readiness {
            reporter,
            service,
            admission,
        },
        health,
    })
}

/// Start a tokio runtime, logging and tracing, run `run`, flush the traces, and turn the
/// outcome into the process exit code.
pub fn main_with<F, Fut>(name: &'static str, common: &CommonArgs, run: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
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
    runtime.block_on(async {
        let telemetry =
            match telemetry::init(common.json_output, common.otlp_endpoint.as_deref(), name) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
        let result = run().await;
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
    })
}

/// Serve `service` with health and reflection until SIGTERM/SIGINT; then refuse new requests,
/// mark the service NOT_SERVING, let in-flight requests finish (up to the grace period) and
/// return.
pub async fn serve<S>(common: &CommonArgs, shared: Shared, service: S) -> Result<(), String>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(icae_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("building reflection: {e}"))?;
    let addr = format!("{}:{}", common.host, common.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let readiness = shared.readiness;
    info!(address = %listener.local_addr().map_err(|e| e.to_string())?, service = readiness.service, "listening");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admission = shared.admission;
    let grace = Duration::from_secs(common.shutdown_grace_seconds);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal: draining");
        admission.drain();
        readiness.set_not_ready().await;
        if admission.wait_idle(grace).await {
            info!("in-flight requests finished");
        } else {
            warn!(
                grace_seconds = grace.as_secs(),
                "grace period over with requests still in flight"
            );
        }
        let _ = stop_tx.send(());
    });

    tonic::transport::Server::builder()
        .add_service(shared.health)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        })
        .await
        .map_err(|e| {
            error!(error = %e, "server failed");
            e.to_string()
        })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
