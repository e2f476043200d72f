//! Slot values and Redis counters the tests build and read by hand.

/// A slot value (safetensors, written out by hand) of `rows` x `width` f32 zeros made by
/// the model `fingerprint`.
pub fn slot_value(fingerprint: &str, rows: usize, width: usize) -> Vec<u8> {
    let data_len = rows * width * 4;
    let mut header = format!(
        r#"{{"__metadata__":{{"format":"pt","icae_format_version":"1","fingerprint":"{fingerprint}","num_tokens":"4","num_segments":"1","created_at":"1"}},"slots":{{"dtype":"F32","shape":[{rows},{width}],"data_offsets":[0,{data_len}]}}}}"#
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut value = (header.len() as u64).to_le_bytes().to_vec();
    value.extend_from_slice(header.as_bytes());
    value.resize(value.len() + data_len, 0);
    value
}

/// A field of Redis `INFO <section>` as a number.
pub fn info_number(conn: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
