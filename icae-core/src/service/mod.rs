//! Pieces both gRPC services share: the error → status mapping, admission control with
//! draining, deadlines and trace context from request metadata.

mod admission;
mod error;
mod metadata;
pub mod runtime;

pub use admission::{Admission, Permit};
pub use error::ServiceError;
pub use metadata::{deadline, traceparent};
