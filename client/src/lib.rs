//! A gRPC client for encoder-svc and decoder-svc, shared by the `icae` CLI and the
//! integration tests. It depends on the generated API only, not on the engine, so a client
//! never needs libtorch.
//!
//! ```no_run
//! # async fn example(text: String) -> anyhow::Result<()> {
//! use icae_client::{compress_one, connect_decoder, connect_encoder, generate, generate_request, greedy, slot_keys, ConnectOptions};
//! use icae_proto::v1::{CompressOptions, Mode};
//!
//! let options = ConnectOptions::default();
//! let mut encoder = connect_encoder("http://127.0.0.1:50051", &options).await?;
//! let reply = encoder.compress(compress_one(text, CompressOptions::default())).await?.into_inner();
//! let key = reply.documents[0].handle.as_ref().expect("a handle per document").key.clone();
//! let mut decoder = connect_decoder("http://127.0.0.1:50052", &options).await?;
//! let request = generate_request(slot_keys(&[key]), Mode::Answer, "Who was arrested?", greedy(32));
//! println!("{}", generate(&mut decoder, request).await?.text);
//! # Ok(())
//! # }
//! ```

mod connect;
mod credentials;
mod names;
mod replicas;
mod requests;
mod retry;
mod status;
mod stream;

pub use connect::{
    channel, connect_decoder, connect_encoder, lazy_channel, ConnectOptions, Decoder, Encoder,
    PerCall,
};
pub use credentials::{BearerToken, ClientTls};
pub use names::{finish_reason, finish_reason_name, parse_mode};
pub use replicas::{decoder_replicas, encoder_replicas, Replicas};
pub use requests::{
    baseline_text, compress_one, generate_request, greedy, slot_keys, text_document,
};
pub use retry::{is_retryable, never_sent, RetryPolicy};
pub use status::status_error;
pub use stream::{collect, generate, generate_with, Generated};
