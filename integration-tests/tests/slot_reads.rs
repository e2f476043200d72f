//! The decoder reads slot values by their headers first: a request whose slots cannot fit
//! the context is refused before their data leaves Redis, a key named several times is read
//! once, and the bytes read at once are bounded (`--max-slot-read-mib`).

use icae_proto::v1::Mode;
use integration_tests::*;
use tonic::Code;

/// Bytes Redis has sent to its clients so far.
fn sent_by_redis(conn: &mut redis::Connection) -> u64 {
    info_number(conn, "stats", "total_net_output_bytes")
}

#[tokio::test(flavor = "multi_thread")]
async fn slot_values_are_sized_by_their_headers_before_their_data_is_read() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &["--max-slot-read-mib", "1"]).await;
    let url = decoder.url();
    let info = decoder_info(&url).await;
    let limits = info.limits.unwrap();
    assert_eq!(limits.max_slot_read_bytes, 1024 * 1024);
    let hidden = info.hidden_size as usize;

    let key = compress_key(&encoder.url(), "The harbour crane lifted seven red boxes.").await;
    let digest_at = key.len() - 64;
    let fingerprint = key[..digest_at - 1].rsplit(':').next().unwrap();
    let mut conn = redis.connection();
    let value_len: usize = redis::cmd("STRLEN").arg(&key).query(&mut conn).unwrap();

    // A value of 8,192 slots (the whole context), named 16 times: refused from one header.
    let huge = format!("{}{}", &key[..digest_at], "4".repeat(64));
    let huge_value = slot_value(fingerprint, 8192, hidden);
    let _: () = redis::cmd("SET")
        .arg(&huge)
        .arg(&huge_value)
        .query(&mut conn)
        .unwrap();
    let before = sent_by_redis(&mut conn);
    let sixteen = vec![huge.as_str(); 16];
    let refused = generate(&url, from_keys(&sixteen, Mode::Continue, "", greedy(4))).await;
    let sent = sent_by_redis(&mut conn) - before;
    assert_status(
        refused,
        Code::InvalidArgument,
        &["131072 slots", "limit is 8192"],
    );
    assert!(
        sent < 64 * 1024,
        "{sent} bytes left Redis to refuse a request by its headers (one value is {} bytes)",
        huge_value.len()
    );

    // Slots that fit the context but not the read budget: refused, naming the flag.
    let large = format!("{}{}", &key[..digest_at], "5".repeat(64));
    let large_value = slot_value(fingerprint, 600, hidden);
    assert!(large_value.len() > 1024 * 1024);
    let _: () = redis::cmd("SET")
        .arg(&large)
        .arg(&large_value)
        .query(&mut conn)
        .unwrap();
    let before = sent_by_redis(&mut conn);
    let refused = generate(&url, from_keys(&[&large], Mode::Continue, "", greedy(4))).await;
    let sent = sent_by_redis(&mut conn) - before;
    let bytes = large_value.len().to_string();
    assert_status(
        refused,
        Code::ResourceExhausted,
        &[bytes.as_str(), "1048576", "--max-slot-read-mib"],
    );
    assert!(
        sent < 64 * 1024,
        "{sent} bytes left Redis for a refused read"
    );

    // A key named three times is read once, and its slots reach the model three times.
    let before = sent_by_redis(&mut conn);
    let generated = generate(
        &url,
        from_keys(&[&key, &key, &key], Mode::Continue, "", greedy(2)),
    )
    .await
    .unwrap();
    let sent = sent_by_redis(&mut conn) - before;
    let positions = generated.completed().unwrap().prompt_positions as usize;
    assert!((3 * 32..=3 * 32 + 1).contains(&positions), "{positions}");
    assert!(
        sent < 2 * value_len as u64,
        "{sent} bytes left Redis for one value of {value_len} bytes named three times"
    );
}
