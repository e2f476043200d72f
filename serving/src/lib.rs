//! icae-serving: what encoder-svc and decoder-svc share around the engine — configuration,
//! admission control, health, metrics, logs and traces, the model thread's job queue, the
//! Redis slot store, limits, and the one mapping from errors to gRPC status codes.
//!
//! The request path is transport (each service's `server.rs`) → pipeline → batcher or
//! scheduler → engine (icae-core); nothing here calls back up into a service.

mod admission;
pub mod call;
pub mod config;
mod error;
mod grpc_edge;
mod health;
mod info;
mod limits;
mod log_limit;
mod metadata;
pub mod metrics;
pub mod model_thread;
pub mod model_threads;
mod process_metrics;
pub mod request_deadline;
pub mod runtime;
pub mod security;
mod server;
pub mod store;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
mod text;

pub use admission::{Admission, Permit};
pub use call::RpcCall;
pub use config::{Ports, ServiceArgs};
pub use error::ServiceError;
pub use health::Readiness;
pub use info::info_response;
pub use limits::{DecoderLimits, EncoderFlags, EncoderLimits, SharedLimits};
pub use metadata::traceparent;
pub use model_thread::{JobQueue, LoadFailure, ModelStartup, ModelState, QueuePlace, Queued};
pub use request_deadline::RequestDeadline;
pub use security::auth::{AuthError, Authenticator};
pub use security::identity::{tenant_of, Tenant};
pub use security::security_args::SecurityArgs;
pub use server::serve;
pub use text::{check_text_bytes, is_blank, shown, BYTES_PER_TOKEN};
