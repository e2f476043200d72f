//! Tenant isolation through the real services with bearer tokens: every key's tenant prefix
//! comes from the caller's identity, so tenant B can neither read tenant A's slots (NOT_FOUND,
//! exactly like a missing key), nor learn from `cache_hit` that A stored a document, nor
//! shorten the TTL of A's slots; a request's namespace is a sub-namespace of its tenant.

use icae_client::{compress_one, BearerToken, ConnectOptions, Decoder, Encoder};
use icae_proto::v1::{CompressOptions, CompressResponse, Mode, SlotHandle};
use integration_tests::*;
use tonic::Code;

const ACME: &str = "acme-token-0123456789abcdef";
const GLOBEX: &str = "globex-token-0123456789abcdef";
const DOCUMENT: &str = "Acme's quarterly plan: ship the anvil in March.";

fn as_tenant(token: &str) -> ConnectOptions {
    ConnectOptions {
        token: Some(BearerToken::new(token).unwrap()),
        ..Default::default()
    }
}

async fn encoder_as(url: &str, token: &str) -> Encoder {
    icae_client::connect_encoder(url, &as_tenant(token))
        .await
        .unwrap()
}

async fn decoder_as(url: &str, token: &str) -> Decoder {
    icae_client::connect_decoder(url, &as_tenant(token))
        .await
        .unwrap()
}

async fn compress_as(client: &mut Encoder, namespace: &str, ttl_seconds: u32) -> SlotHandle {
    let options = CompressOptions {
        namespace: namespace.into(),
        ttl: ttl(ttl_seconds),
        ..Default::default()
    };
    let response: CompressResponse = client
        .compress(compress_one(DOCUMENT, options))
        .await
        .unwrap()
        .into_inner();
    response.documents[0].handle.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_read_probe_or_expire_each_others_slots() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{ACME} acme\n{GLOBEX} globex\n")).unwrap();
    let auth = ["--auth-tokens-file", tokens.to_str().unwrap()];
    let encoder = Service::start(Kind::Encoder, &redis.url(), &auth).await;
    let decoder = Service::start(Kind::Decoder, &redis.url(), &auth).await;
    let (mut acme, mut globex) = (
        encoder_as(&encoder.url(), ACME).await,
        encoder_as(&encoder.url(), GLOBEX).await,
    );

    let acme_key = compress_as(&mut acme, "", 3600).await;
    assert!(
        acme_key.key.starts_with("tenant/acme:icae:v1:"),
        "{}",
        acme_key.key
    );
    assert!(!acme_key.cache_hit);
    assert!(compress_as(&mut acme, "", 3600).await.cache_hit);

    // The same document, the same (client-chosen) namespace: globex gets its own key, and
    // cache_hit says nothing about acme's.
    let globex_key = compress_as(&mut globex, "", 1).await;
    assert!(
        !globex_key.cache_hit,
        "globex learned that acme stored the document"
    );
    assert!(
        globex_key.key.starts_with("tenant/globex:"),
        "{}",
        globex_key.key
    );
    // A namespace named like a tenant is only a sub-namespace of the caller's tenant.
    let spoof = compress_as(&mut globex, "acme", 1).await;
    assert!(
        spoof.key.starts_with("tenant/globex:acme:icae:v1:"),
        "{}",
        spoof.key
    );
    assert!(!spoof.cache_hit);

    // globex's Compress with ttl 1 did not touch acme's slots.
    let mut conn = redis.connection();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&acme_key.key)
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 3000, "acme's TTL changed to {ttl}");

    // Reading acme's key as globex is NOT_FOUND, worded exactly as a missing key.
    let request = || from_keys(&[&acme_key.key], Mode::Continue, "", greedy(2));
    let foreign =
        icae_client::generate(&mut decoder_as(&decoder.url(), GLOBEX).await, request()).await;
    let missing_key = format!(
        "{}{}",
        &acme_key.key[..acme_key.key.len() - 64],
        "0".repeat(64)
    );
    let missing = icae_client::generate(
        &mut decoder_as(&decoder.url(), ACME).await,
        from_keys(&[&missing_key], Mode::Continue, "", greedy(2)),
    )
    .await;
    let (foreign, missing) = (foreign.unwrap_err(), missing.unwrap_err());
    assert_eq!(foreign.code(), Code::NotFound, "{}", foreign.message());
    assert_eq!(
        foreign.message().replace(&acme_key.key, "KEY"),
        missing.message().replace(&missing_key, "KEY")
    );
    // acme reads its own slots; without a token nobody reads anything.
    let own = icae_client::generate(&mut decoder_as(&decoder.url(), ACME).await, request()).await;
    assert!(own.is_ok(), "{:?}", own.err());
    assert_status(
        generate(&decoder.url(), request()).await,
        Code::Unauthenticated,
        &["Bearer"],
    );
}
