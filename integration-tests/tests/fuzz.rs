//! A bounded fuzz run against the live services: random (often invalid) Compress and
//! Generate requests. Every one must get an answer in time with a deliberate status — no
//! panic (INTERNAL/UNKNOWN), no hang — and the services must stay healthy.

use std::time::Duration;

use icae_proto::v1::{
    document, generate_request, slot_ref, CompressOptions, CompressRequest, Document,
    GenerateRequest, Sampling, SlotList, SlotRef, TokenIds,
};
use integration_tests::*;
use tonic::{Code, Status};

const REQUESTS_PER_SERVICE: usize = 60;
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// xorshift64*: deterministic, so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn text(&mut self, max_len: u64) -> String {
        let pieces = [
            "the ",
            "cat ",
            "é",
            "😀",
            "\n",
            " ",
            "\0",
            "<|im_end|>",
            "1234",
            "\u{202e}",
        ];
        let len = self.below(max_len + 1);
        (0..len).map(|_| *self.pick(&pieces)).collect()
    }

    fn bytes(&mut self, max_len: u64) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn float(&mut self) -> f32 {
        *self.pick(&[
            0.0,
            -1.0,
            1e-38,
            1e-45,
            0.7,
            1.0,
            2.0,
            1e30,
            f32::NAN,
            f32::INFINITY,
            f32::MIN_POSITIVE,
        ])
    }
}

fn random_compress(rng: &mut Rng) -> CompressRequest {
    let documents = (0..rng.below(5))
        .map(|_| Document {
            content: match rng.below(4) {
                0 => None,
                1 => Some(document::Content::TokenIds(TokenIds {
                    ids: (0..rng.below(40))
                        .map(|_| *rng.pick(&[0, 1, 2, 500, 49_151, 49_152, u32::MAX]))
                        .collect(),
                })),
                _ => Some(document::Content::Text(rng.text(60))),
            },
        })
        .collect();
    let options = rng.chance(4).then(|| CompressOptions {
        ttl: rng.chance(2).then(|| icae_proto::time::Duration {
            seconds: *rng.pick(&[0, 1, 60, -1, 2_592_001, i64::MAX, i64::MIN]),
            nanos: *rng.pick(&[0, 0, 1, -1, 999_999_999, 1_000_000_000]),
        }),
        namespace: rng.pick(&["", "ns", "a:b", "tenant/x", "ü"]).to_string(),
        return_slots: rng.chance(2),
        refine_steps: *rng.pick(&[0, 0, 0, 1, 201, u32::MAX]),
        target_loss: rng
            .chance(3)
            .then(|| *rng.pick(&[0.0, 0.5, -1.0, f64::NAN, f64::INFINITY])),
        reconstruction_loss: rng.chance(4),
        slots_per_segment: *rng.pick(&[0, 0, 1, 16, 32, 33, u32::MAX]),
    });
    CompressRequest { documents, options }
}

fn random_generate(rng: &mut Rng, keys: &[String], value: &[u8]) -> GenerateRequest {
    let context = match rng.below(4) {
        0 => None,
        1 => Some(generate_request::Context::BaselineText(rng.text(80))),
        _ => Some(generate_request::Context::Slots(SlotList {
            items: (0..rng.below(4))
                .map(|_| SlotRef {
                    source: match rng.below(5) {
                        0 => None,
                        1 => Some(slot_ref::Source::Key(rng.pick(keys).clone())),
                        2 => Some(slot_ref::Source::Key(rng.text(30))),
                        3 => {
                            let cut = rng.below(value.len() as u64 + 1) as usize;
                            Some(slot_ref::Source::InlineSlots(value[..cut].to_vec()))
                        }
                        _ => Some(slot_ref::Source::InlineSlots(rng.bytes(64))),
                    },
                })
                .collect(),
        })),
    };
    let sampling = rng.chance(5).then(|| Sampling {
        max_new_tokens: *rng.pick(&[0, 1, 4, 8, 9, u32::MAX]),
        temperature: rng.float(),
        top_k: *rng.pick(&[0, 1, 5, u32::MAX]),
        top_p: rng.float(),
        seed: rng.next(),
        stop: (0..rng.below(3)).map(|_| rng.text(5)).collect(),
    });
    GenerateRequest {
        context,
        mode: rng.below(6) as i32 - 1,
        prompt: rng.text(20),
        sampling,
    }
}

/// A deliberate answer: OK or a documented error code, never a panic's.
fn check(what: &str, result: Result<(), Status>) {
    if let Err(status) = result {
        assert!(
            !matches!(status.code(), Code::Internal | Code::Unknown),
            "{what}: {:?} {}",
            status.code(),
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_requests_get_deliberate_answers_and_leave_the_services_healthy() {
    let redis = Redis::start();
    let limits = ["--max-input-tokens", "256", "--max-new-tokens", "8"];
    let encoder = Service::start(Kind::Encoder, &redis.url(), &limits).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &limits).await;
    let returned = CompressOptions {
        return_slots: true,
        ..Default::default()
    };
    let valid = integration_tests::encoder(&encoder.url())
        .await
        .compress(CompressRequest {
            documents: vec![text_doc("A valid document to start from.")],
            options: Some(returned),
        })
        .await
        .unwrap()
        .into_inner();
    let key = valid.documents[0].handle.as_ref().unwrap().key.clone();
    let keys = vec![
        key.clone(),
        key.replace("icae:v1", "icae:v2"),
        format!("{}0", &key[..key.len() - 1]),
    ];
    let value = valid.documents[0].slots.clone();

    let seed = 0x1CAE_5EED;
    let mut rng = Rng(seed);
    let mut enc = integration_tests::encoder(&encoder.url()).await;
    let mut dec = integration_tests::decoder(&decoder.url()).await;
    for n in 0..REQUESTS_PER_SERVICE {
        let request = random_compress(&mut rng);
        let what = format!("seed {seed:#x}, compress {n}: {request:?}");
        let answer = tokio::time::timeout(ANSWER_WITHIN, enc.compress(request))
            .await
            .unwrap_or_else(|_| panic!("no answer within {ANSWER_WITHIN:?}: {what}"));
        check(&what, answer.map(|_| ()));

        let request = random_generate(&mut rng, &keys, &value);
        let what = format!("seed {seed:#x}, generate {n}: {request:?}");
        let answer = tokio::time::timeout(ANSWER_WITHIN, icae_client::generate(&mut dec, request))
            .await
            .unwrap_or_else(|_| panic!("no answer within {ANSWER_WITHIN:?}: {what}"));
        check(&what, answer.map(|_| ()));
    }

    let services = [
        (&encoder, icae_proto::ENCODER_SERVICE),
        (&decoder, icae_proto::DECODER_SERVICE),
    ];
    for (service, name) in services {
        assert_eq!(
            service.health(name).await,
            Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
        );
        assert!(!service.logs().contains("panicked"), "{}", service.logs());
    }
    // Still fully working after the run.
    let generated = generate(
        &decoder.url(),
        from_keys(&[&key], icae_proto::v1::Mode::Continue, "", greedy(4)),
    )
    .await
    .unwrap();
    assert!(!generated.token_ids.is_empty());
}
