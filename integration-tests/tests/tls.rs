//! TLS and mTLS on the real services, with certificates made at test time: round trips
//! through the CLI and the client crate; refusals (wrong CA, plaintext, no/expired/foreign
//! client certificate); certificates reloaded without a restart; reflection off; the
//! plaintext health port for probes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use icae_client::{channel, compress_one, ConnectOptions};
use icae_proto::v1::{CompressOptions, InfoRequest, Mode};
use integration_tests::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const TEXT: &str = "Transport security keeps compressed contexts private on the wire.";

fn tls_flags(server: &CertFiles) -> Vec<&str> {
    vec![
        "--tls-cert",
        server.cert_str(),
        "--tls-key",
        server.key_str(),
    ]
}

/// Run the CLI; Ok(last stdout line as JSON) or Err(stderr).
fn icae(args: &[&str]) -> Result<serde_json::Value, String> {
    let output = Command::new(bin("icae")).args(args).output().unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    Ok(serde_json::from_str(stdout.lines().last().unwrap()).unwrap())
}

/// The services reflection lists, or the status of the attempt.
async fn reflected_services(url: &str, options: &ConnectOptions) -> Result<String, tonic::Status> {
    let channel = channel(url, options).await.unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("a reflection response");
    Ok(format!("{:?}", response.message_response))
}

