//! The client's deadline as the services enforce it. The gRPC library starts its own timer
//! for `grpc-timeout` when the request arrives, and ends the call with CANCELLED "Timeout
//! expired" when it fires. The services end the call a little earlier, counted from the
//! same moment: grpc_edge.rs computes the deadline as the request arrives, ends calls whose
//! response has not begun by then, and leaves it in the request's extensions, where the
//! decoder's scheduler finds it to end streams at that instant.

use std::time::{Duration, Instant};

/// How far ahead of its deadline the services end a request: a quarter of the deadline,
/// at least 2 ms (two ticks of the timer) and at most 20 ms.
const MIN_MARGIN: Duration = Duration::from_millis(2);
const MAX_MARGIN: Duration = Duration::from_millis(20);

/// A request's deadline: when the services give up on it, and the client's limit in
/// seconds (what the error message names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestDeadline {
    pub at: Instant,
    pub seconds: f64,
}

impl RequestDeadline {
    /// The deadline of `request` (none without `grpc-timeout`), as the edge layer computed
    /// it when the request reached the server.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().copied()
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
}
