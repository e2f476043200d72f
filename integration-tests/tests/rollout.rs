//! A rolling restart under load loses no call: two replicas of each service, clients that
//! use both in turn with no retry policy (icae-client's `Replicas` as a gRPC round_robin
//! client: a call that never reached a server goes to the other replica, nothing else is
//! sent again), steady Compress and Generate load from several tasks, and one replica of
//! each service stopped with SIGTERM in the middle of it while a long stream runs on the
//! stopped decoder. A replica killed outright loses no Compress for a client that retries.

use std::sync::Arc;
use std::time::Duration;

use icae_client::{decoder_replicas, encoder_replicas, ConnectOptions, RetryPolicy};
use icae_proto::v1::Mode;
use integration_tests::load::{compress_load, generate_load, CallLog};
use integration_tests::*;

/// Tasks sending calls all along, for each service.
const LOAD_TASKS: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_load_fails_no_call() {
    let redis = Redis::start();
    let grace = ["--shutdown-grace-seconds", "600"];
    let mut encoders = vec![
        Service::start(Kind::Encoder, &redis.url(), &grace).await,
        Service::start(Kind::Encoder, &redis.url(), &grace).await,
    ];
    let mut decoders = vec![
        Service::start(Kind::Decoder, &redis.url(), &grace).await,
        Service::start(Kind::Decoder, &redis.url(), &grace).await,
    ];
    let urls = |services: &[Service]| services.iter().map(Service::url).collect::<Vec<_>>();
    let options = ConnectOptions::default();
    let policy = RetryPolicy::none();
    let encoder_pool = Arc::new(encoder_replicas(&urls(&encoders), &options, policy).unwrap());
    let decoder_pool = Arc::new(decoder_replicas(&urls(&decoders), &options, policy).unwrap());
    let key = compress_key(&encoders[1].url(), "A document read back again and again.").await;

    // A long stream on the decoder that will be stopped.
    let long = tokio::spawn({
        let url = decoders[0].url();
        let key = key.clone();
        async move { generate(&url, from_keys(&[&key], Mode::Continue, "", greedy(60))).await }
    });
    let started = eventually(Duration::from_secs(60), || async {
        decoder_info(&decoders[0].url()).await.active_sequences > 0
    })
    .await;
    assert!(started, "the long stream never started");

    let log = CallLog::new();
    let mut load = compress_load(&encoder_pool, &log, LOAD_TASKS);
    load.extend(generate_load(&decoder_pool, &key, &log, LOAD_TASKS));
    assert!(log.reaches(10).await, "the load made no progress");

    // The rollout: one replica of each service is told to stop, mid-load.
    encoders[0].sigterm();
    decoders[0].sigterm();
    for service in [&mut encoders[0], &mut decoders[0]] {
        let status = service
            .wait_exit(Duration::from_secs(300))
            .await
            .expect("a stopped replica did not exit");
        assert!(status.success(), "exit {status}:\n{}", service.logs());
    }
    // Calls go on after the replicas are gone: those that still pick them go to the others.
    let after = log.calls().len() + 2 * LOAD_TASKS * 3;
    assert!(
        log.reaches(after).await,
        "the load stopped after the rollout"
    );
    log.stop();
    for task in load {
        task.await.unwrap();
    }

    let generated = long.await.unwrap().expect("the long stream failed");
    assert!(generated.finished(), "the long stream was cut off");
    let (calls, errors) = (log.calls().len(), log.errors());
    assert!(
        errors.is_empty(),
        "{} of {calls} calls failed: {errors:?}",
        errors.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_under_load_fails_no_compress() {
    let redis = Redis::start();
    let encoders = [
        Service::start(Kind::Encoder, &redis.url(), &[]).await,
        Service::start(Kind::Encoder, &redis.url(), &[]).await,
    ];
    let urls: Vec<String> = encoders.iter().map(Service::url).collect();
    let pool = Arc::new(
        encoder_replicas(&urls, &ConnectOptions::default(), RetryPolicy::default()).unwrap(),
    );
    let log = CallLog::new();
    let load = compress_load(&pool, &log, LOAD_TASKS);
    assert!(log.reaches(10).await, "the load made no progress");
    // No drain: the process is gone at once, with calls in flight on it.
    unsafe { libc::kill(encoders[0].pid(), libc::SIGKILL) };
    let after = log.calls().len() + 4 * LOAD_TASKS;
    assert!(log.reaches(after).await, "the load stopped after the kill");
    log.stop();
    for task in load {
        task.await.unwrap();
    }
    let errors = log.errors();
    assert!(errors.is_empty(), "{errors:?}");
}
