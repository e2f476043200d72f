//! Errors the services return, and their one mapping to gRPC status codes.

use thiserror::Error;
use tonic::{Code, Status};

use icae_core::error::{IcaeError, InputError};
use icae_core::slots::SlotError;

use crate::auth::AuthError;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("slot key {key:?} does not exist (never stored, or expired)")]
    NotFound { key: String },
    #[error(
        "slot key {key:?} was made by model fingerprint {found}, this decoder serves {expected}"
    )]
    WrongModel {
        key: String,
        found: String,
        expected: String,
    },
    #[error("slot value {key:?} is corrupt: {source}")]
    Corrupt { key: String, source: SlotError },
    #[error("the request queue is full ({limit} requests in flight); retry later")]
    QueueFull { limit: usize },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the model is not available: {0}")]
    ModelUnavailable(String),
    #[error("the server is shutting down and takes no new requests")]
    Draining,
    #[error("the deadline of {0:.3}s passed before the request finished")]
    DeadlineExceeded(f64),
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

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::Input(_) => Code::InvalidArgument,
            ServiceError::NotFound { .. } => Code::NotFound,
            ServiceError::WrongModel { .. } => Code::FailedPrecondition,
            ServiceError::Corrupt { .. } => Code::DataLoss,
            ServiceError::QueueFull { .. } => Code::ResourceExhausted,
            ServiceError::Store(_) | ServiceError::ModelUnavailable(_) | ServiceError::Draining => {
                Code::Unavailable
            }
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::Internal(_) => Code::Internal,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

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
            (ServiceError::DeadlineExceeded(1.0), Code::DeadlineExceeded),
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
}
