//! Bounded work per request through the real gRPC surface: abandoned compressions stop,
//! oversized input is refused by size before any work, the shutdown grace period is
//! enforced, the encoder's cache verifies what it reads, Redis errors get truthful codes.

use std::time::{Duration, Instant};

use icae_proto::v1::{
    generate_request, CompressOptions, CompressRequest, GenerateRequest, InfoRequest, Mode,
    Sampling,
};
use integration_tests::*;
use tonic::Code;

/// The tests here measure time: one at a time, so they do not slow each other down.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Varied English sentences: about 11 tokens each.
fn long_text(sentences: usize) -> String {
    let subjects = [
        "The river",
        "A small bird",
        "Our old teacher",
        "The harbour crane",
    ];
    let verbs = ["watched", "carried", "painted", "counted"];
    let objects = [
        "the morning fog",
        "seven red boxes",
        "a quiet village",
        "the last train",
    ];
    (0..sentences)
        .map(|i| {
            format!(
                "{} {} {} on day {i}. ",
                subjects[i % 4],
                verbs[(i / 4) % 4],
                objects[(i / 16) % 4]
            )
        })
        .collect()
}

fn compress_request(text: String, options: CompressOptions) -> CompressRequest {
    CompressRequest {
        documents: vec![text_doc(&text)],
        options: Some(options),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_compression_frees_the_encoder() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let url = encoder.url();
    // One model call: 16 segments of 128 tokens (~11 tokens per sentence).
    let started = Instant::now();
    compress(&url, &long_text(186), 0).await.unwrap();
    let one_call = started.elapsed();
    // ~13,000 tokens: about 100 segments, tens of seconds of model time on a small CPU.
    let mut big = tonic::Request::new(compress_request(long_text(1200), Default::default()));
    big.metadata_mut()
        .insert("grpc-timeout", "1500m".parse().unwrap());
    let abandoned = integration_tests::encoder(&url).await.compress(big).await;
    // The server's deadline and the client's own timer expire together: either ends it.
    let code = abandoned.expect_err("a 1.5 s deadline").code();
    assert!(
        matches!(code, Code::DeadlineExceeded | Code::Cancelled),
        "{code:?}"
    );

    let started = Instant::now();
    let tiny = compress(&url, "A tiny document.", 0).await.unwrap();
    let waited = started.elapsed();
    // The big document's remaining segments are skipped at the next model call, not
    // computed to the end (about 6 more calls).
    assert!(
        waited < one_call * 2 + Duration::from_secs(2),
        "the next request waited {waited:?} behind an abandoned one (one model call: \
         {one_call:?})"
    );
    assert!(!tiny.documents[0].handle.as_ref().unwrap().cache_hit);
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 2, "the abandoned document was stored: {keys:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_texts_are_refused_by_size_before_tokenizing() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let rss_before = encoder.rss_kib();
    let huge = "lorem ipsum dolor sit amet ".repeat(60_000_000 / 27);

    let started = Instant::now();
    let refused = compress(&encoder.url(), &huge, 0).await;
    let took = started.elapsed();
    // More than any Compress may hold (65,536 tokens x 16 bytes, and framing for 64
    // documents): refused before it is decoded.
    assert_status(refused, Code::ResourceExhausted, &["60000", "1179648"]);
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    // One text over its own limit (32,768 tokens x 16 bytes), in a request that is not.
    let long = "lorem ipsum dolor sit amet ".repeat(600_000 / 27);
    assert_status(
        compress(&encoder.url(), &long, 0).await,
        Code::InvalidArgument,
        &["document 0", "599994 bytes", "at most 524288 bytes"],
    );
    let grown_mib = encoder.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 400, "RSS grew by {grown_mib} MiB");

    let baseline = GenerateRequest {
        context: Some(generate_request::Context::BaselineText(huge.clone())),
        mode: Mode::Continue as i32,
        prompt: String::new(),
        sampling: Some(greedy(4)),
    };
    let started = Instant::now();
    assert_status(
        generate(&decoder.url(), baseline).await,
        Code::InvalidArgument,
        &["baseline_text", "59999994 bytes", "at most 524288 bytes"],
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let key = compress_key(&encoder.url(), "A short document.").await;
    let long_prompt = "why ".repeat(20_000);
    assert_status(
        generate(
            &decoder.url(),
            from_keys(&[&key], Mode::Answer, &long_prompt, greedy(4)),
        )
        .await,
        Code::InvalidArgument,
        &["prompt", "80000 bytes", "at most 65536 bytes"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_tokens_and_response_size_are_checked_before_any_work() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let encoder = Service::start(
        Kind::Encoder,
        &redis.url(),
        &[
            "--max-request-tokens",
            "300",
            "--max-message-bytes",
            "200000",
        ],
    )
    .await;
    let mut client = integration_tests::encoder(&encoder.url()).await;
    let two = CompressRequest {
        documents: vec![text_doc(long_text(15)), text_doc(long_text(16))],
        options: Some(Default::default()),
    };
    assert_status(
        client.compress(two).await,
        Code::InvalidArgument,
        &[
            "tokens in all",
            "at most 300 tokens",
            "--max-request-tokens",
        ],
    );
    // ~250 tokens -> 2 segments x 32 slots x 576 x 4 bytes = 147 KiB + overhead per
    // document; two such documents exceed 200,000 bytes.
    let returned = CompressOptions {
        return_slots: true,
        ..Default::default()
    };
    let two_returned = CompressRequest {
        documents: vec![text_doc(long_text(12)), text_doc(long_text(11))],
        options: Some(returned.clone()),
    };
    let started = Instant::now();
    assert_status(
        client.compress(two_returned).await,
        Code::InvalidArgument,
        &["return_slots", "--max-message-bytes 200000", "handles only"],
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut conn = redis.connection();
    let stored: u64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(stored, 0, "refused requests must not compute and store");
    // One fits, and the returned copy does not carry the storing request's trace context.
    let mut one = tonic::Request::new(compress_request(long_text(12), returned));
    one.metadata_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    let response = client.compress(one).await.unwrap().into_inner();
    let value = &response.documents[0].slots;
    assert!(!value.is_empty());
    assert!(
        !String::from_utf8_lossy(value).contains("traceparent"),
        "the returned slots carry the trace context"
    );
    // Info names the model and adapter, not where they lie on the server.
    let info = client.info(InfoRequest {}).await.unwrap().into_inner();
    assert!(
        !info.model.is_empty() && !info.model.contains('/'),
        "{}",
        info.model
    );
    assert!(!info.adapter.contains('/'), "{}", info.adapter);
    let limits = info.limits.unwrap();
    assert_eq!(limits.max_request_tokens, 300);
    assert_eq!(limits.max_input_bytes, 32_768 * 16);
}

/// Writes something unusable under a key, straight into Redis.
type Poison<'a> = dyn Fn(&mut redis::Connection) + 'a;

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_verifies_what_it_reads_and_repairs_it() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let url = encoder.url();
    let (doc_a, doc_b) = (
        "The first document, about apples.",
        "The second one, about pears.",
    );
    let handle = |r: &icae_proto::v1::CompressResponse| r.documents[0].handle.clone().unwrap();
    let key_a = handle(&compress(&url, doc_a, 0).await.unwrap()).key;
    let key_b = handle(&compress(&url, doc_b, 0).await.unwrap()).key;
    assert!(handle(&compress(&url, doc_a, 0).await.unwrap()).cache_hit);
    let mut conn = redis.connection();
    let value_a: Vec<u8> = redis::cmd("GET").arg(&key_a).query(&mut conn).unwrap();
    let value_b: Vec<u8> = redis::cmd("GET").arg(&key_b).query(&mut conn).unwrap();

    // Another document's slots under A's key, then another Redis type, then garbage:
    // each is recomputed and overwritten, never reported as a hit.
    let poison: Vec<Box<Poison<'_>>> = vec![
        Box::new(|c| {
            redis::cmd("SET")
                .arg(&key_a)
                .arg(&value_b)
                .query::<()>(c)
                .unwrap()
        }),
        Box::new(|c| {
            redis::cmd("DEL").arg(&key_a).query::<()>(c).unwrap();
            redis::cmd("RPUSH")
                .arg(&key_a)
                .arg("x")
                .query::<()>(c)
                .unwrap();
        }),
        Box::new(|c| {
            redis::cmd("SET")
                .arg(&key_a)
                .arg("junk")
                .query::<()>(c)
                .unwrap()
        }),
    ];
    for (n, poison) in poison.iter().enumerate() {
        poison(&mut conn);
        let repaired = handle(&compress(&url, doc_a, 0).await.unwrap());
        assert!(
            !repaired.cache_hit,
            "poison {n} was reported as a cache hit"
        );
        let value: Vec<u8> = redis::cmd("GET").arg(&key_a).query(&mut conn).unwrap();
        assert_eq!(value.len(), value_a.len(), "poison {n} was not overwritten");
        assert!(handle(&compress(&url, doc_a, 0).await.unwrap()).cache_hit);
    }
    // Another model's slots (fingerprint rewritten in the header) are not a hit either.
    let fingerprint = key_a.split(':').nth(2).unwrap().to_string();
    let at = value_a
        .windows(fingerprint.len())
        .position(|w| w == fingerprint.as_bytes())
        .expect("the fingerprint is in the header");
    let mut other = value_a.clone();
    other[at..at + fingerprint.len()].fill(b'f');
    redis::cmd("SET")
        .arg(&key_a)
        .arg(&other)
        .query::<()>(&mut conn)
        .unwrap();
    assert!(!handle(&compress(&url, doc_a, 0).await.unwrap()).cache_hit);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_out_of_memory_is_refused_before_computing() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let mut conn = redis.connection();
    let filler = vec![b'x'; 64 * 1024];
    for i in 0.. {
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("fill:{i}"))
            .arg(&filler)
            .query(&mut conn);
        if set.is_err() {
            break;
        }
    }
    let started = Instant::now();
    let refused = compress(&encoder.url(), &long_text(300), 0).await;
    assert_status(
        refused,
        Code::ResourceExhausted,
        &["out of memory", "maxmemory"],
    );
    // ~3,300 tokens would take seconds of model time: it was never computed.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shutdown_grace_period_is_enforced() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let mut encoder = Service::start(
        Kind::Encoder,
        &redis.url(),
        &["--shutdown-grace-seconds", "2"],
    )
    .await;
    let mut decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &["--shutdown-grace-seconds", "2"],
    )
    .await;
    let key = compress_key(&encoder.url(), "A document to talk about at length.").await;
    // Sampling at a high temperature: an end-of-sequence token is very unlikely early.
    let sampling = Sampling {
        temperature: 5.0,
        seed: 7,
        ..greedy(1000)
    };
    let mut stream = integration_tests::decoder(&decoder.url())
        .await
        .generate(from_keys(&[&key], Mode::Continue, "", sampling))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let mut encoder_client = integration_tests::encoder(&encoder.url()).await;
    let big = tokio::spawn(async move {
        encoder_client
            .compress(compress_request(long_text(1200), Default::default()))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    encoder.sigterm();
    decoder.sigterm();
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream finished instead of being cut off"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("grace period of 2s"),
        "{}",
        status.message()
    );
    assert_status(
        big.await.unwrap(),
        Code::Unavailable,
        &["grace period of 2s"],
    );
    for service in [&mut encoder, &mut decoder] {
        let exit = service.wait_exit(Duration::from_secs(15)).await;
        assert_eq!(exit.and_then(|e| e.code()), Some(0), "{}", service.logs());
        // The model thread is stopped, not torn down under the process's exit.
        assert!(!service.logs().contains("panicked"), "{}", service.logs());
    }
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
}
