//! Values read from gRPC request metadata.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// A `grpc-timeout` header's value: the client's deadline (`<digits><unit>`, unit one of
/// H M S m u n).
pub fn grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The W3C `traceparent` header, when it has the right shape.
pub fn traceparent(metadata: &MetadataMap) -> Option<String> {
    let value = metadata.get("traceparent")?.to_str().ok()?;
    let parts: Vec<&str> = value.split('-').collect();
    let well_formed = parts.len() == 4
        && [2usize, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, p)| p.len() == *len && p.chars().all(|c| c.is_ascii_hexdigit()));
    well_formed.then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("2X"), None);
    }

    #[test]
    fn traceparent_shape_is_checked() {
        let mut m = MetadataMap::new();
        m.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        assert!(traceparent(&m).is_some());
        m.insert("traceparent", "garbage".parse().unwrap());
        assert!(traceparent(&m).is_none());
    }
}
