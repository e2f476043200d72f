//! gRPC calls with hand-made bytes, over a plain HTTP/2 connection: what a client that does
//! not use generated code can send.

use bytes::{Buf, Bytes};
use tonic::Code;

/// Call `path` (e.g. `/icae.v1.Encoder/Compress`) with `message` as the one request message,
/// framed but otherwise as given; returns the call's status and message.
pub async fn raw_call(url: &str, path: &str, message: &[u8]) -> (Code, String) {
    let address = url.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let head = http::Request::post(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send.send_request(head, false).unwrap();
    stream.send_data(Bytes::from(body), true).unwrap();
    let response = response.await.unwrap();
    // An error before any message comes in the headers (trailers-only), else in trailers.
    let mut fields = response.headers().clone();
    if fields.get("grpc-status").is_none() {
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.remaining());
        }
        fields = body.trailers().await.unwrap().unwrap_or_default();
    }
    let field = |name: &str| {
        fields
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (
        Code::from_i32(field("grpc-status").parse().unwrap()),
        field("grpc-message"),
    )
}
