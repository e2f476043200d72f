//! The keys of one request cost one Redis round trip: a Compress of N documents reads all N
//! keys in one pipeline and writes all new values in another; a Generate from N keys reads
//! them in one. Counted on both sides: the services' `icae_redis_op_duration_seconds_count`
//! (one sample per round trip) and Redis's own `total_reads_processed` (read events on its
//! sockets: N separate commands each waiting for its reply would be N events). Within one
//! request, hits, misses, unusable values and errors are each handled as when read one by
//! one, on a standalone Redis and on a Cluster (where keys spread over the hash slots).

use icae_proto::v1::{CompressOptions, CompressRequest, CompressResponse, Mode, SlotHandle};
use integration_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn documents(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Pipelining test document {i}: a short note about topic number {i}."))
        .collect()
}

async fn compress_all(url: &str, texts: &[String]) -> CompressResponse {
    let request = CompressRequest {
        documents: texts.iter().map(text_doc).collect(),
        options: Some(CompressOptions::default()),
    };
    encoder(url)
        .await
        .compress(request)
        .await
        .unwrap()
        .into_inner()
}

fn handles(response: &CompressResponse) -> Vec<SlotHandle> {
    response
        .documents
        .iter()
        .map(|d| d.handle.clone().unwrap())
        .collect()
}

/// The value of the first sample of `name` whose labels include `label` (0 when absent).
async fn metric(port: u16, name: &str, label: &str) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or(0.0)
}

/// Round trips a service made, by op, from its duration histogram.
async fn round_trips(port: u16, op: &str) -> f64 {
    let label = format!("op=\"{op}\"");
    metric(port, "icae_redis_op_duration_seconds_count", &label).await
}

