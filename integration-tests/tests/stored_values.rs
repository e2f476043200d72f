//! Stored slot values are verified where they are read, not trusted for a header that looks
//! right: another document's value under a key, data that does not match the header's
//! checksum, and an oversized header are DATA_LOSS in the decoder and recomputed by the
//! next Compress of the document.

use icae_client::compress_one;
use icae_proto::v1::{CompressOptions, Mode};
use integration_tests::*;
use tonic::Code;

const TEXT_A: &str = "A small bird watched the last train leave the quiet village.";
const TEXT_B: &str = "The harbour crane counted seven red boxes on the morning pier.";

/// Compress `text` (slots returned too) and say whether it was a cache hit.
async fn cache_hit(url: &str, text: &str) -> bool {
    let options = CompressOptions {
        return_slots: true,
        ..Default::default()
    };
    let response = encoder(url)
        .await
        .compress(compress_one(text, options))
        .await
        .unwrap()
        .into_inner();
    response.documents[0].handle.as_ref().unwrap().cache_hit
}

/// `value` with its header's metadata given an extra field of `pad` bytes.
fn with_padded_header(value: &[u8], pad: usize) -> Vec<u8> {
    let header_len = u64::from_le_bytes(value[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&value[8..8 + header_len]).unwrap();
    header["__metadata__"]["padding"] = serde_json::Value::String("x".repeat(pad));
    let header = serde_json::to_vec(&header).unwrap();
    let mut padded = (header.len() as u64).to_le_bytes().to_vec();
    padded.extend_from_slice(&header);
    padded.extend_from_slice(&value[8 + header_len..]);
    padded
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_values_are_verified_and_repaired() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let (encoder_url, url) = (encoder.url(), decoder.url());
    let key_a = compress_key(&encoder_url, TEXT_A).await;
    let key_b = compress_key(&encoder_url, TEXT_B).await;
    let mut conn = redis.connection();
    let get = |conn: &mut redis::Connection, key: &str| -> Vec<u8> {
        redis::cmd("GET").arg(key).query(conn).unwrap()
    };
    let set = |conn: &mut redis::Connection, key: &str, value: &[u8]| {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query::<()>(conn)
            .unwrap()
    };
    let read_a = || generate(&url, from_keys(&[&key_a], Mode::Autoencode, "", greedy(4)));
    let value_a = get(&mut conn, &key_a);
    assert!(read_a().await.is_ok());

    // Another document's valid value under A's key.
    let value_b = get(&mut conn, &key_b);
    set(&mut conn, &key_a, &value_b);
    assert_status(
        read_a().await,
        Code::DataLoss,
        &[&key_a, "another document"],
    );
    assert!(
        !cache_hit(&encoder_url, TEXT_A).await,
        "B's value served as A's"
    );
    assert!(read_a().await.is_ok(), "not repaired");

    // A genuine header over data it does not describe (one element made NaN).
    let mut nan = value_a.clone();
    let at = nan.len() - 4;
    nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    set(&mut conn, &key_a, &nan);
    assert_status(read_a().await, Code::DataLoss, &[&key_a, "checksum"]);
    assert!(
        !cache_hit(&encoder_url, TEXT_A).await,
        "NaN data reported as a hit"
    );
    assert!(read_a().await.is_ok(), "not repaired");

    // A valid value whose header carries 300 KB more metadata.
    set(&mut conn, &key_a, &with_padded_header(&value_a, 300_000));
    assert_status(read_a().await, Code::DataLoss, &[&key_a, "65536"]);
    assert!(
        !cache_hit(&encoder_url, TEXT_A).await,
        "an oversized header reported as a hit"
    );
    assert!(read_a().await.is_ok(), "not repaired");
    assert!(
        cache_hit(&encoder_url, TEXT_A).await,
        "the repaired value is not a hit"
    );
}
