//! Test-time refinement through the real encoder: refined slots under their own key with a
//! fidelity score the in-process CLI agrees with, cache hits, the target loss, plain scores,
//! every refusal with its limit, fewer slots per segment under their own key, a plain
//! Compress served between the steps of a long refinement, and a refinement abandoned by
//! its client stopping at its next step.

use std::time::Duration;

use icae_client::compress_one;
use icae_proto::v1::{CompressOptions, CompressResponse, InfoRequest, Mode, SlotHandle};
use integration_tests::*;
use tonic::{Code, Status};

const TEXT: &str = "The Franco-Korean Friendship Association was founded in 2005. Its president, \
a senior civil servant in the French Senate, was arrested on suspicion of spying.";

async fn compress_with(
    url: &str,
    text: &str,
    options: CompressOptions,
) -> Result<CompressResponse, Status> {
    encoder(url)
        .await
        .compress(compress_one(text, options))
        .await
        .map(|r| r.into_inner())
}

fn refining(steps: u32) -> CompressOptions {
    CompressOptions {
        refine_steps: steps,
        return_slots: true,
        ..Default::default()
    }
}

fn handle(response: &CompressResponse) -> SlotHandle {
    response.documents[0].handle.clone().unwrap()
}

/// The f32 data of a slot value (safetensors: an 8-byte header length, the JSON header,
/// then the data).
fn f32_slots(value: &[u8]) -> Vec<f32> {
    let header_len = u64::from_le_bytes(value[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&value[8..8 + header_len]).unwrap();
    assert_eq!(header["slots"]["dtype"], "F32");
    value[8 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// `icae compress` in-process with `flags`: its JSON summary and its slots.
fn cli_compress(dir: &std::path::Path, flags: &[&str]) -> (serde_json::Value, Vec<f32>) {
    let text_file = dir.join("doc.txt");
    std::fs::write(&text_file, TEXT).unwrap();
    let out = dir.join("doc.safetensors");
    let mut args = vec![
        "--text-file",
        text_file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    let summary = icae_on_model("compress", &args);
    (summary, f32_slots(&std::fs::read(&out).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn refined_slots_have_their_own_key_and_a_score_the_cli_agrees_with() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let url = encoder.url();

    let scored = CompressOptions {
        reconstruction_loss: true,
        ..Default::default()
    };
    let plain = handle(&compress_with(&url, TEXT, scored).await.unwrap());
    let plain_loss = plain
        .reconstruction_loss
        .expect("a plain score was asked for");
    assert_eq!(plain.refine_steps, 0);

    let response = compress_with(&url, TEXT, refining(5)).await.unwrap();
    let refined = handle(&response);
    assert_eq!(refined.key, format!("{}-r5", plain.key));
    assert_eq!(refined.refine_steps, 5);
    assert!(!refined.cache_hit);
    let loss = refined.reconstruction_loss.unwrap();
    assert!(
        loss < plain_loss,
        "refining did not lower the loss: {plain_loss} -> {loss}"
    );

    // The same refinement in-process: the same fidelity score, nearly the same slots (the
    // service merges LoRA into the weights, the CLI does not: rounding apart).
    let dir = tempfile::tempdir().unwrap();
    let (summary, cli_slots) = cli_compress(dir.path(), &["--refine-steps", "5"]);
    let served = f32_slots(&response.documents[0].slots);
    assert_eq!(served.len(), cli_slots.len());
    let scale = cli_slots.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = served
        .iter()
        .zip(&cli_slots)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-3 * scale,
        "served and CLI slots differ by {diff} (max {scale})"
    );
    let cli_loss = summary["reconstruction_loss"].as_f64().unwrap();
    assert!(
        (cli_loss - loss).abs() <= 1e-3 * cli_loss,
        "{cli_loss} vs {loss}"
    );

    // Again: a cache hit, same key, same score, no new work.
    let again = handle(&compress_with(&url, TEXT, refining(5)).await.unwrap());
    assert!(again.cache_hit);
    assert_eq!(
        (again.key.as_str(), again.reconstruction_loss),
        (refined.key.as_str(), Some(loss))
    );
    // The plain value is still there, under its own key, with its score.
    let plain_again = CompressOptions {
        reconstruction_loss: true,
        ..Default::default()
    };
    let plain_again = handle(&compress_with(&url, TEXT, plain_again).await.unwrap());
    assert!(plain_again.cache_hit && plain_again.key == plain.key);
    assert_eq!(plain_again.reconstruction_loss, Some(plain_loss));

    // A target the plain slots already meet: no step, and the key says what was asked.
    let target = CompressOptions {
        target_loss: Some(plain_loss + 1.0),
        ..refining(50)
    };
    let early = handle(&compress_with(&url, TEXT, target).await.unwrap());
    assert_eq!(early.refine_steps, 0);
    assert_eq!(
        early.key,
        format!("{}-r50-t{}", plain.key, plain_loss + 1.0)
    );

    // The decoder reads refined keys like any other.
    let generated = generate(
        &decoder.url(),
        from_keys(&[&refined.key], Mode::Autoencode, "", greedy(8)),
    )
    .await
    .unwrap();
    assert!(generated.finished());
}

#[tokio::test(flavor = "multi_thread")]
async fn refinement_requests_are_checked_against_their_limits() {
    let redis = Redis::start();
    let encoder = Service::start(
        Kind::Encoder,
        &redis.url(),
        &["--max-refine-steps", "20", "--max-refine-tokens", "16"],
    )
    .await;
    let url = encoder.url();
    let limits = integration_tests::encoder(&url)
        .await
        .info(InfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(
        (limits.max_refine_steps, limits.max_refine_tokens),
        (20, 16)
    );

    assert_status(
        compress_with(&url, "short", refining(21)).await,
        Code::InvalidArgument,
        &["refine_steps", "21", "limit is 20"],
    );
    let no_steps = CompressOptions {
        target_loss: Some(0.1),
        ..Default::default()
    };
    assert_status(
        compress_with(&url, "short", no_steps).await,
        Code::InvalidArgument,
        &["target_loss", "refine_steps > 0"],
    );
    for bad in [f64::NAN, -1.0, f64::INFINITY, 1e300] {
        let options = CompressOptions {
            target_loss: Some(bad),
            ..refining(5)
        };
        assert_status(
            compress_with(&url, "short", options).await,
            Code::InvalidArgument,
            &["target_loss", "from 0 to 100"],
        );
    }
    assert_status(
        compress_with(&url, TEXT, refining(5)).await,
        Code::InvalidArgument,
        &["tokens in all", "at most 16", "--max-refine-tokens"],
    );

    let off = Service::start(Kind::Encoder, &redis.url(), &["--max-refine-steps", "0"]).await;
    assert_status(
        compress_with(&off.url(), "short", refining(1)).await,
        Code::InvalidArgument,
        &["refine_steps", "off", "--max-refine-steps 0"],
    );
    let score = CompressOptions {
        reconstruction_loss: true,
        ..Default::default()
    };
    assert_status(
        compress_with(&off.url(), "short", score).await,
        Code::InvalidArgument,
        &["reconstruction_loss", "off"],
    );
    // Plain compression is unaffected.
    compress_with(&off.url(), "short", CompressOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_compress_runs_between_the_steps_of_a_long_refinement() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let url = encoder.url();
    let long = tokio::spawn({
        let url = url.clone();
        async move { compress_with(&url, &TEXT.repeat(3), refining(200)).await }
    });
    let info = || async {
        integration_tests::encoder(&url)
            .await
            .info(InfoRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    let running = eventually(Duration::from_secs(60), || async {
        info().await.active_sequences > 0
    })
    .await;
    assert!(running, "the refinement never started");
    // 200 steps take minutes; a plain compression waits for one of them at most.
    let plain = compress_with(
        &url,
        "A short note about the weather.",
        CompressOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(handle(&plain).refine_steps, 0);
    assert!(
        !long.is_finished(),
        "the refinement finished first: nothing was shown"
    );

    // Its client goes away: the refinement stops at its next step.
    long.abort();
    let _ = long.await;
    let stopped = eventually(Duration::from_secs(60), || async {
        info().await.active_sequences == 0
    })
    .await;
    assert!(stopped, "the abandoned refinement kept the model busy");
}

#[tokio::test(flavor = "multi_thread")]
async fn fewer_slots_per_segment_are_a_value_of_their_own_that_the_decoder_reads() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let url = encoder.url();
    let at = |slots_per_segment: u32| CompressOptions {
        slots_per_segment,
        return_slots: true,
        ..Default::default()
    };

    let plain_response = compress_with(&url, TEXT, at(0)).await.unwrap();
    let plain = handle(&plain_response);
    let mem_size = plain.num_slots / plain.num_segments;
    let sparse_response = compress_with(&url, TEXT, at(8)).await.unwrap();
    let sparse = handle(&sparse_response);
    assert_eq!(sparse.key, format!("{}-s8", plain.key));
    assert_eq!(
        (sparse.num_slots, sparse.num_segments),
        (8 * plain.num_segments, plain.num_segments)
    );
    assert!(!sparse.cache_hit);
    // One segment here: its 8 slots are the first 8 of the plain value's.
    assert_eq!(plain.num_segments, 1);
    let full = f32_slots(&plain_response.documents[0].slots);
    let first = f32_slots(&sparse_response.documents[0].slots);
    let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = first
        .iter()
        .zip(&full[..first.len()])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-4 * scale, "{diff} of {scale}");

    // Asking for the adapter's own count is the plain value.
    let same = handle(&compress_with(&url, TEXT, at(mem_size)).await.unwrap());
    assert!(same.cache_hit && same.key == plain.key);

    // Refined at that rate: its own key again, scored, and a cache hit the second time.
    let refined_at = || CompressOptions {
        slots_per_segment: 8,
        ..refining(3)
    };
    let refined = handle(&compress_with(&url, TEXT, refined_at()).await.unwrap());
    assert_eq!(refined.key, format!("{}-s8-r3", plain.key));
    assert_eq!((refined.num_slots, refined.refine_steps), (8, 3));
    assert!(refined.reconstruction_loss.is_some());
    let again = handle(&compress_with(&url, TEXT, refined_at()).await.unwrap());
    assert!(again.cache_hit && again.key == refined.key);

    for key in [&sparse.key, &refined.key] {
        let generated = generate(
            &decoder.url(),
            from_keys(&[key], Mode::Autoencode, "", greedy(8)),
        )
        .await
        .unwrap();
        assert!(generated.finished(), "{key}");
    }

    assert_status(
        compress_with(&url, TEXT, at(mem_size + 1)).await,
        Code::InvalidArgument,
        &[
            "slots_per_segment",
            &(mem_size + 1).to_string(),
            &format!("1..={mem_size}"),
        ],
    );
}