/// Calls of one command so far (`INFO commandstats`).
fn calls(conn: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_keys_of_one_request_cost_one_round_trip() {
    let redis = Redis::start();
    let (encoder_metrics, decoder_metrics) = (free_port(), free_port());
    let encoder = Service::start(
        Kind::Encoder,
        &redis.url(),
        &["--metrics-port", &encoder_metrics.to_string()],
    )
    .await;
    let decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &["--metrics-port", &decoder_metrics.to_string()],
    )
    .await;
    let mut conn = redis.connection();
    let texts = documents(16);

    // 16 new documents: one read round trip, one write round trip of 16 SETs with TTLs.
    let first = handles(&compress_all(&encoder.url(), &texts).await);
    assert!(first.iter().all(|h| !h.cache_hit));
    assert_eq!(round_trips(encoder_metrics, "getex").await, 1.0);
    assert_eq!(round_trips(encoder_metrics, "set").await, 1.0);
    assert_eq!(calls(&mut conn, "set"), 16);
    for handle in &first {
        let ttl: i64 = redis::cmd("TTL").arg(&handle.key).query(&mut conn).unwrap();
        assert!(ttl > 0, "{} has no expiry", handle.key);
    }
    let stored_len = |conn: &mut redis::Connection, key: &str| {
        redis::cmd("GET")
            .arg(key)
            .query::<Vec<u8>>(conn)
            .unwrap()
            .len()
    };
    let value_len = stored_len(&mut conn, &first[0].key);

    // Mixed in one request: hits, garbage (3), another Redis type (5), a missing key (7)
    // and a new document (16). Each is judged on its own; only the four are computed.
    redis::cmd("SET")
        .arg(&first[3].key)
        .arg("junk")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("DEL")
        .arg(&first[5].key)
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("RPUSH")
        .arg(&first[5].key)
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("DEL")
        .arg(&first[7].key)
        .query::<()>(&mut conn)
        .unwrap();
    let texts = documents(17);
    let (getex_before, sets_before) = (calls(&mut conn, "getex"), calls(&mut conn, "set"));
    let mixed = handles(&compress_all(&encoder.url(), &texts).await);
    for (i, handle) in mixed.iter().enumerate() {
        let expected_hit = ![3, 5, 7, 16].contains(&i);
        assert_eq!(handle.cache_hit, expected_hit, "document {i}");
        if i < 16 {
            assert_eq!(handle.key, first[i].key, "document {i}");
            assert_eq!(handle.num_tokens, first[i].num_tokens, "document {i}");
        }
        assert_eq!(
            stored_len(&mut conn, &handle.key),
            value_len,
            "document {i}"
        );
    }
    assert_eq!(calls(&mut conn, "getex") - getex_before, 17);
    assert_eq!(calls(&mut conn, "set") - sets_before, 4);
    assert_eq!(round_trips(encoder_metrics, "getex").await, 2.0);
    assert_eq!(round_trips(encoder_metrics, "set").await, 2.0);
    for reason in ["undecodable", "wrongtype"] {
        let label = format!("reason=\"{reason}\"");
        let repairs = metric(encoder_metrics, "icae_cache_repairs_total", &label).await;
        assert_eq!(repairs, 1.0, "{reason}");
    }

    // All hits: Redis sees the 17 lookups arrive together, not one per reply.
    let reads_before = info_number(&mut conn, "stats", "total_reads_processed");
    let hits = handles(&compress_all(&encoder.url(), &texts).await);
    let reads = info_number(&mut conn, "stats", "total_reads_processed") - reads_before;
    assert!(hits.iter().all(|h| h.cache_hit));
    // One read event for the pipeline, one for this INFO, one of slack for a split packet.
    assert!(reads <= 3, "{reads} read events for 17 lookups");
    assert_eq!(round_trips(encoder_metrics, "getex").await, 3.0);
    assert_eq!(round_trips(encoder_metrics, "set").await, 2.0);

    // Generate from 8 keys: one round trip for their headers, one for their data.
    let keys: Vec<&str> = hits[..8].iter().map(|h| h.key.as_str()).collect();
    let reads_before = info_number(&mut conn, "stats", "total_reads_processed");
    let generated = generate(
        &decoder.url(),
        from_keys(&keys, Mode::Continue, "", greedy(2)),
    )
    .await
    .unwrap();
    let reads = info_number(&mut conn, "stats", "total_reads_processed") - reads_before;
    assert!(generated.finished());
    // All 8 slot sets reached the model (32 slots each, perhaps one special token after).
    let positions = generated.completed().unwrap().prompt_positions;
    assert!((256..=257).contains(&positions), "{positions}");
    // Two read events for the two pipelines, one for this INFO, one of slack.
    assert!(reads <= 4, "{reads} read events for 8 keys");
    assert_eq!(round_trips(decoder_metrics, "get_header").await, 1.0);
    assert_eq!(round_trips(decoder_metrics, "get").await, 1.0);

    // Errors are those of the first failing slot set in order, though read together.
    let missing = format!("{}{}", &keys[1][..keys[1].len() - 64], "0".repeat(64));
    let list_key = hits[9].key.clone();
    redis::cmd("DEL")
        .arg(&list_key)
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("RPUSH")
        .arg(&list_key)
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    let wrong_type_first = generate(
        &decoder.url(),
        from_keys(
            &[keys[0], list_key.as_str(), missing.as_str()],
            Mode::Continue,
            "",
            greedy(2),
        ),
    )
    .await;
    assert_status(wrong_type_first, Code::DataLoss, &[&list_key]);
    let missing_first = generate(
        &decoder.url(),
        from_keys(
            &[keys[0], missing.as_str(), list_key.as_str()],
            Mode::Continue,
            "",
            greedy(2),
        ),
    )
    .await;
    assert_status(missing_first, Code::NotFound, &[&missing]);
    // Both refused from their headers: no data read.
    assert_eq!(round_trips(decoder_metrics, "get_header").await, 3.0);
    assert_eq!(round_trips(decoder_metrics, "get").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_serves_many_keys_per_request_across_hash_slots() {
    let cluster = RedisCluster::start();
    let encoder = Service::start(Kind::Encoder, &cluster.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &cluster.url(), &[]).await;
    let texts = documents(8);

    let some = handles(&compress_all(&encoder.url(), &texts[..3]).await);
    let all = handles(&compress_all(&encoder.url(), &texts).await);
    for (i, handle) in all.iter().enumerate() {
        assert_eq!(handle.cache_hit, i < 3, "document {i}");
    }
    assert_eq!(
        some.iter().map(|h| &h.key).collect::<Vec<_>>(),
        all[..3].iter().map(|h| &h.key).collect::<Vec<_>>()
    );
    assert!(handles(&compress_all(&encoder.url(), &texts).await)
        .iter()
        .all(|h| h.cache_hit));

    let keys: Vec<&str> = all.iter().map(|h| h.key.as_str()).collect();
    let generated = generate(
        &decoder.url(),
        from_keys(&keys, Mode::Continue, "", greedy(2)),
    )
    .await
    .unwrap();
    assert!(generated.finished());
    let missing = format!("{}{}", &keys[1][..keys[1].len() - 64], "0".repeat(64));
    let refused = generate(
        &decoder.url(),
        from_keys(
            &[keys[0], missing.as_str(), keys[2]],
            Mode::Continue,
            "",
            greedy(2),
        ),
    )
    .await;
    assert_status(refused, Code::NotFound, &[&missing]);
}
