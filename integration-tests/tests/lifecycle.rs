//! Cancellation, overload, SIGTERM draining, health and reflection (v1 and v1alpha).

use std::time::{Duration, Instant};

use icae_proto::v1::Mode;
use integration_tests::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const DOC: &str =
    "A document the tests reconstruct, again and again, to keep the decoder busy for a while.";

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_stream_frees_its_sequence() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    let key = compress_key(&encoder.url(), DOC).await;
    let mut client = integration_tests::decoder(&decoder.url()).await;
    let mut stream = client
        .generate(from_keys(&[&key], Mode::Autoencode, "", greedy(500)))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    assert_eq!(decoder_info(&decoder.url()).await.active_sequences, 1);
    drop(stream);
    drop(client);
    let freed = eventually(Duration::from_secs(5), || async {
        decoder_info(&decoder.url()).await.active_sequences == 0
    })
    .await;
    assert!(
        freed,
        "the sequence was not freed after the client went away"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_refused_not_queued_without_bound() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &["--max-concurrent-requests", "2"],
    )
    .await;
    let key = compress_key(&encoder.url(), DOC).await;
    let rss_before = decoder.rss_kib();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (url, key) = (decoder.url(), key.clone());
            tokio::spawn(async move {
                generate(&url, from_keys(&[&key], Mode::Autoencode, "", greedy(24))).await
            })
        })
        .collect();
    let mut ok = 0;
    let mut exhausted = 0;
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("a request hung")
            .unwrap()
        {
            Ok(result) => {
                assert!(result.finished());
                assert_eq!(result.token_ids.len(), 24);
                ok += 1;
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::ResourceExhausted,
                    "{}",
                    status.message()
                );
                assert!(
                    status.message().contains("2 requests"),
                    "{}",
                    status.message()
                );
                exhausted += 1;
            }
        }
    }
    assert!(ok >= 2 && exhausted >= 1, "ok {ok}, exhausted {exhausted}");
    assert_eq!(ok + exhausted, 10, "every request got an answer");
    // The model's weights dominate; overload must not grow memory beyond a small margin.
    let grown_mib = decoder.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 300,
        "RSS grew by {grown_mib} MiB under overload"
    );
    // Clients see their final message a moment before the scheduler's count is updated.
    let idle = eventually(Duration::from_secs(5), || async {
        decoder_info(&decoder.url()).await.active_sequences == 0
    })
    .await;
    assert!(idle, "sequences left active after every request finished");
}

