//! compress → generate over gRPC gives exactly what the in-process CLI gives, and a second
//! compress of the same text is a cache hit with the same key.

use std::time::{SystemTime, UNIX_EPOCH};

use icae_proto::time::Timestamp;
use icae_proto::v1::{GenerateRequest, Mode};
use integration_tests::*;

const TEXT: &str = "The Franco-Korean Friendship Association was founded in 2005. Its president, a senior civil \
servant in the French Senate, was arrested on Monday on suspicion of spying for North Korea. Prosecutors said \
the investigation began in March.";

fn cli_tokens(slot_files: &[&str], mode: &str, prompt: Option<&str>, max_new: u32) -> Vec<u64> {
    let max_new = max_new.to_string();
    let mut args = vec!["--mode", mode, "--greedy", "--max-new-tokens", &max_new];
    for f in slot_files {
        args.extend(["--slots", f]);
    }
    if let Some(p) = prompt {
        args.extend(["--prompt", p]);
    }
    icae_on_model("generate", &args)["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn cli_compress(text: &str, dir: &std::path::Path, name: &str) -> String {
    let text_file = dir.join(format!("{name}.txt"));
    std::fs::write(&text_file, text).unwrap();
    let out = dir.join(format!("{name}.safetensors"));
    icae_on_model(
        "compress",
        &[
            "--text-file",
            text_file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    out.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_round_trip_matches_the_cli_and_caches() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;

    let first = compress(&encoder.url(), TEXT, 0).await.unwrap();
    let handle = first.documents[0].handle.clone().unwrap();
    assert!(!handle.cache_hit);
    assert_eq!(handle.num_slots, 32);
    assert!(handle
        .key
        .starts_with(&format!("icae:v1:{}:", handle.model_fingerprint)));
    let second = compress(&encoder.url(), TEXT, 0).await.unwrap();
    let again = second.documents[0].handle.clone().unwrap();
    assert!(again.cache_hit, "the same text must be a cache hit");
    assert_eq!(again.key, handle.key);
    assert_eq!(again.num_tokens, handle.num_tokens);

    let dir = tempfile::tempdir().unwrap();
    let slots = cli_compress(TEXT, dir.path(), "doc");
    let ae = generate(
        &decoder.url(),
        from_keys(&[&handle.key], Mode::Autoencode, "", greedy(24)),
    )
    .await
    .unwrap();
    assert!(ae.finished());
    let ae_ids: Vec<u64> = ae.token_ids.iter().map(|&t| t as u64).collect();
    assert_eq!(ae_ids, cli_tokens(&[&slots], "autoencode", None, 24));

    let question = "Who was arrested?";
    let answer = generate(
        &decoder.url(),
        from_keys(&[&handle.key], Mode::Answer, question, greedy(16)),
    )
    .await
    .unwrap();
    let answer_ids: Vec<u64> = answer.token_ids.iter().map(|&t| t as u64).collect();
    assert_eq!(
        answer_ids,
        cli_tokens(&[&slots], "answer", Some(question), 16)
    );

    // Multi-span: two slot sets in order, the same through both paths.
    let other_text =
        "A second, unrelated paragraph about the weather in Lyon: rain all week, 12 degrees.";
    let other_key = compress_key(&encoder.url(), other_text).await;
    let other_slots = cli_compress(other_text, dir.path(), "other");
    let multi = generate(
        &decoder.url(),
        from_keys(&[&handle.key, &other_key], Mode::Continue, "", greedy(12)),
    )
    .await
    .unwrap();
    let multi_ids: Vec<u64> = multi.token_ids.iter().map(|&t| t as u64).collect();
    assert_eq!(
        multi_ids,
        cli_tokens(&[&slots, &other_slots], "continue", None, 12)
    );

    // GenerateOnce gives what the stream gives.
    let request: GenerateRequest = from_keys(&[&handle.key], Mode::Autoencode, "", greedy(24));
    let once = integration_tests::decoder(&decoder.url())
        .await
        .generate_once(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(once.token_ids, ae.token_ids);
    assert_eq!(once.text, ae.text);
    assert_eq!(once.prompt_positions, 33);
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_client_talks_to_the_services() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let (enc, dec) = (encoder.url(), decoder.url());

    let before = unix_seconds();
    let handle = icae_json(&[
        "client",
        "compress",
        "--encoder",
        &enc,
        "--text",
        TEXT,
        "--ttl-seconds",
        "600",
        "--json",
    ]);
    let after = unix_seconds();
    let key = handle["key"].as_str().unwrap().to_string();
    assert_eq!(handle["cache_hit"], false);
    assert_eq!(handle["num_slots"], 32);
    // expire_time is RFC 3339 (UTC), the time the slots were stored plus the TTL.
    let expire_time: Timestamp = handle["expire_time"].as_str().unwrap().parse().unwrap();
    assert!(
        (before + 600..=after + 600).contains(&expire_time.seconds),
        "{handle}"
    );
    assert!(handle["expire_time"].as_str().unwrap().ends_with('Z'));
    let limits = &icae_json(&["client", "info", "--encoder", &enc])["limits"];
    assert_eq!(limits["default_ttl_seconds"], 3600);
    assert_eq!(limits["max_ttl_seconds"], 2_592_000);

    let via_cli = icae_json(&[
        "client",
        "generate",
        "--decoder",
        &dec,
        "--key",
        &key,
        "--mode",
        "autoencode",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    let via_grpc = generate(&dec, from_keys(&[&key], Mode::Autoencode, "", greedy(8)))
        .await
        .unwrap();
    let ids: Vec<u32> = via_cli["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, via_grpc.token_ids);
    assert_eq!(via_cli["text"].as_str().unwrap(), via_grpc.text);

    let answer = icae_json(&[
        "client",
        "ask",
        "--encoder",
        &enc,
        "--decoder",
        &dec,
        "--text",
        TEXT,
        "--prompt",
        "Who was arrested?",
        "--max-new-tokens",
        "6",
        "--json",
    ]);
    assert!(answer["token_ids"].as_array().unwrap().len() <= 6);
    assert!(["eos", "length", "stop"].contains(&answer["finish_reason"].as_str().unwrap()));

    let info = icae_json(&["client", "info", "--decoder", &dec]);
    assert_eq!(
        info["model_fingerprint"].as_str().unwrap(),
        handle["model_fingerprint"].as_str().unwrap()
    );
    assert_eq!(info["service"], "icae.v1.DecoderService");

    // Errors come back as one line naming the status code.
    let missing = format!("{}{}", &key[..key.len() - 64], "0".repeat(64));
    let output = std::process::Command::new(bin("icae"))
        .args([
            "client",
            "generate",
            "--decoder",
            &dec,
            "--key",
            &missing,
            "--mode",
            "continue",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("NotFound") && stderr.contains(&missing),
        "{stderr}"
    );
}
