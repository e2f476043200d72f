//! The client's deadline as the services enforce it. The gRPC library starts its own timer
//! for `grpc-timeout` when the request arrives, and ends the call with CANCELLED "Timeout
//! expired" when it fires. The services end the call a little earlier, counted from the
//! same moment (recorded as [`ReceivedAt`] by grpc_edge.rs, which also ends calls whose
//! response has not begun by then); the decoder's scheduler ends streams at that instant.

use std::time::{Duration, Instant};

use crate::metadata::deadline;

/// How far ahead of its deadline the services end a request: a quarter of the deadline,
/// at least 2 ms (two ticks of the timer) and at most 20 ms.
const MIN_MARGIN: Duration = Duration::from_millis(2);
const MAX_MARGIN: Duration = Duration::from_millis(20);

/// When a request reached the server.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedAt(pub Instant);

/// A request's deadline: when the services give up on it, and the client's limit in
/// seconds (what the error message names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestDeadline {
    pub at: Instant,
    pub seconds: f64,
}

impl RequestDeadline {
    /// The deadline of `request` (none without `grpc-timeout`), counted from when it
    /// reached the server.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        let limit = deadline(request.metadata())?;
        let received = request
            .extensions()
            .get::<ReceivedAt>()
            .map_or_else(Instant::now, |r| r.0);
        Some(Self::from(received, limit))
    }

    pub(crate) fn from(received: Instant, limit: Duration) -> Self {
        let margin = (limit / 4).clamp(MIN_MARGIN, MAX_MARGIN);
        RequestDeadline {
            at: received + limit.saturating_sub(margin),
            seconds: limit.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_stop_a_little_before_the_deadline() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let at = |limit| RequestDeadline::from(start, limit).at - start;
        assert_eq!(at(ms(1000)), ms(980));
        assert_eq!(at(ms(40)), ms(30));
        assert_eq!(at(ms(5)), ms(3));
        assert_eq!(at(ms(1)), Duration::ZERO);
        assert_eq!(RequestDeadline::from(start, ms(1500)).seconds, 1.5);
    }

    #[test]
    fn the_deadline_counts_from_when_the_request_arrived() {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("grpc-timeout", "100m".parse().unwrap());
        let arrived = Instant::now() - Duration::from_millis(30);
        request.extensions_mut().insert(ReceivedAt(arrived));
        let deadline = RequestDeadline::of(&request).unwrap();
        assert_eq!(deadline.at, arrived + Duration::from_millis(80));
        assert!(RequestDeadline::of(&tonic::Request::new(())).is_none());
    }
}