/// Tokens of the stream that runs through the shutdown: long enough to still be running
/// when the GOAWAY reaches the other connection (that takes milliseconds; the tokens take
/// seconds, a minute on a loaded machine, which the grace period below allows).
const LONG_STREAM_TOKENS: u32 = 60;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_sends_goaway_at_once_lets_running_streams_finish_then_exits_zero() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let health_port = free_port();
    let mut decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &[
            "--shutdown-grace-seconds",
            "600",
            "--health-port",
            &health_port.to_string(),
        ],
    )
    .await;
    let key = compress_key(&encoder.url(), DOC).await;
    // A long stream on one connection ...
    let mut client = integration_tests::decoder(&decoder.url()).await;
    let mut stream = client
        .generate(from_keys(
            &[&key],
            Mode::Continue,
            "",
            greedy(LONG_STREAM_TOKENS),
        ))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    // ... and another connection, open and idle: the GOAWAY closes it.
    let address = decoder.url().trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (_send, connection) = h2::client::handshake(tcp).await.unwrap();
    let idle_closed = tokio::spawn(async move {
        let _ = connection.await;
        Instant::now()
    });
    let reader = tokio::spawn(async move {
        let mut tokens = 1;
        let mut generated = None;
        while let Some(message) = stream.next().await {
            match message.unwrap().event {
                Some(icae_proto::v1::generate_response::Event::Delta(_)) => tokens += 1,
                Some(icae_proto::v1::generate_response::Event::Final(f)) => {
                    generated = Some(f.generated_tokens)
                }
                None => {}
            }
        }
        (tokens, generated, Instant::now())
    });

    decoder.sigterm();
    let idle_closed = tokio::time::timeout(Duration::from_secs(10), idle_closed)
        .await
        .expect("the idle connection got no GOAWAY")
        .unwrap();
    let refused = eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(&address).await.is_err()
    })
    .await;
    assert!(refused, "new connections are still accepted while draining");
    assert_eq!(
        plaintext_health(health_port, icae_proto::DECODER_SERVICE).await,
        ServingStatus::NotServing,
        "readiness did not flip to NOT_SERVING"
    );

    // The running stream was not cut: it finishes, after the GOAWAY went out.
    let (tokens, generated, finished_at) = reader.await.unwrap();
    let generated = generated.expect("the running stream ended without its final message");
    assert!(
        tokens >= generated as usize && generated > 0,
        "{tokens} messages for {generated} tokens"
    );
    assert!(
        idle_closed < finished_at,
        "the GOAWAY waited for the running stream to end"
    );
    let status = decoder
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the decoder did not exit");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        decoder.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_answer() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    for (service, name) in [
        (&encoder, icae_proto::ENCODER_SERVICE),
        (&decoder, icae_proto::DECODER_SERVICE),
    ] {
        assert_eq!(service.health("").await, Some(ServingStatus::Serving));
        assert_eq!(service.health(name).await, Some(ServingStatus::Serving));
        let channel = tonic::transport::Channel::from_shared(service.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let answer = reflect(&mut client, MessageRequest::ListServices(String::new())).await;
        let MessageResponse::ListServicesResponse(list) = answer else {
            panic!("unexpected reflection answer: {answer:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&name.to_string())
                && names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
        // Each version lists itself; everything else is the same.
        let v1alpha = v1alpha_services(&service.url()).await;
        assert!(v1alpha.contains(&"grpc.reflection.v1alpha.ServerReflection".to_string()));
        let others = |list: &[String]| {
            let mut list: Vec<String> = list
                .iter()
                .filter(|n| !n.starts_with("grpc.reflection."))
                .cloned()
                .collect();
            list.sort();
            list
        };
        assert_eq!(others(&v1alpha), others(&names));
        // The API's file and the well-known types it imports resolve, as grpcurl asks for
        // them: the file of the service, then each dependency by name.
        let api = reflected_file(
            &mut client,
            MessageRequest::FileContainingSymbol(name.into()),
        )
        .await;
        assert_eq!(api.name(), "icae/v1/icae.proto");
        for dependency in [
            "google/protobuf/duration.proto",
            "google/protobuf/timestamp.proto",
        ] {
            assert!(api.dependency.iter().any(|d| d == dependency), "{api:?}");
            let file = MessageRequest::FileByFilename(dependency.into());
            assert_eq!(reflected_file(&mut client, file).await.name(), dependency);
        }
    }
}

type ReflectionClient = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient<
    tonic::transport::Channel,
>;

/// The answer of a v1 reflection server to one request.
async fn reflect(
    client: &mut ReflectionClient,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1::server_reflection_response::MessageResponse {
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    response.message_response.expect("a reflection answer")
}

/// The first file of a v1 reflection answer that holds files.
async fn reflected_file(
    client: &mut ReflectionClient,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> icae_proto::prost_types::FileDescriptorProto {
    use prost::Message;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let answer = reflect(client, request).await;
    let MessageResponse::FileDescriptorResponse(files) = answer else {
        panic!("no files in the reflection answer: {answer:?}")
    };
    icae_proto::prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap()
}

/// The services listed by `grpc.reflection.v1alpha`, which grpcio-reflection, Postman and
/// older grpcurl speak.
async fn v1alpha_services(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1alpha reflection answer")
    };
    list.service.into_iter().map(|s| s.name).collect()
}
