//! Which failed calls may be sent again, and how often.
//!
//! Two kinds, as gRPC clients have them: a call that never reached a server (the
//! connection was refused, the request was not written before its connection closed, or
//! the server refused the stream unprocessed) is sent to another replica at once, whatever
//! the policy; a call that may have reached one is sent again only under a [`RetryPolicy`],
//! and only where the API allows it.

use std::error::Error as StdError;
use std::io::ErrorKind;
use std::time::Duration;

use tonic::{Code, Status};

/// How a failed call is sent again: up to `attempts` calls in all, each on the next
/// replica, waiting `initial_backoff` before the first retry and twice as long (at most
/// `max_backoff`) before each later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts over about 1.5 s: longer than a replica takes to close its listener and
    /// for the client to notice, short against a request's usual deadline.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// One attempt: an error from a server is returned as it comes (calls that never
    /// reached a server still go to another replica).
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }
}

/// What a failed call allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No server saw it: safe to send anywhere, for any call.
    NeverSent,
    /// A server may have seen it; sending again is the policy's decision.
    Retryable,
    /// The answer: sending again would fail the same way.
    Final,
}

impl Failure {
    pub(crate) fn of(status: &Status) -> Failure {
        if never_sent(status) {
            Failure::NeverSent
        } else if is_retryable(status) {
            Failure::Retryable
        } else {
            Failure::Final
        }
    }
}

/// Whether a failed call may be sent again: the server was unreachable, went away, or said
/// it is shutting down (UNAVAILABLE), or the connection failed under the call (an error of
/// the client's own transport, whatever its code: a replica that closed its connections
/// after its GOAWAY, or one that died). Sending again is safe for every call of this API
/// before its answer has arrived: Compress is content-addressed, Generate changes nothing.
/// Nothing else is retried: a refused request fails the same way again, and a status a
/// server sent is its answer.
pub fn is_retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || StdError::source(status).is_some_and(|source| source.is::<tonic::transport::Error>())
}

/// Whether the call certainly never reached a server: its connection was refused, its
/// request was dropped unwritten when the connection closed (a replica's GOAWAY), or the
/// server refused its stream (REFUSED_STREAM: not processed, by the HTTP/2 rules).
pub fn never_sent(status: &Status) -> bool {
    let mut cause = StdError::source(status);
    while let Some(error) = cause {
        let unsent = if let Some(io) = error.downcast_ref::<std::io::Error>() {
            io.kind() == ErrorKind::ConnectionRefused
        } else if let Some(http) = error.downcast_ref::<hyper::Error>() {
            http.is_canceled()
        } else if let Some(stream) = error.downcast_ref::<h2::Error>() {
            stream.reason() == Some(h2::Reason::REFUSED_STREAM)
        } else {
            false
        };
        if unsent {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as tonic makes it from a transport failure under it.
    fn failed_with(error: impl StdError + Send + Sync + 'static) -> Status {
        Status::from_error(Box::new(error))
    }

    #[test]
    fn only_unavailable_and_failed_connections_are_retried() {
        assert!(is_retryable(&Status::unavailable("shutting down")));
        // A server's CANCELLED (e.g. its deadline handling) has no transport error under it.
        assert!(!is_retryable(&Status::cancelled("Timeout expired")));
        assert!(!is_retryable(&Status::invalid_argument("bad")));
        assert!(!is_retryable(&Status::resource_exhausted("queue is full")));
    }

    #[test]
    fn refused_connections_and_streams_never_reached_a_server() {
        let refused = std::io::Error::from(ErrorKind::ConnectionRefused);
        assert!(never_sent(&failed_with(refused)));
        let refused_stream = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert!(never_sent(&failed_with(refused_stream)));
        assert_eq!(
            Failure::of(&failed_with(std::io::Error::from(
                ErrorKind::ConnectionRefused
            ))),
            Failure::NeverSent
        );
    }

    #[test]
    fn a_broken_connection_or_a_server_status_may_have_been_seen() {
        // Reset under a call: the server may have started it.
        let reset = failed_with(std::io::Error::from(ErrorKind::ConnectionReset));
        assert!(!never_sent(&reset));
        assert!(!never_sent(&failed_with(h2::Error::from(
            h2::Reason::CANCEL
        ))));
        let draining = Status::unavailable("the server is shutting down");
        assert!(!never_sent(&draining));
        assert_eq!(Failure::of(&draining), Failure::Retryable);
        assert_eq!(
            Failure::of(&Status::invalid_argument("bad")),
            Failure::Final
        );
    }
}
