//! The structured details a status carries besides its code and message, as Google's
//! `google.rpc` error model defines them, where they help a client decide what to do:
//! `ErrorInfo` (a stable reason per kind of error, in domain `icae.v1`), `RetryInfo` (how
//! long to wait) on the errors that retrying fixes, and `BadRequest` (the field at fault).

use std::collections::HashMap;
use std::time::Duration;

use icae_core::error::InputError;
use tonic_types::ErrorDetails;

use super::ServiceError;
use crate::store::StoreError;
use crate::text::{bounded, MAX_ECHO_BYTES};

/// The domain of every `ErrorInfo` reason.
pub const DOMAIN: &str = "icae.v1";

/// The details of `e`'s status.
pub fn error_details(e: &ServiceError) -> ErrorDetails {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason(e), DOMAIN, metadata(e));
    if let Some(delay) = retry_delay(e) {
        details.set_retry_info(Some(delay));
    }
    if let ServiceError::Input(InputError::BadParameter { name, expected, .. }) = e {
        details.add_bad_request_violation(*name, expected.clone());
    }
    details
}

/// A stable name for the kind of error (`[A-Z0-9_]+`): what a client branches on.
fn reason(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::Input(_) => "INVALID_REQUEST",
        ServiceError::BadInlineSlots { .. } => "INVALID_INLINE_SLOTS",
        ServiceError::NotFound { .. } => "SLOT_KEY_NOT_FOUND",
        ServiceError::WrongModel { .. } => "FINGERPRINT_MISMATCH",
        ServiceError::Corrupt { .. } => "SLOT_VALUE_CORRUPT",
        ServiceError::QueueFull { .. } => "QUEUE_FULL",
        ServiceError::SlotReadTooLarge { .. } => "SLOT_READ_TOO_LARGE",
        ServiceError::SlotReadsBusy { .. } => "SLOT_READS_BUSY",
        ServiceError::Store(StoreError::OutOfMemory(_)) => "REDIS_OUT_OF_MEMORY",
        ServiceError::Store(StoreError::WrongType { .. }) => "SLOT_VALUE_CORRUPT",
        ServiceError::Store(_) => "REDIS_UNAVAILABLE",
        ServiceError::ModelUnavailable(_) => "MODEL_UNAVAILABLE",
        ServiceError::Draining => "SERVER_DRAINING",
        ServiceError::ShutDown(_) => "SERVER_SHUT_DOWN",
        ServiceError::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
        ServiceError::ClientStalled(_) => "CLIENT_STALLED",
        ServiceError::Internal(_) => "INTERNAL",
        ServiceError::Unauthenticated(_) => "UNAUTHENTICATED",
    }
}

/// Values a client may act on without parsing the message.
fn metadata(e: &ServiceError) -> HashMap<String, String> {
    let pairs: Vec<(&str, String)> = match e {
        ServiceError::NotFound { key } => vec![("key", key.clone())],
        ServiceError::WrongModel {
            key,
            found,
            expected,
        } => vec![
            ("key", key.clone()),
            ("found_fingerprint", found.clone()),
            ("expected_fingerprint", expected.clone()),
        ],
        ServiceError::QueueFull { limit } => vec![("limit", limit.to_string())],
        ServiceError::SlotReadTooLarge { bytes, limit } => {
            vec![("bytes", bytes.to_string()), ("limit", limit.to_string())]
        }
        ServiceError::Input(InputError::BadParameter { name, .. }) => {
            vec![("field", name.to_string())]
        }
        _ => Vec::new(),
    };
    // Values come from requests and stored headers: bounded like quotes in messages, so
    // the details never push the status past a client's metadata limit.
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), bounded(v, MAX_ECHO_BYTES)))
        .collect()
}

/// How long to wait before sending the request again, for the errors a retry fixes: a
/// draining or stopped replica (at once, to another one), a full queue or busy reads
/// (a moment), Redis or the model not available (a little longer).
fn retry_delay(e: &ServiceError) -> Option<Duration> {
    match e {
        ServiceError::Draining | ServiceError::ShutDown(_) => Some(Duration::ZERO),
        ServiceError::QueueFull { .. } | ServiceError::SlotReadsBusy { .. } => {
            Some(Duration::from_millis(500))
        }
        ServiceError::Store(StoreError::OutOfMemory(_)) => None,
        ServiceError::Store(StoreError::WrongType { .. }) => None,
        ServiceError::Store(_) | ServiceError::ModelUnavailable(_) => Some(Duration::from_secs(1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;
    use tonic_types::StatusExt;

    use super::*;

    fn details_of(e: ServiceError) -> ErrorDetails {
        Status::from(e).get_error_details()
    }

    #[test]
    fn retryable_errors_say_how_long_to_wait() {
        let full = details_of(ServiceError::QueueFull { limit: 32 });
        let info = full.error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("QUEUE_FULL", DOMAIN)
        );
        assert_eq!(info.metadata["limit"], "32");
        assert_eq!(
            full.retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(500))
        );
        let draining = details_of(ServiceError::Draining);
        assert_eq!(
            draining.retry_info().unwrap().retry_delay,
            Some(Duration::ZERO)
        );
        let loading = details_of(ServiceError::ModelUnavailable("loading".into()));
        assert_eq!(loading.error_info().unwrap().reason, "MODEL_UNAVAILABLE");
        assert!(loading.retry_info().is_some());
    }

    #[test]
    fn client_errors_name_what_to_fix_and_carry_no_retry() {
        let bad = details_of(ServiceError::Input(InputError::BadParameter {
            name: "ttl",
            value: "99999999s".into(),
            expected: "must be at most 2592000s (30 days)".into(),
        }));
        assert!(bad.retry_info().is_none());
        let violation = &bad.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.field, "ttl");
        assert!(violation.description.contains("2592000"));
        let wide = details_of(ServiceError::WrongModel {
            key: "k".into(),
            found: "f".repeat(60_000),
            expected: "e".into(),
        });
        assert!(wide.error_info().unwrap().metadata["found_fingerprint"].len() <= 128);
        let missing = details_of(ServiceError::NotFound { key: "k".into() });
        let info = missing.error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.metadata["key"].as_str()),
            ("SLOT_KEY_NOT_FOUND", "k")
        );
        assert!(missing.retry_info().is_none());
    }
}
