//! How long Redis keeps a request's slots: `CompressOptions.ttl`, a
//! `google.protobuf.Duration`, parsed at the edge into whole seconds within the limits
//! (unset: the server's default).

use std::time::Duration;

use icae_core::InputError;
use icae_proto::time::Duration as ProtoDuration;
use icae_serving::EncoderLimits;

/// A slot time to live the server accepts: whole seconds, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotTtl(u32);

impl SlotTtl {
    /// The TTL a request asks for: whole seconds from 1 s to `max_ttl_seconds`; a fraction
    /// of a second, zero, a negative or a longer one is refused with the value and the
    /// limits.
    pub fn parse(
        requested: Option<&ProtoDuration>,
        limits: &EncoderLimits,
    ) -> Result<SlotTtl, InputError> {
        let Some(d) = requested else {
            return Ok(SlotTtl(limits.default_ttl_seconds));
        };
        let max = limits.max_ttl_seconds;
        let range = format!("1s to {max}s (30 days)");
        let bad = |expected: String| InputError::BadParameter {
            name: "ttl",
            value: shown(d),
            expected,
        };
        if !is_valid(d) {
            return Err(bad(format!(
                "not a valid google.protobuf.Duration (nanos within ±999999999, of the sign \
                 of seconds); a ttl is whole seconds, {range}"
            )));
        }
        if d.nanos != 0 {
            return Err(bad(format!("must be whole seconds (nanos 0), {range}")));
        }
        match u32::try_from(d.seconds) {
            Ok(seconds) if (1..=max).contains(&seconds) => Ok(SlotTtl(seconds)),
            _ if d.seconds > 0 => Err(bad(format!("must be at most {max}s (30 days)"))),
            _ => Err(bad(format!(
                "must be at least 1s, whole seconds from {range}; leave it unset for the \
                 server's default ({}s)",
                limits.default_ttl_seconds
            ))),
        }
    }

    pub fn seconds(self) -> u32 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0.into())
    }
}

/// A Duration's nanos are below one second and have the sign of its seconds.
fn is_valid(d: &ProtoDuration) -> bool {
    d.nanos.unsigned_abs() < 1_000_000_000
        && (d.seconds == 0 || d.nanos == 0 || (d.seconds > 0) == (d.nanos > 0))
}

/// `d` as the JSON mapping writes it ("600s", "-1.5s"); an invalid one as its two fields.
/// Any value a client sends is shown without overflow.
fn shown(d: &ProtoDuration) -> String {
    if !is_valid(d) {
        return format!("{{seconds: {}, nanos: {}}}", d.seconds, d.nanos);
    }
    if d.nanos == 0 {
        return format!("{}s", d.seconds);
    }
    let sign = if d.seconds < 0 || d.nanos < 0 {
        "-"
    } else {
        ""
    };
    let fraction = format!("{:09}", d.nanos.unsigned_abs());
    let fraction = fraction.trim_end_matches('0');
    format!("{sign}{}.{fraction}s", d.seconds.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use icae_serving::{EncoderFlags, ServiceArgs};

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        service: ServiceArgs,
    }

    fn limits() -> EncoderLimits {
        let args = Command::parse_from(["encoder-svc", "--model", "m", "--adapter", "a"]);
        let flags = EncoderFlags {
            max_documents_per_request: 64,
            max_request_tokens: 65_536,
            max_refine_steps: 0,
            max_refine_tokens: 1,
        };
        EncoderLimits::from_args(&args.service, flags)
    }

    fn ttl(seconds: i64, nanos: i32) -> Result<u32, String> {
        SlotTtl::parse(Some(&ProtoDuration { seconds, nanos }), &limits())
            .map(SlotTtl::seconds)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn unset_is_the_default_and_whole_seconds_up_to_30_days_are_kept() {
        assert_eq!(SlotTtl::parse(None, &limits()).unwrap().seconds(), 3600);
        assert_eq!(ttl(1, 0), Ok(1));
        assert_eq!(ttl(2_592_000, 0), Ok(2_592_000));
        assert_eq!(
            SlotTtl::parse(Some(&ProtoDuration::default()), &limits()).map(SlotTtl::duration),
            Err(InputError::BadParameter {
                name: "ttl",
                value: "0s".into(),
                expected: "must be at least 1s, whole seconds from 1s to 2592000s (30 days); \
                           leave it unset for the server's default (3600s)"
                    .into(),
            })
        );
    }

    #[test]
    fn refusals_name_the_field_the_value_and_the_limit() {
        let over = ttl(2_592_001, 0).unwrap_err();
        assert_eq!(over, "ttl is 2592001s, must be at most 2592000s (30 days)");
        let huge = ttl(i64::MAX, 0).unwrap_err();
        assert!(huge.contains(&i64::MAX.to_string()) && huge.contains("2592000s"));
        let lowest = ttl(i64::MIN, 0).unwrap_err();
        assert!(lowest.contains(&i64::MIN.to_string()), "{lowest}");
        let negative = ttl(-5, 0).unwrap_err();
        assert!(
            negative.starts_with("ttl is -5s, must be at least 1s"),
            "{negative}"
        );
        let fraction = ttl(60, 500_000_000).unwrap_err();
        assert_eq!(
            fraction,
            "ttl is 60.5s, must be whole seconds (nanos 0), 1s to 2592000s (30 days)"
        );
        let tiny = ttl(0, 1).unwrap_err();
        assert!(
            tiny.starts_with("ttl is 0.000000001s, must be whole"),
            "{tiny}"
        );
        let invalid = ttl(5, -1).unwrap_err();
        assert!(invalid.contains("{seconds: 5, nanos: -1}"), "{invalid}");
        assert!(ttl(0, 1_000_000_000).unwrap_err().contains("not a valid"));
        assert_eq!(
            ttl(-1, -500_000_000).unwrap_err(),
            "ttl is -1.5s, must be whole seconds (nanos 0), 1s to 2592000s (30 days)"
        );
    }
}
