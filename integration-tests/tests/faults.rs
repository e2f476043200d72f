//! Faults: expiry, a decoder with another adapter, Redis going away and coming back.

use std::time::{Duration, SystemTime};

use icae_proto::v1::Mode;
use integration_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn keys_expire_after_their_ttl() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let before = SystemTime::now();
    let response = compress(&encoder.url(), "This key lives one second.", 1)
        .await
        .unwrap();
    let after = SystemTime::now();
    let handle = response.documents[0].handle.clone().unwrap();
    // expire_time is the time the slots were stored plus the TTL.
    let expire_time = icae_proto::time::system_time(&handle.expire_time.unwrap()).unwrap();
    let second = Duration::from_secs(1);
    assert!(
        before + second <= expire_time && expire_time <= after + second,
        "{expire_time:?} is not within 1s of {before:?}..{after:?}"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(&handle.key)
        .query(&mut redis.connection())
        .unwrap();
    assert!((0..=1).contains(&ttl), "TTL {ttl}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let result = generate(
        &decoder.url(),
        from_keys(&[&handle.key], Mode::Continue, "", greedy(2)),
    )
    .await;
    assert_status(result, Code::NotFound, &[handle.key.as_str(), "expired"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decoder_with_another_adapter_refuses_the_slots() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-adapter");
    icae_json_ok(&[
        "adapter",
        "init",
        "--model",
        model_dir().to_str().unwrap(),
        "--mem-size",
        "32",
        "--seed",
        "1",
        other.to_str().unwrap(),
    ]);
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start_with_adapter(Kind::Decoder, &redis.url(), &other, &[]).await;
    let response = compress(&encoder.url(), "Made by one adapter, read by another.", 0)
        .await
        .unwrap();
    let handle = response.documents[0].handle.clone().unwrap();
    let theirs = decoder_info(&decoder.url()).await.model_fingerprint;
    assert_ne!(theirs, handle.model_fingerprint);
    let result = generate(
        &decoder.url(),
        from_keys(&[&handle.key], Mode::Continue, "", greedy(2)),
    )
    .await;
    assert_status(
        result,
        Code::FailedPrecondition,
        &[handle.model_fingerprint.as_str(), theirs.as_str()],
    );
}

fn icae_json_ok(args: &[&str]) {
    let status = our_command("icae").args(args).output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_request_after_a_redis_restart_succeeds() {
    let mut redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let key = compress_key(&encoder.url(), "Stored before the restart.").await;
    let url = decoder.url();
    let read = || generate(&url, from_keys(&[&key], Mode::Continue, "", greedy(2)));
    assert!(read().await.is_ok());

    // Both services' connections break with the restart; no request sees it happen.
    redis.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let key_after = compress_key(&encoder.url(), "Stored before the restart.").await;
    assert_eq!(key_after, key, "the same document, the same key");
    let generated = read().await;
    assert!(generated.is_ok(), "{:?}", generated.err());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_is_unavailable_and_both_services_recover() {
    let mut redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let key = compress_key(&encoder.url(), "Stored before the outage.").await;
    assert!(generate(
        &decoder.url(),
        from_keys(&[&key], Mode::Continue, "", greedy(2))
    )
    .await
    .is_ok());

    redis.kill();
    assert_status(
        compress(&encoder.url(), "During the outage.", 0).await,
        Code::Unavailable,
        &["Redis"],
    );
    assert_status(
        generate(
            &decoder.url(),
            from_keys(&[&key], Mode::Continue, "", greedy(2)),
        )
        .await,
        Code::Unavailable,
        &["Redis"],
    );
    assert_eq!(
        encoder.health("").await,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving),
        "no crash"
    );

    redis.restart();
    // Nothing was persisted: compress again, then generate, without restarting anything.
    let recovered = eventually(Duration::from_secs(15), || async {
        compress(&encoder.url(), "After the outage.", 0)
            .await
            .is_ok()
    })
    .await;
    assert!(recovered, "encoder did not recover:\n{}", encoder.logs());
    let key = compress_key(&encoder.url(), "After the outage.").await;
    let ok = eventually(Duration::from_secs(15), || async {
        generate(
            &decoder.url(),
            from_keys(&[&key], Mode::Continue, "", greedy(2)),
        )
        .await
        .is_ok()
    })
    .await;
    assert!(ok, "decoder did not recover:\n{}", decoder.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cluster_round_trip() {
    let cluster = RedisCluster::start();
    let encoder = Service::start(Kind::Encoder, &cluster.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &cluster.url(), &[]).await;
    let mut keys = Vec::new();
    for i in 0..6 {
        keys.push(
            compress_key(
                &encoder.url(),
                &format!("Document number {i} stored in a Redis Cluster."),
            )
            .await,
        );
    }
    // The keys spread over the nodes, and every one is readable through the cluster client.
    let holders: std::collections::HashSet<u16> = keys
        .iter()
        .map(|key| {
            cluster
                .nodes
                .iter()
                .find(|n| {
                    redis::cmd("EXISTS")
                        .arg(key)
                        .query::<i64>(&mut n.connection())
                        .unwrap_or(0)
                        == 1
                })
                .map(|n| n.port)
                .expect("each key lives on one node")
        })
        .collect();
    assert!(holders.len() > 1, "all keys landed on one node");
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let result = generate(
        &decoder.url(),
        from_keys(&refs[..2], Mode::Continue, "", greedy(3)),
    )
    .await
    .unwrap();
    assert!(result.finished() && result.token_ids.len() == 3);
    let again = compress(
        &encoder.url(),
        "Document number 0 stored in a Redis Cluster.",
        0,
    )
    .await
    .unwrap();
    assert!(again.documents[0].handle.as_ref().unwrap().cache_hit);
}