async fn info_over(url: &str, options: &ConnectOptions) -> Result<String, String> {
    let mut client = icae_client::connect_encoder(url, options)
        .await
        .map_err(|e| format!("{e:#}"))?;
    client
        .info(InfoRequest {})
        .await
        .map(|r| r.into_inner().model_fingerprint)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_round_trip_refusals_probes_and_certificate_reload() {
    let redis = Redis::start();
    let ca = TestCa::new("icae-ca");
    let server = ca.server("server");
    let ca_path = ca.ca.cert_str();
    let health_port = free_port().to_string();
    let mut encoder_flags = tls_flags(&server);
    encoder_flags.extend(["--reflection", "false", "--health-port", &health_port]);
    let client = tls_options(ca.ca_path(), None);
    let encoder =
        Service::start_with_client(Kind::Encoder, &redis.url(), &encoder_flags, client.clone())
            .await;
    let decoder = Service::start_with_client(
        Kind::Decoder,
        &redis.url(),
        &tls_flags(&server),
        client.clone(),
    )
    .await;
    assert!(encoder.url().starts_with("https://"));

    // Round trip through the CLI over https://, trusting the test CA.
    let compressed = icae(&[
        "client",
        "compress",
        "--encoder",
        &encoder.url(),
        "--tls-ca",
        ca_path,
        "--text",
        TEXT,
        "--json",
    ])
    .unwrap();
    let key = compressed["key"].as_str().unwrap().to_owned();
    let generated = icae(&[
        "client",
        "generate",
        "--decoder",
        &decoder.url(),
        "--tls-ca",
        ca_path,
        "--key",
        &key,
        "--mode",
        "autoencode",
        "--max-new-tokens",
        "4",
        "--json",
    ])
    .unwrap();
    assert!(
        !generated["token_ids"].as_array().unwrap().is_empty(),
        "{generated}"
    );

    // Refused: a client that trusts another CA, and a plaintext client.
    let stranger = TestCa::new("stranger-ca");
    let err = icae(&[
        "client",
        "info",
        "--encoder",
        &encoder.url(),
        "--tls-ca",
        stranger.ca.cert_str(),
    ])
    .unwrap_err();
    assert!(err.contains("connecting to https://127.0.0.1"), "{err}");
    let plaintext = format!("http://127.0.0.1:{}", encoder.port);
    assert!(info_over(&plaintext, &ConnectOptions::default())
        .await
        .is_err());

    // Reflection: off on the encoder (--reflection false), served on the decoder.
    let off = reflected_services(&encoder.url(), &client)
        .await
        .unwrap_err();
    assert_eq!(off.code(), Code::Unimplemented, "{off:?}");
    let on = reflected_services(&decoder.url(), &client).await.unwrap();
    assert!(on.contains(icae_proto::DECODER_SERVICE), "{on}");

    // Health: over TLS on the gRPC port, and in plaintext on --health-port for probes.
    assert_eq!(
        encoder.health(icae_proto::ENCODER_SERVICE).await,
        Some(ServingStatus::Serving)
    );
    let port = health_port.parse().unwrap();
    assert_eq!(
        plaintext_health(port, icae_proto::ENCODER_SERVICE).await,
        ServingStatus::Serving
    );

    // Reload without restart: a connection opened before keeps working; after the files
    // are replaced by a certificate of another CA, new connections get the new one.
    let mut before = icae_client::connect_encoder(&encoder.url(), &client)
        .await
        .unwrap();
    let renewed_ca = TestCa::new("renewed-ca");
    let renewed = renewed_ca.server("renewed");
    replace(&renewed.key, &server.key);
    replace(&renewed.cert, &server.cert);
    let renewed_client = tls_options(renewed_ca.ca_path(), None);
    let fingerprint = info_over(&encoder.url(), &renewed_client).await.unwrap();
    assert!(!fingerprint.is_empty());
    let err = info_over(&encoder.url(), &client).await.unwrap_err();
    assert!(err.contains("connecting to"), "{err}");
    before.info(InfoRequest {}).await.unwrap();
    assert!(
        encoder
            .logs()
            .contains("TLS certificate files changed: reloaded"),
        "{}",
        encoder.logs()
    );

    // A half-written certificate keeps the previous one serving (and is logged).
    std::fs::write(&server.cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    info_over(&encoder.url(), &renewed_client).await.unwrap();
    assert!(
        encoder.logs().contains("keeping the previous ones"),
        "{}",
        encoder.logs()
    );
}

/// Replace `target` atomically (rename), as a Secret update or cert-manager would.
fn replace(source: &Path, target: &Path) {
    let staged = target.with_extension("new");
    std::fs::copy(source, &staged).unwrap();
    std::fs::rename(&staged, target).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_round_trip_and_refused_client_certificates() {
    let redis = Redis::start();
    let ca = TestCa::new("icae-ca");
    let server = ca.server("server");
    let alice = ca.client("alice");
    let mut flags = tls_flags(&server);
    flags.extend(["--tls-client-ca", ca.ca.cert_str()]);
    let alice_options = tls_options(ca.ca_path(), Some(&alice));
    let encoder =
        Service::start_with_client(Kind::Encoder, &redis.url(), &flags, alice_options.clone())
            .await;
    let decoder =
        Service::start_with_client(Kind::Decoder, &redis.url(), &flags, alice_options.clone())
            .await;

    // Compress then Generate as alice (her certificate names her tenant on both sides).
    let response = icae_client::connect_encoder(&encoder.url(), &alice_options)
        .await
        .unwrap()
        .compress(compress_one(TEXT, CompressOptions::default()))
        .await
        .unwrap()
        .into_inner();
    let key = response.documents[0].handle.as_ref().unwrap().key.clone();
    let mut decoder_client = icae_client::connect_decoder(&decoder.url(), &alice_options)
        .await
        .unwrap();
    let generated = icae_client::generate(
        &mut decoder_client,
        from_keys(&[&key], Mode::Autoencode, "", greedy(3)),
    )
    .await
    .unwrap();
    assert!(!generated.token_ids.is_empty());

    // DNS names are case-insensitive: a certificate for ALICE is alice's tenant.
    let upper = ca.client_with_dns_names("alice-upper", &["ALICE"]);
    let same_key =
        icae_client::connect_encoder(&encoder.url(), &tls_options(ca.ca_path(), Some(&upper)))
            .await
            .unwrap()
            .compress(compress_one(TEXT, CompressOptions::default()))
            .await
            .unwrap()
            .into_inner()
            .documents[0]
            .handle
            .as_ref()
            .unwrap()
            .key
            .clone();
    assert_eq!(same_key, key);

    // The first DNS name names the tenant; one that is not a tenant name is refused, not
    // skipped for the next.
    let wildcard = ca.client_with_dns_names("wildcard", &["*.acme", "globex"]);
    let err = info_over(&encoder.url(), &tls_options(ca.ca_path(), Some(&wildcard)))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("Unauthenticated: the client certificate's DNS name is not a tenant name")
            && err.contains("*.acme"),
        "{err}"
    );

    // The CLI presents a client certificate too.
    let ca_path = ca.ca.cert_str();
    let info = icae(&[
        "client",
        "info",
        "--encoder",
        &encoder.url(),
        "--tls-ca",
        ca_path,
        "--tls-cert",
        alice.cert_str(),
        "--tls-key",
        alice.key_str(),
    ])
    .unwrap();
    assert_eq!(
        info["model_fingerprint"],
        response.documents[0]
            .handle
            .as_ref()
            .unwrap()
            .model_fingerprint
            .as_str()
    );

    // Refused at the handshake: no client certificate, one from another CA, an expired one.
    let stranger_ca = TestCa::new("stranger-ca");
    let stranger = stranger_ca.client("mallory");
    let expired = ca.expired_client("alice");
    // The expired one first: refusals are logged at most 5 per 10 s (a client may retry its
    // handshake several times), and the log check below looks for that one.
    for (what, options) in [
        (
            "an expired certificate",
            tls_options(ca.ca_path(), Some(&expired)),
        ),
        ("no client certificate", tls_options(ca.ca_path(), None)),
        (
            "a certificate of another CA",
            tls_options(ca.ca_path(), Some(&stranger)),
        ),
    ] {
        let result = info_over(&encoder.url(), &options).await;
        assert!(result.is_err(), "{what} was accepted");
    }
    // The server logs a refusal in the handshake's own task: it may trail the client's error.
    let logged = eventually(Duration::from_secs(10), || async {
        let logs = encoder.logs();
        logs.contains("TLS handshake refused") && logs.to_lowercase().contains("expired")
    })
    .await;
    assert!(logged, "{}", encoder.logs());

    // A verified certificate without a DNS name names no tenant: UNAUTHENTICATED.
    let nameless = ca.client_without_dns_name("nameless");
    let err = info_over(&encoder.url(), &tls_options(ca.ca_path(), Some(&nameless)))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("Unauthenticated: the client certificate has no DNS name"),
        "{err}"
    );

    // A flood of refused handshakes does not flood the log: a few lines, then a count.
    let address = encoder.url().replace("https://", "");
    for _ in 0..200 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
    }
    let logged = encoder.logs().matches("TLS handshake refused").count();
    assert!(
        (1..=20).contains(&logged),
        "{logged} lines for 200 refused handshakes"
    );
}
