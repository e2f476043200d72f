//! The API's times in std terms: `google.protobuf.Duration` (timings, TTLs) and
//! `google.protobuf.Timestamp` (expiry) to and from `std::time`.

use std::time::{Duration as StdDuration, SystemTime};

pub use prost_types::{Duration, Timestamp};

/// `d` as a protobuf Duration (saturating at the largest one, about 292 billion years).
pub fn duration(d: StdDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// Whole seconds as a protobuf Duration.
pub fn seconds(seconds: u64) -> Duration {
    duration(StdDuration::from_secs(seconds))
}

/// A span measured in seconds as a protobuf Duration; a negative or non-finite span is 0.
pub fn seconds_f64(seconds: f64) -> Duration {
    duration(StdDuration::try_from_secs_f64(seconds).unwrap_or_default())
}

/// `d` in seconds (negative for a negative Duration), for display and arithmetic.
pub fn as_secs_f64(d: &Duration) -> f64 {
    let d = d.normalized();
    d.seconds as f64 + f64::from(d.nanos) * 1e-9
}

/// An optional Duration in seconds, 0 when unset (a stage a service does not have).
pub fn secs_or_zero(d: Option<Duration>) -> f64 {
    d.as_ref().map_or(0.0, as_secs_f64)
}

/// `t` as a protobuf Timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

/// `t` as a `SystemTime`, when the platform can hold it.
pub fn system_time(t: &Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_both_ways() {
        assert_eq!(seconds(600).to_string(), "600s");
        assert_eq!(
            seconds_f64(0.25),
            Duration {
                seconds: 0,
                nanos: 250_000_000
            }
        );
        assert_eq!(seconds_f64(-1.0), Duration::default());
        assert_eq!(seconds_f64(f64::NAN), Duration::default());
        assert_eq!(as_secs_f64(&seconds_f64(1.5)), 1.5);
        assert_eq!(
            as_secs_f64(&Duration {
                seconds: -1,
                nanos: -500_000_000
            }),
            -1.5
        );
        assert_eq!(duration(StdDuration::MAX).seconds, i64::MAX);
        assert_eq!(secs_or_zero(Some(seconds_f64(2.5))), 2.5);
        assert_eq!(secs_or_zero(None), 0.0);
    }

    #[test]
    fn timestamps_convert_both_ways() {
        let t = SystemTime::UNIX_EPOCH + StdDuration::new(1_767_323_045, 5);
        let stamp = timestamp(t);
        assert_eq!((stamp.seconds, stamp.nanos), (1_767_323_045, 5), "{stamp}");
        assert_eq!(system_time(&stamp), Some(t));
        // RFC 3339, as the JSON mapping writes it.
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH + StdDuration::from_secs(1_767_323_045)).to_string(),
            "2026-01-02T03:04:05Z"
        );
    }
}
