//! Every documented error through the real gRPC surface, with its status code and a
//! message that names the problem (and the limit and the value given).

use icae_proto::v1::{
    document, generate_request, slot_ref, CompressOptions, CompressRequest, Document,
    GenerateRequest, Mode, Sampling, SlotList, SlotRef, TokenIds,
};
use integration_tests::*;
use tonic::Code;
use tonic_types::StatusExt;

fn request(documents: Vec<Document>, options: CompressOptions) -> CompressRequest {
    CompressRequest {
        documents,
        options: Some(options),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn encoder_errors() {
    let redis = Redis::start();
    let encoder = Service::start(
        Kind::Encoder,
        &redis.url(),
        &[
            "--max-input-tokens",
            "64",
            "--max-documents-per-request",
            "3",
            "--max-request-tokens",
            "8192",
            "--max-message-bytes",
            "1048576",
        ],
    )
    .await;
    let mut client = integration_tests::encoder(&encoder.url()).await;
    let opts = CompressOptions::default;
    let limits = client
        .info(icae_proto::v1::InfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    // A Compress may hold 8,192 tokens: texts at 16 bytes a token and framing, well under
    // the message limit.
    let request_limit = limits.max_request_bytes;
    assert!(
        (8192 * 16..1048576).contains(&request_limit),
        "{request_limit}"
    );
    // The TTLs a request may ask for, as Durations: the default and the 30-day bound.
    assert_eq!(
        (limits.default_ttl, limits.max_ttl),
        (
            Some(icae_proto::time::seconds(3600)),
            Some(icae_proto::time::seconds(2_592_000))
        )
    );

    assert_status(
        client.compress(request(vec![text_doc("")], opts())).await,
        Code::InvalidArgument,
        &["text is empty"],
    );
    assert_status(
        client
            .compress(request(vec![text_doc("  \n ")], opts()))
            .await,
        Code::InvalidArgument,
        &["text is empty"],
    );
    assert_status(
        client
            .compress(request(vec![text_doc("\u{200B}\u{FEFF} \u{200B}")], opts()))
            .await,
        Code::InvalidArgument,
        &["text is empty"],
    );
    // A message over the request limit: RESOURCE_EXHAUSTED, as gRPC documents message
    // size limits, with the size and the limit. Token ids are refused so before they are
    // decoded (into 4-byte integers: several times their wire size).
    let too_many_ids = Document {
        content: Some(document::Content::TokenIds(TokenIds {
            ids: vec![1000; 150_000],
        })),
    };
    for oversize in [
        request(vec![text_doc("x".repeat(2 << 20))], opts()),
        request(vec![too_many_ids], opts()),
    ] {
        let bytes = prost::Message::encode_to_vec(&oversize);
        let (code, message) =
            raw_call(&encoder.url(), "/icae.v1.EncoderService/Compress", &bytes).await;
        assert_eq!(code, Code::ResourceExhausted, "{message}");
        assert!(message.contains(&request_limit.to_string()), "{message}");
        assert!(message.contains(&(bytes.len()).to_string()), "{message}");
    }
    // Bytes that are not a CompressRequest: the sender's fault.
    let (code, message) = raw_call(
        &encoder.url(),
        "/icae.v1.EncoderService/Compress",
        &[0x0a, 0xff, 0xff],
    )
    .await;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("protobuf"), "{message}");
    assert_status(
        client.compress(request(vec![], opts())).await,
        Code::InvalidArgument,
        &["0 documents", "1..=3"],
    );
    let four = vec![text_doc("a"), text_doc("b"), text_doc("c"), text_doc("d")];
    assert_status(
        client.compress(request(four, opts())).await,
        Code::InvalidArgument,
        &["4 documents", "1..=3"],
    );
    let long = "word ".repeat(200);
    assert_status(
        client
            .compress(request(vec![text_doc("fine"), text_doc(&long)], opts()))
            .await,
        Code::InvalidArgument,
        &["document 1", "201 tokens", "limit is 64"],
    );
    let bad_ids = Document {
        content: Some(document::Content::TokenIds(TokenIds {
            ids: vec![5, 49152],
        })),
    };
    assert_status(
        client.compress(request(vec![bad_ids], opts())).await,
        Code::InvalidArgument,
        &["49152", "49152 tokens"],
    );
    let with_ttl = |seconds, nanos| CompressOptions {
        ttl: Some(icae_proto::time::Duration { seconds, nanos }),
        ..Default::default()
    };
    let refused = client
        .compress(request(vec![text_doc("x")], with_ttl(99_999_999, 0)))
        .await;
    // The field at fault also comes as a google.rpc.BadRequest, with no advice to retry.
    let details = refused.as_ref().unwrap_err().get_error_details();
    let violation = &details.bad_request().expect("BadRequest").field_violations[0];
    assert_eq!(violation.field, "ttl");
    assert!(details.retry_info().is_none());
    assert_status(
        refused,
        Code::InvalidArgument,
        &["ttl is 99999999s", "at most 2592000s (30 days)"],
    );
    // One second over 30 days, a negative TTL, zero and a fraction of a second: each named
    // with its value and the limits.
    for (seconds, nanos, fragments) in [
        (
            2_592_001,
            0,
            ["ttl is 2592001s", "at most 2592000s", "30 days"],
        ),
        (-60, 0, ["ttl is -60s", "at least 1s", "1s to 2592000s"]),
        (0, 0, ["ttl is 0s", "at least 1s", "1s to 2592000s"]),
        (
            600,
            250_000_000,
            [
                "ttl is 600.25s",
                "whole seconds (nanos 0)",
                "1s to 2592000s",
            ],
        ),
        (0, 1, ["ttl is 0.000000001s", "whole seconds", "2592000s"]),
    ] {
        assert_status(
            client
                .compress(request(vec![text_doc("x")], with_ttl(seconds, nanos)))
                .await,
            Code::InvalidArgument,
            &fragments,
        );
    }
    let ns = CompressOptions {
        namespace: "bad namespace!".into(),
        ..Default::default()
    };
    assert_status(
        client.compress(request(vec![text_doc("x")], ns)).await,
        Code::InvalidArgument,
        &["namespace", "bad namespace!"],
    );
    // A huge namespace is refused with a bounded message (a whole echo would overflow the
    // client's metadata limit and arrive as RESOURCE_EXHAUSTED).
    let huge_ns = CompressOptions {
        namespace: "n".repeat(100_000),
        ..Default::default()
    };
    let result = client.compress(request(vec![text_doc("x")], huge_ns)).await;
    assert_status(
        result,
        Code::InvalidArgument,
        &["namespace", "(100000 bytes)"],
    );
    let missing = Document { content: None };
    assert_status(
        client.compress(request(vec![missing], opts())).await,
        Code::InvalidArgument,
        &["document 0", "empty"],
    );

    // Token ids work as input too, and give the key the same text gives.
    let ids = tokenize("hello there");
    let by_ids = Document {
        content: Some(document::Content::TokenIds(TokenIds { ids })),
    };
    let a = client
        .compress(request(vec![by_ids], opts()))
        .await
        .unwrap()
        .into_inner();
    let b = client
        .compress(request(vec![text_doc("hello there")], opts()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a.documents[0].handle.as_ref().unwrap().key,
        b.documents[0].handle.as_ref().unwrap().key
    );
    assert!(b.documents[0].handle.as_ref().unwrap().cache_hit);
}

#[tokio::test(flavor = "multi_thread")]
async fn decoder_errors() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &["--max-new-tokens", "64", "--max-spans", "2"],
    )
    .await;
    let key = compress_key(
        &encoder.url(),
        "A short document about nothing in particular.",
    )
    .await;
    let url = decoder.url();
    let sampled = |s: Sampling| from_keys(&[&key], Mode::Autoencode, "", s);

    let mut unknown_mode = from_keys(&[&key], Mode::Autoencode, "", greedy(4));
    unknown_mode.mode = 7;
    assert_status(
        generate(&url, unknown_mode).await,
        Code::InvalidArgument,
        &["mode is 7"],
    );
    assert_status(
        generate(&url, from_keys(&[&key], Mode::Unspecified, "", greedy(4))).await,
        Code::InvalidArgument,
        &["mode is 0"],
    );
    assert_status(
        generate(
            &url,
            sampled(Sampling {
                top_p: 1.5,
                ..greedy(4)
            }),
        )
        .await,
        Code::InvalidArgument,
        &["top_p is 1.5", "(0, 1]"],
    );
    assert_status(
        generate(
            &url,
            sampled(Sampling {
                temperature: -1.0,
                ..greedy(4)
            }),
        )
        .await,
        Code::InvalidArgument,
        &["temperature is -1"],
    );
    assert_status(
        generate(&url, sampled(greedy(65))).await,
        Code::InvalidArgument,
        &["max_new_tokens is 65", "1..=64"],
    );
    assert_status(
        generate(
            &url,
            sampled(Sampling {
                stop: vec!["".into()],
                ..greedy(4)
            }),
        )
        .await,
        Code::InvalidArgument,
        &["stop"],
    );
    assert_status(
        generate(&url, from_keys(&[&key], Mode::Answer, "", greedy(4))).await,
        Code::InvalidArgument,
        &["ANSWER needs a prompt"],
    );
    assert_status(
        generate(
            &url,
            from_keys(&[&key], Mode::Answer, "\u{200B}", greedy(4)),
        )
        .await,
        Code::InvalidArgument,
        &["ANSWER needs a prompt"],
    );
    assert_status(
        generate(
            &url,
            from_keys(&[&key, &key, &key], Mode::Continue, "", greedy(4)),
        )
        .await,
        Code::InvalidArgument,
        &["3 slot sets", "1..=2"],
    );
    let no_context = GenerateRequest {
        context: None,
        mode: Mode::Continue as i32,
        prompt: String::new(),
        sampling: Some(greedy(4)),
    };
    assert_status(
        generate(&url, no_context).await,
        Code::InvalidArgument,
        &["context"],
    );

    // Keys of our schema only; a missing one is NOT_FOUND, naming it.
    let digest_at = key.len() - 64;
    let missing = format!("{}{}", &key[..digest_at], "0".repeat(64));
    let not_found = generate(&url, from_keys(&[&missing], Mode::Continue, "", greedy(4))).await;
    // A stable reason and the key, as a google.rpc.ErrorInfo: compress the text again.
    let details = not_found.as_ref().unwrap_err().get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("SLOT_KEY_NOT_FOUND", "icae.v1")
    );
    assert_eq!(info.metadata["key"], missing);
    assert_status(not_found, Code::NotFound, &[missing.as_str()]);
    let mut conn = redis.connection();
    let _: () = redis::cmd("SET")
        .arg("user:42")
        .arg("a value of someone else")
        .query(&mut conn)
        .unwrap();
    let huge = "k".repeat(100_000);
    for foreign in ["user:42", "icae:v1:nope", huge.as_str()] {
        let result = generate(&url, from_keys(&[foreign], Mode::Continue, "", greedy(4))).await;
        let message = result
            .as_ref()
            .err()
            .map(|s| s.message().len())
            .unwrap_or(0);
        assert!(message < 1024, "the key is echoed whole: {message} bytes");
        assert_status(result, Code::InvalidArgument, &["an ICAE slot key"]);
    }

    // Stored data that cannot be used is DATA_LOSS, naming the key: garbage, an empty
    // safetensors blob, another Redis type, slots of another width.
    let garbage = format!("{}{}", &key[..digest_at], "1".repeat(64));
    let _: () = redis::cmd("SET")
        .arg(&garbage)
        .arg(b"\x07not safetensors at all".as_slice())
        .query(&mut conn)
        .unwrap();
    assert_status(
        generate(&url, from_keys(&[&garbage], Mode::Continue, "", greedy(4))).await,
        Code::DataLoss,
        &[garbage.as_str()],
    );
    let hash = format!("{}{}", &key[..digest_at], "2".repeat(64));
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg("field")
        .arg("value")
        .query(&mut conn)
        .unwrap();
    assert_status(
        generate(&url, from_keys(&[&hash], Mode::Continue, "", greedy(4))).await,
        Code::DataLoss,
        &[hash.as_str(), "another Redis type"],
    );
    let narrow = format!("{}{}", &key[..digest_at], "3".repeat(64));
    let fingerprint = key[..digest_at - 1].rsplit(':').next().unwrap();
    let _: () = redis::cmd("SET")
        .arg(&narrow)
        .arg(slot_value(fingerprint, 4, 7))
        .query(&mut conn)
        .unwrap();
    assert_status(
        generate(&url, from_keys(&[&narrow], Mode::Continue, "", greedy(4))).await,
        Code::DataLoss,
        &[narrow.as_str(), "[4, 7]"],
    );
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(b"{}".as_slice())
        .query(&mut conn)
        .unwrap();
    assert_status(
        generate(&url, from_keys(&[&key], Mode::Continue, "", greedy(4))).await,
        Code::DataLoss,
        &[key.as_str()],
    );

    // Inline slots that cannot be used are the client's error: INVALID_ARGUMENT.
    let inline = |value: Vec<u8>| GenerateRequest {
        context: Some(generate_request::Context::Slots(SlotList {
            items: vec![SlotRef {
                source: Some(slot_ref::Source::InlineSlots(value)),
            }],
        })),
        mode: Mode::Continue as i32,
        prompt: String::new(),
        sampling: Some(greedy(4)),
    };
    assert_status(
        generate(&url, inline(vec![1, 2, 3])).await,
        Code::InvalidArgument,
        &["inline slot set 0"],
    );
    assert_status(
        generate(&url, inline(slot_value(fingerprint, 4, 7))).await,
        Code::InvalidArgument,
        &["inline slot set 0", "[4, 7]"],
    );
    // A question of only whitespace is no question.
    assert_status(
        generate(&url, from_keys(&[&key], Mode::Answer, " \n\t ", greedy(4))).await,
        Code::InvalidArgument,
        &["ANSWER needs a prompt"],
    );

    // The server honours the client's deadline (grpc-timeout) itself: the stream's headers
    // arrive at once, and the server ends the stream with DEADLINE_EXCEEDED.
    let fresh = compress_key(
        &encoder.url(),
        "Another document, long enough to take a while to reconstruct.",
    )
    .await;
    let mut request = tonic::Request::new(from_keys(&[&fresh], Mode::Autoencode, "", greedy(64)));
    request
        .metadata_mut()
        .insert("grpc-timeout", "500m".parse().unwrap());
    let mut client = integration_tests::decoder(&url).await;
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let mut tokens = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => tokens += 1,
            Ok(None) => {
                panic!("the stream ended without the deadline error after {tokens} messages")
            }
            Err(status) => break status,
        }
    };
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("deadline of 0.500s"),
        "{}",
        status.message()
    );
    assert!(tokens < 64);
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            decoder_info(&url).await.active_sequences == 0
        })
        .await
    );
}

