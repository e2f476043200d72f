//! Bearer tokens on the real encoder: missing and unknown tokens are UNAUTHENTICATED (the
//! message never echoes a token), a known token passes, SIGHUP reloads the file (a broken
//! file keeps the previous tokens), so does a change of the file alone, health needs no
//! token, and a malformed file stops the start with its file and line named.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use icae_client::{compress_one, BearerToken, ConnectOptions};
use icae_proto::v1::{CompressOptions, InfoRequest};
use integration_tests::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const ACME: &str = "acme-0123456789abcdef";
const GLOBEX: &str = "globex-0123456789abcdef";
const INITECH: &str = "initech-0123456789abcdef";

fn with_token(token: Option<&str>) -> ConnectOptions {
    ConnectOptions {
        token: token.map(|t| BearerToken::new(t).unwrap()),
        ..Default::default()
    }
}

async fn info_as(url: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut client = icae_client::connect_encoder(url, &with_token(token))
        .await
        .unwrap();
    client.info(InfoRequest {}).await.map(|_| ())
}

/// Whether `token` is accepted within `timeout` (reloads happen in the background).
async fn accepted_within(url: &str, token: &str, timeout: Duration) -> bool {
    eventually(timeout, || async {
        info_as(url, Some(token)).await.is_ok()
    })
    .await
}

fn sighup(service: &Service) {
    unsafe { libc::kill(service.pid(), libc::SIGHUP) };
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_authenticate_and_reload_on_sighup() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(
        &tokens,
        format!("# tenants\n{ACME} acme\n\n{GLOBEX} globex\n"),
    )
    .unwrap();
    let encoder = Service::start(
        Kind::Encoder,
        &redis.url(),
        &["--auth-tokens-file", tokens.to_str().unwrap()],
    )
    .await;
    let url = encoder.url();

    // Health stays open for probes (Service::start waited for it without a token).
    assert_eq!(encoder.health("").await, Some(ServingStatus::Serving));

    assert_status(
        info_as(&url, None).await,
        Code::Unauthenticated,
        &["needs `authorization: Bearer <token>`"],
    );
    let unknown = "unknown-0123456789abcdef";
    let status = info_as(&url, Some(unknown)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("not known"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains(unknown),
        "the message echoes the token"
    );
    info_as(&url, Some(ACME)).await.unwrap();
    let compressed = icae_client::connect_encoder(&url, &with_token(Some(GLOBEX)))
        .await
        .unwrap()
        .compress(compress_one(
            "Tenants need tokens.",
            CompressOptions::default(),
        ))
        .await;
    assert!(compressed.is_ok(), "{compressed:?}");

    // The CLI sends a token from a file.
    let token_file = dir.path().join("acme.token");
    std::fs::write(&token_file, format!("{ACME}\n")).unwrap();
    let info = icae_json(&[
        "client",
        "info",
        "--encoder",
        &url,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(info["model_fingerprint"].is_string());

    // SIGHUP: initech is added, acme removed.
    std::fs::write(&tokens, format!("{GLOBEX} globex\n{INITECH} initech\n")).unwrap();
    sighup(&encoder);
    let reloaded = accepted_within(&url, INITECH, Duration::from_secs(10)).await;
    assert!(
        reloaded,
        "the new token was not accepted:\n{}",
        encoder.logs()
    );
    assert!(
        encoder.logs().contains("SIGHUP: bearer tokens reloaded"),
        "{}",
        encoder.logs()
    );
    assert_status(
        info_as(&url, Some(ACME)).await,
        Code::Unauthenticated,
        &["not known"],
    );
    info_as(&url, Some(GLOBEX)).await.unwrap();

    // A broken file on SIGHUP keeps the previous tokens and is logged.
    std::fs::write(&tokens, format!("{INITECH}\n")).unwrap();
    sighup(&encoder);
    let logged = eventually(Duration::from_secs(10), || async {
        encoder.logs().contains("keeping the previous tokens")
    })
    .await;
    assert!(logged, "{}", encoder.logs());
    info_as(&url, Some(INITECH)).await.unwrap();
    info_as(&url, Some(GLOBEX)).await.unwrap();

    // Without a signal, a changed file (an updated Kubernetes Secret) applies by itself.
    std::fs::write(&tokens, format!("{ACME} acme\n")).unwrap();
    let applied = accepted_within(&url, ACME, Duration::from_secs(15)).await;
    assert!(
        applied,
        "the changed file was not picked up:\n{}",
        encoder.logs()
    );
    assert_status(
        info_as(&url, Some(GLOBEX)).await,
        Code::Unauthenticated,
        &["not known"],
    );

    let logs = encoder.logs();
    assert!(
        logs.contains("tokens.txt:1: expected `token tenant`"),
        "{logs}"
    );
    for token in [ACME, GLOBEX, INITECH, unknown] {
        assert!(!logs.contains(token), "the log holds a token:\n{logs}");
    }
}

#[test]
fn a_malformed_tokens_file_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{ACME} acme\n{GLOBEX} not/a/tenant\n")).unwrap();
    let output = Command::new(bin("encoder-svc"))
        .arg("--model")
        .arg(model_dir())
        .arg("--adapter")
        .arg(adapter_dir())
        .args([
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--metrics-port",
            "0",
        ])
        .args(["--port", &free_port().to_string()])
        .arg("--auth-tokens-file")
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}:2: tenant:", Path::new(&tokens).display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains(GLOBEX), "{stderr}");
}
