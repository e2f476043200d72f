//! Errors the services return, and their one mapping to gRPC status codes (with the
//! structured details of details.rs).

mod details;

use thiserror::Error;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use icae_core::error::{IcaeError, InputError};
use icae_core::slots::SlotError;

use crate::security::auth::AuthError;
use crate::store::{KeyError, StoreError};
use crate::text::{bounded, shown};

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("slot key {} does not exist (never stored, or expired)", shown(key))]
    NotFound { key: String },
    #[error(
        "slot key {} was made by model fingerprint {}, this decoder serves {expected}",
        shown(key),
        shown(found)
    )]
    WrongModel {
        key: String,
        found: String,
        expected: String,
    },
    /// Stored data that cannot be used: the store's fault, not the client's.
    #[error("slot value {} is corrupt: {source}", shown(key))]
    Corrupt { key: String, source: SlotError },
    /// Slots the client sent inline that cannot be used: the client's fault.
    #[error("inline slot set {index} is not a usable slot value: {source}")]
    BadInlineSlots { index: usize, source: SlotError },
    #[error("the request queue is full ({limit} requests in flight); retry later")]
    QueueFull { limit: usize },
    /// One request's slot values are more than the decoder reads at once for everyone.
    #[error(
        "the slot sets take {bytes} bytes to read, more than the {limit} bytes the decoder \
         reads from Redis at once (--max-slot-read-mib)"
    )]
    SlotReadTooLarge { bytes: usize, limit: usize },
    /// Other requests' slot reads filled the read budget for longer than the Redis timeout.
    #[error(
        "the slot sets take {bytes} bytes to read and other requests' reads held the \
         decoder's read budget for {waited_ms} ms; retry later"
    )]
    SlotReadsBusy { bytes: usize, waited_ms: u64 },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the model is not available: {0}")]
    ModelUnavailable(String),
    #[error(
        "the server is shutting down and takes no new requests; retry, another replica will \
         serve it"
    )]
    Draining,
    #[error(
        "the server shut down before the request finished (its shutdown grace period of \
         {0}s ran out); retry, another replica will serve it"
    )]
    ShutDown(u64),
    #[error("the deadline of {0:.3}s passed before the request finished")]
    DeadlineExceeded(f64),
    /// A streaming client read nothing of its response for the send timeout.
    #[error(
        "the client read nothing of the response for {0}s (--stream-send-timeout-seconds): \
         the stream was ended and its buffered messages dropped"
    )]
    ClientStalled(u64),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
}

impl From<IcaeError> for ServiceError {
    fn from(e: IcaeError) -> Self {
        match e {
            IcaeError::Input(input) => ServiceError::Input(input),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// A key's refusal is the same as any other refusal of its kind: a malformed key is the
/// request's fault, another tenant's key is missing.
impl From<KeyError> for ServiceError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Malformed(input) => ServiceError::Input(input),
            KeyError::NotFound { key } => ServiceError::NotFound { key },
        }
    }
}

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::Input(_) | ServiceError::BadInlineSlots { .. } => Code::InvalidArgument,
            ServiceError::NotFound { .. } => Code::NotFound,
            ServiceError::WrongModel { .. } => Code::FailedPrecondition,
            ServiceError::Corrupt { .. } | ServiceError::Store(StoreError::WrongType { .. }) => {
                Code::DataLoss
            }
            ServiceError::QueueFull { .. }
            | ServiceError::SlotReadTooLarge { .. }
            | ServiceError::SlotReadsBusy { .. }
            | ServiceError::Store(StoreError::OutOfMemory(_)) => Code::ResourceExhausted,
            ServiceError::Store(_)
            | ServiceError::ModelUnavailable(_)
            | ServiceError::Draining
            | ServiceError::ShutDown(_) => Code::Unavailable,
            ServiceError::DeadlineExceeded(_) | ServiceError::ClientStalled(_) => {
                Code::DeadlineExceeded
            }
            ServiceError::Internal(_) => Code::Internal,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
        }
    }
}

/// The status: its code, the message (bounded), and the structured details
/// (details.rs) in `grpc-status-details-bin`.
impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let message = bounded(e.to_string(), MAX_MESSAGE_BYTES);
        Status::with_error_details(e.code(), message, details::error_details(&e))
    }
}

/// An authentication failure as the interceptor answers it (through ServiceError's mapping).
impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        ServiceError::from(e).into()
    }
}

/// Longest status message: gRPC clients limit metadata (grpc-message) to 8–16 KiB in all,
/// and a message cut by the transport arrives as RESOURCE_EXHAUSTED instead of its code.
pub const MAX_MESSAGE_BYTES: usize = 2048;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_documented_code() {
        let cases = [
            (
                ServiceError::Input(InputError::EmptyText),
                Code::InvalidArgument,
            ),
            (ServiceError::NotFound { key: "k".into() }, Code::NotFound),
            (
                ServiceError::WrongModel {
                    key: "k".into(),
                    found: "a".into(),
                    expected: "b".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ServiceError::Corrupt {
                    key: "k".into(),
                    source: SlotError::MissingTensor,
                },
                Code::DataLoss,
            ),
            (
                ServiceError::QueueFull { limit: 4 },
                Code::ResourceExhausted,
            ),
            (
                ServiceError::Store(StoreError::Unavailable("down".into())),
                Code::Unavailable,
            ),
            (ServiceError::Draining, Code::Unavailable),
            (ServiceError::ShutDown(2), Code::Unavailable),
            (
                ServiceError::BadInlineSlots {
                    index: 0,
                    source: SlotError::MissingTensor,
                },
                Code::InvalidArgument,
            ),
            (
                ServiceError::Store(StoreError::WrongType { key: "k".into() }),
                Code::DataLoss,
            ),
            (
                ServiceError::Store(StoreError::OutOfMemory("OOM".into())),
                Code::ResourceExhausted,
            ),
            (
                ServiceError::SlotReadTooLarge {
                    bytes: 10,
                    limit: 5,
                },
                Code::ResourceExhausted,
            ),
            (
                ServiceError::SlotReadsBusy {
                    bytes: 10,
                    waited_ms: 3,
                },
                Code::ResourceExhausted,
            ),
            (ServiceError::DeadlineExceeded(1.0), Code::DeadlineExceeded),
            (ServiceError::ClientStalled(30), Code::DeadlineExceeded),
            (
                ServiceError::Unauthenticated(AuthError::UnknownToken),
                Code::Unauthenticated,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn echoed_values_and_messages_are_bounded() {
        let key = "k".repeat(1_000_000);
        let message = ServiceError::NotFound { key: key.clone() }.to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains("(1000000 bytes)"), "{message}");
        let wide = "é".repeat(2000);
        assert!(shown(&wide).len() < 200);
        let status = Status::from(ServiceError::Internal(wide));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
    }
}
