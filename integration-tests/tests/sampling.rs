//! Sampling parameters through the real services: a temperature too small to divide by
//! decodes greedily (it used to overflow 1/T and pick the least likely token).

use icae_proto::v1::{Mode, Sampling};
use integration_tests::*;

const DOC: &str = "Tiny temperatures concentrate every bit of probability on the most likely \
token, so they must give exactly what greedy decoding gives.";

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_temperature_with_a_seed_gives_the_greedy_output() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let key = compress_key(&encoder.url(), DOC).await;
    let request = |sampling| from_keys(&[&key], Mode::Autoencode, "", sampling);

    let greedy_out = generate(&decoder.url(), request(greedy(16))).await.unwrap();
    assert_eq!(greedy_out.token_ids.len(), 16);
    for temperature in [1e-38f32, 1e-20, 1e-6] {
        let tiny = Sampling {
            temperature,
            seed: 1234,
            ..greedy(16)
        };
        let out = generate(&decoder.url(), request(tiny)).await.unwrap();
        assert_eq!(
            out.token_ids, greedy_out.token_ids,
            "temperature {temperature}"
        );
        assert_eq!(out.text, greedy_out.text, "temperature {temperature}");
    }
}
