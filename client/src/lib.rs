//! A gRPC client for encoder-svc and decoder-svc, shared by the `icae` CLI and the
//! integration tests. It depends on the generated API only, not on the engine, so a client
//! never needs libtorch.

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
