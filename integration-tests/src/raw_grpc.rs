//! gRPC calls with hand-made bytes, over a plain HTTP/2 connection: what a client that does
//! not use generated code can send, and control over the connection that generated clients
//! do not give (e.g. a receive window of 0).

use bytes::{Buf, Bytes};
use tonic::Code;

/// `message` framed as one gRPC message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    Bytes::from(body)
}

/// The request head of a call to `path` (e.g. `/icae.v1.EncoderService/Compress`).
pub fn grpc_head(path: &str) -> http::Request<()> {
    http::Request::post(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Read a response to its end: the bytes of its messages, its status and message (from the
/// headers of a trailers-only response, else from the trailers).
pub async fn grpc_outcome(response: http::Response<h2::RecvStream>) -> (usize, Code, String) {
    let mut fields = response.headers().clone();
    let mut bytes = 0;
    if fields.get("grpc-status").is_none() {
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            bytes += chunk.remaining();
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
    let code = Code::from_i32(field("grpc-status").parse().unwrap());
    (bytes, code, field("grpc-message"))
}

/// Call `path` with `message` as the one request message, framed but otherwise as given;
/// returns the call's status and message.
pub async fn raw_call(url: &str, path: &str, message: &[u8]) -> (Code, String) {
    raw_call_with(url, grpc_head(path), message).await
}

/// [`raw_call`] with the request head as given (e.g. with a `grpc-timeout` header that no
/// client-side timer shadows).
pub async fn raw_call_with(url: &str, head: http::Request<()>, message: &[u8]) -> (Code, String) {
    let address = url.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send.send_request(head, false).unwrap();
    stream.send_data(grpc_frame(message), true).unwrap();
    let (_, code, message) = grpc_outcome(response.await.unwrap()).await;
    (code, message)
}
