//! Flags both services take; every flag can also be set by its environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::Args;
use icae_core::args::{AdapterArgs, ModelArgs};

use crate::security::security_args::SecurityArgs;
use crate::store::StoreOptions;

const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The ports a service listens on (metrics 0: no endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub grpc: u16,
    pub metrics: u16,
}

#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Redis: redis://[user:password@]host:port[/db], rediss:// for TLS, or Redis Cluster as
    /// redis+cluster://host:port,host:port (rediss+cluster:// for TLS).
    #[arg(long, env = "ICAE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Redis password (AUTH), kept out of the URL and so out of /proc/PID/cmdline: set it
    /// through the environment or --redis-password-file. Overrides a password in the URL.
    #[arg(long, env = "ICAE_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// File holding the Redis password (a mounted Kubernetes Secret); trailing newlines are
    /// ignored.
    #[arg(
        long,
        env = "ICAE_REDIS_PASSWORD_FILE",
        conflicts_with = "redis_password"
    )]
    pub redis_password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the Redis server's certificate, for TLS URLs with a
    /// private CA (without it, TLS trusts the web PKI roots).
    #[arg(long, env = "ICAE_REDIS_CA_CERT")]
    pub redis_ca_cert: Option<PathBuf>,
    /// Timeout of each Redis operation (and of connecting), in milliseconds.
    #[arg(long, env = "ICAE_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,
    /// Address to listen on for gRPC (0.0.0.0: every interface, as a pod needs; 127.0.0.1
    /// keeps the service on this machine).
    #[arg(long, env = "ICAE_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// gRPC port [default: 50051 for encoder-svc, 50052 for decoder-svc].
    #[arg(long, env = "ICAE_PORT")]
    pub port: Option<u16>,
    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, env = "ICAE_METRICS_HOST", default_value = "0.0.0.0")]
    pub metrics_host: String,
    /// Prometheus /metrics port; 0 turns the endpoint off [default: 9091 for encoder-svc,
    /// 9092 for decoder-svc].
    #[arg(long, env = "ICAE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// After this many seconds a client connection is told to go away (HTTP/2 GOAWAY; its
    /// running streams finish), so that clients reconnect and spread over pods added by
    /// scale-out. 0: never.
    #[arg(long, env = "ICAE_MAX_CONNECTION_AGE_SECONDS", default_value_t = 600)]
    pub max_connection_age_seconds: u64,
    /// Slot time to live in seconds when a request does not set one.
    #[arg(long, env = "ICAE_SLOT_TTL_SECONDS", value_parser = at_least_one::<u32>(), default_value_t = 3600)]
    pub slot_ttl_seconds: u32,
    /// Most tokens one document (or baseline text) may have.
    #[arg(long, env = "ICAE_MAX_INPUT_TOKENS", value_parser = at_least_one::<usize>(), default_value_t = 32_768)]
    pub max_input_tokens: usize,
    /// Most tokens one generation may produce.
    #[arg(long, env = "ICAE_MAX_NEW_TOKENS", value_parser = at_least_one::<usize>(), default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Requests in flight at once (streams count until they end); more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "ICAE_MAX_CONCURRENT_REQUESTS", value_parser = at_least_one::<usize>(), default_value_t = 32)]
    pub max_concurrent_requests: usize,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "ICAE_MAX_MESSAGE_BYTES", value_parser = at_least_one::<usize>(), default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
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
    #[command(flatten)]
    pub security: SecurityArgs,
}

impl ServiceArgs {
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
            password: self.redis_password()?,
        })
    }

    /// --redis-password, or the contents of --redis-password-file.
    fn redis_password(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.redis_password_file else {
            return Ok(self.redis_password.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --redis-password-file {}: {e}", path.display()))?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(format!("--redis-password-file {} is empty", path.display()));
        }
        Ok(Some(password.to_string()))
    }

    /// The gRPC and metrics ports, with the binary's defaults where no flag set them.
    pub fn ports(&self, defaults: Ports) -> Ports {
        Ports {
            grpc: self.port.unwrap_or(defaults.grpc),
            metrics: self.metrics_port.unwrap_or(defaults.metrics),
        }
    }
}

/// A value parser for a count or size that must be at least 1: 0 is refused as the flag is
/// parsed, with the flag's name, the value and the range in the message.
pub fn at_least_one<T>() -> RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: Send + Sync + 'static + std::error::Error + ToString,
{
    RangedU64ValueParser::<T>::new().range(1..)
}
