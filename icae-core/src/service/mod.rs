//! Pieces both gRPC services share: the error → status mapping, admission control with
//! draining, deadlines and trace context from request metadata.

mod admission;
mod error;
mod info;
mod metadata;
mod model_thread;
pub mod runtime;
pub mod telemetry;

pub use admission::{Admission, Permit};
pub use error::ServiceError;
pub use info::{common_limits, info_response};
pub use metadata::{deadline, traceparent};
pub use model_thread::{ModelState, ModelThread};
