//! icae-core: the ICAE model engine (libtorch via `tch`), checkpoints, tokenizer, GGUF import
//! and the slot format shared by the encoder and decoder services.

pub mod adapter;
#[cfg(feature = "clap")]
pub mod args;
pub mod device;
pub mod error;
pub mod fingerprint;
pub mod generate;
pub mod gguf;
pub mod icae;
pub mod model;
#[cfg(feature = "clap")]
pub mod service;
pub mod slots;
pub mod store;
pub mod tokenizer;

pub use adapter::{Adapter, LoadOptions};
pub use device::DeviceSpec;
pub use error::{AdapterError, IcaeError, InputError, ModelError};
pub use generate::{FinishReason, SamplingParams, Sequence};
pub use icae::{check_token_ids, Compressed, Generation, IcaeModel, Mode, ModelSummary};
