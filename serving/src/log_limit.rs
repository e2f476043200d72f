//! Log lines about events a client can cause at will (a refused TLS handshake), limited so
//! that a flood of them cannot flood the logs: a burst per interval, then one summary of
//! how many were left out with the next line allowed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogLimit {
    interval: Duration,
    burst: u64,
    state: Mutex<Window>,
}

struct Window {
    started: Option<Instant>,
    logged: u64,
    left_out: u64,
}

impl LogLimit {
    pub const fn new(interval: Duration, burst: u64) -> Self {
        LogLimit {
            interval,
            burst,
            state: Mutex::new(Window {
                started: None,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// Whether to log this event at `now`: `Some(n)` with the `n` events left out since the
    /// last line logged, `None` to leave it out.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut window = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if window
            .started
            .is_none_or(|started| now.duration_since(started) >= self.interval)
        {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged >= self.burst {
            window.left_out += 1;
            return None;
        }
        window.logged += 1;
        Some(std::mem::take(&mut window.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_interval_then_the_count_of_lines_left_out() {
        let limit = LogLimit::new(Duration::from_secs(10), 3);
        let start = Instant::now();
        let allowed: Vec<Option<u64>> = (0..1000).map(|_| limit.allow(start)).collect();
        assert_eq!(&allowed[..3], &[Some(0), Some(0), Some(0)]);
        assert!(allowed[3..].iter().all(Option::is_none));
        assert_eq!(limit.allow(start + Duration::from_secs(9)), None);
        assert_eq!(limit.allow(start + Duration::from_secs(10)), Some(998));
        assert_eq!(limit.allow(start + Duration::from_secs(11)), Some(0));
    }
}
