//! Redis with AUTH and Redis over TLS with a private CA, as production deployments run it.

use std::process::Command;

use icae_proto::v1::Mode;
use integration_tests::*;
use tonic::Code;

const TEXT: &str = "Slots travel to a Redis that wants a password or speaks only TLS.";

/// Compress then generate a few greedy tokens through the two services.
async fn round_trip(encoder: &Service, decoder: &Service) {
    let key = compress_key(&encoder.url(), TEXT).await;
    let out = generate(
        &decoder.url(),
        from_keys(&[&key], Mode::Autoencode, "", greedy(4)),
    )
    .await
    .unwrap();
    assert!(out.finished());
    assert_eq!(out.token_ids.len(), 4, "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_protected_redis_works_and_a_wrong_password_is_unavailable() {
    let password = "s3cret-for-the-test";
    let redis = Redis::start_with_password(password);
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &[]).await;
    round_trip(&encoder, &decoder).await;

    let wrong = redis.url().replace(password, "wrong-password");
    let locked_out = Service::start(Kind::Encoder, &wrong, &[]).await;
    let result = compress(&locked_out.url(), TEXT, 0).await;
    assert_status(result, Code::Unavailable, &["Redis is unavailable"]);
    for service in [&encoder, &decoder, &locked_out] {
        let logs = service.logs();
        assert!(logs.contains(":***@127.0.0.1"), "{logs}");
        assert!(
            !logs.contains(password) && !logs.contains("wrong-password"),
            "a password reached the logs:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_private_ca() {
    let redis = Redis::start_tls();
    let ca = redis.ca_cert().unwrap().to_str().unwrap().to_owned();
    let flags = ["--redis-ca-cert", ca.as_str()];
    let encoder = Service::start(Kind::Encoder, &redis.url(), &flags).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &flags).await;
    round_trip(&encoder, &decoder).await;

    // Without the CA the server's certificate is not trusted: no connection, no slots.
    let untrusting = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let result = compress(&untrusting.url(), TEXT, 0).await;
    assert_status(
        result,
        Code::Unavailable,
        &["Redis is unavailable", "certificate"],
    );
}

#[test]
fn a_bad_ca_certificate_or_a_plain_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    let cert = dir.path().join("cert.pem");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let cases = [
        ("rediss://127.0.0.1:1", &not_pem, "holds no PEM certificate"),
        (
            "rediss://127.0.0.1:1",
            &missing,
            "cannot read --redis-ca-cert",
        ),
        ("redis://127.0.0.1:1", &cert, "does not use TLS"),
    ];
    for (url, ca, expected) in cases {
        let output = Command::new(bin("encoder-svc"))
            .arg("--model")
            .arg(model_dir())
            .arg("--adapter")
            .arg(adapter_dir())
            .args(["--redis-url", url, "--port", &free_port().to_string()])
            .arg("--redis-ca-cert")
            .arg(ca)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url} {ca:?} started: {stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    }
}
