//! `--slot-dtype bf16`: an encoder stores BF16 slot values, half the data bytes of the f32
//! default, under the same key; a value of the other slot dtype is recomputed, not a cache
//! hit; the decoder (an f32 model) serves bf16 values exactly as the CLI decodes the same
//! bytes.

use icae_proto::v1::Mode;
use integration_tests::*;

const TEXT: &str =
    "The Franco-Korean Friendship Association was founded in 2005. Its president, a senior civil \
servant in the French Senate, was arrested on Monday on suspicion of spying for North Korea.";

/// The stored value and what its safetensors header says of tensor `slots`: dtype, shape.
fn stored(redis: &Redis, key: &str) -> (Vec<u8>, String, Vec<u64>) {
    let value: Vec<u8> = redis::cmd("GET")
        .arg(key)
        .query(&mut redis.connection())
        .unwrap();
    let header_len = u64::from_le_bytes(value[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&value[8..8 + header_len]).unwrap();
    let slots = &header["slots"];
    let shape = slots["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    (value, slots["dtype"].as_str().unwrap().to_string(), shape)
}

async fn compress_handle(url: &str) -> icae_proto::v1::SlotHandle {
    let response = compress(url, TEXT, 0).await.unwrap();
    response.documents[0].handle.clone().unwrap()
}

fn cli_autoencode(slots: &std::path::Path, max_new: u32) -> Vec<u64> {
    let max_new = max_new.to_string();
    let output = icae_on_model(
        "generate",
        &[
            "--slots",
            slots.to_str().unwrap(),
            "--mode",
            "autoencode",
            "--greedy",
            "--max-new-tokens",
            &max_new,
        ],
    );
    output["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bf16_slot_values_are_half_the_size_and_decode_like_the_cli() {
    let redis = Redis::start();
    let f32_encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let bf16_encoder = Service::start(Kind::Encoder, &redis.url(), &["--slot-dtype", "bf16"]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;

    let info = encoder(&bf16_encoder.url())
        .await
        .info(icae_proto::v1::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.dtype.as_str(), info.slot_dtype.as_str()),
        ("f32", "bf16")
    );
    assert_eq!(decoder_info(&decoder.url()).await.slot_dtype, "");

    let first = compress_handle(&f32_encoder.url()).await;
    let (f32_value, dtype, shape) = stored(&redis, &first.key);
    assert_eq!((dtype.as_str(), shape.clone()), ("F32", vec![32, 576]));

    // Same document, same model: same key. The f32 value is not what this encoder stores,
    // so it is recomputed in bf16 and overwritten, and then it is a hit.
    let second = compress_handle(&bf16_encoder.url()).await;
    assert_eq!(second.key, first.key);
    assert!(
        !second.cache_hit,
        "a value of the other slot dtype is not a hit"
    );
    let (bf16_value, dtype, bf16_shape) = stored(&redis, &second.key);
    assert_eq!((dtype.as_str(), bf16_shape), ("BF16", shape));
    let data_bytes = 32 * 576 * 2;
    assert_eq!(f32_value.len() - bf16_value.len(), data_bytes);
    assert!(
        bf16_value.len() * 100 < f32_value.len() * 55,
        "about half the bytes"
    );
    assert!(compress_handle(&bf16_encoder.url()).await.cache_hit);

    // The decoder widens the bf16 slots into its f32 model exactly as the CLI does.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bf16.safetensors");
    std::fs::write(&file, &bf16_value).unwrap();
    let served = generate(
        &decoder.url(),
        from_keys(&[&second.key], Mode::Autoencode, "", greedy(24)),
    )
    .await
    .unwrap();
    assert!(served.finished());
    let served: Vec<u64> = served.token_ids.iter().map(|&t| t as u64).collect();
    assert!(!served.is_empty());
    assert_eq!(served, cli_autoencode(&file, 24));
}