/// Deadlines of a few milliseconds, sent by a client without a timer of its own: the
/// service answers DEADLINE_EXCEEDED with its message, before the gRPC library's own timer
/// would end the call with CANCELLED "Timeout expired".
#[tokio::test(flavor = "multi_thread")]
async fn short_deadlines_are_deadline_exceeded() {
    use prost::Message;

    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let key = compress_key(&encoder.url(), "A document to continue for a long while.").await;
    // Long enough that no deadline below is met: hundreds of tokens to compress or generate.
    let long_text = "Every sentence here is new work for the encoder. ".repeat(60);
    let compress = request(vec![text_doc(&long_text)], CompressOptions::default());
    let generate = from_keys(&[&key], Mode::Continue, "", greedy(200));
    for timeout in ["1m", "2m", "5m", "20m", "50m"] {
        for (url, path, message) in [
            (
                encoder.url(),
                "/icae.v1.EncoderService/Compress",
                compress.encode_to_vec(),
            ),
            (
                decoder.url(),
                "/icae.v1.DecoderService/GenerateOnce",
                generate.encode_to_vec(),
            ),
            (
                decoder.url(),
                "/icae.v1.DecoderService/Generate",
                generate.encode_to_vec(),
            ),
        ] {
            let mut head = grpc_head(path);
            head.headers_mut()
                .insert("grpc-timeout", timeout.parse().unwrap());
            let (code, message) = raw_call_with(&url, head, &message).await;
            assert_eq!(code, Code::DeadlineExceeded, "{path} {timeout}: {message}");
            assert!(message.contains("deadline"), "{path} {timeout}: {message}");
        }
    }
}
