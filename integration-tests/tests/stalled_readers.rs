//! Generate clients that stop reading (their HTTP/2 receive window stays at 0, while their
//! connection answers pings) cannot hold the decoder's request slots: a slot is free once
//! its generation's work is done, a slow reader still gets every message, and a client that
//! reads nothing for `--stream-send-timeout-seconds` has its stream ended.

use std::time::Duration;

use bytes::Bytes;
use icae_proto::v1::{GenerateRequest, Mode};
use integration_tests::*;
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tonic::Code;

/// A raw HTTP/2 connection that opens with a receive window of 0: the server can answer
/// with headers but send no data until `open_window`.
struct StalledClient {
    send: h2::client::SendRequest<Bytes>,
    open: Option<oneshot::Sender<()>>,
}

impl StalledClient {
    async fn connect(url: &str) -> Self {
        let address = url.trim_start_matches("http://");
        let tcp = TcpStream::connect(address).await.unwrap();
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        let (open, opened) = oneshot::channel();
        // The connection is driven all along: it answers pings like a live client.
        tokio::spawn(async move {
            tokio::select! {
                _ = &mut connection => return,
                _ = opened => {}
            }
            connection.set_initial_window_size(1 << 20).unwrap();
            let _ = connection.await;
        });
        StalledClient {
            send,
            open: Some(open),
        }
    }

    /// Send a Generate; returns its response once the server answered with headers.
    async fn generate(&mut self, request: &GenerateRequest) -> http::Response<h2::RecvStream> {
        self.send = self.send.clone().ready().await.unwrap();
        let head = grpc_head("/icae.v1.DecoderService/Generate");
        let (response, mut stream) = self.send.send_request(head, false).unwrap();
        stream
            .send_data(grpc_frame(&request.encode_to_vec()), true)
            .unwrap();
        let response = response.await.unwrap();
        assert!(
            response.headers().get("grpc-status").is_none(),
            "refused: {:?}",
            response.headers()
        );
        response
    }

    /// Let the server send: every stream's window grows to 1 MiB.
    fn open_window(&mut self) {
        self.open.take().unwrap().send(()).unwrap();
    }
}

async fn admitted_soon(url: &str, key: &str) -> bool {
    eventually(Duration::from_secs(60), || async {
        generate(url, from_keys(&[key], Mode::Continue, "", greedy(2)))
            .await
            .is_ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_is_free_once_the_work_is_done_and_a_slow_reader_gets_everything() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let key = compress_key(&encoder.url(), "The river carried seven red boxes.").await;
    let decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &[
            "--max-concurrent-requests",
            "2",
            "--stream-send-timeout-seconds",
            "600",
        ],
    )
    .await;
    let url = decoder.url();
    let request = from_keys(&[&key], Mode::Continue, "", greedy(4));

    let mut client = StalledClient::connect(&url).await;
    let first = client.generate(&request).await;
    let second = client.generate(&request).await;
    // Both generations end in well under a second; their clients have read nothing.
    assert!(
        admitted_soon(&url, &key).await,
        "the unread streams still hold both request slots"
    );

    client.open_window();
    for response in [first, second] {
        let (bytes, code, message) = grpc_outcome(response).await;
        assert_eq!(code, Code::Ok, "{message}");
        assert!(bytes > 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reads_nothing_has_its_stream_ended_after_the_send_timeout() {
    let redis = Redis::start();
    let encoder = Service::start(Kind::Encoder, &redis.url(), &[]).await;
    let key = compress_key(&encoder.url(), "Our old teacher painted the morning fog.").await;
    let decoder = Service::start(
        Kind::Decoder,
        &redis.url(),
        &[
            "--max-concurrent-requests",
            "1",
            "--stream-send-timeout-seconds",
            "2",
        ],
    )
    .await;
    let url = decoder.url();
    let max_new_tokens = decoder_info(&url).await.limits.unwrap().max_new_tokens;
    let request = from_keys(&[&key], Mode::Continue, "", greedy(max_new_tokens));

    let mut client = StalledClient::connect(&url).await;
    let stalled = client.generate(&request).await;
    assert!(
        admitted_soon(&url, &key).await,
        "a stream nobody reads still holds the only request slot"
    );
    client.open_window();
    let (_, code, message) = grpc_outcome(stalled).await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert!(message.contains("stream-send-timeout-seconds"), "{message}");
}
