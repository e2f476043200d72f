//! icae-core: the ICAE model engine (libtorch via `tch`), checkpoints, tokenizer, GGUF import
//! and the slot format. No transport, storage or process concerns: those live in
//! icae-serving and the binaries.

pub mod adapter;
#[cfg(feature = "clap")]
pub mod args;
pub mod cpu_quota;
pub mod device;
pub mod encode_only;
pub mod error;
pub mod fingerprint;
pub mod generate;
pub mod gguf;
pub mod icae;
pub mod model;
pub mod refine;
pub mod slot_dtype;
pub mod slots;
pub mod tokenizer;

pub use adapter::{Adapter, LoadOptions};
pub use device::{DeviceSpec, DtypeSpec};
pub use encode_only::EncodeOnlyModel;
pub use error::{AdapterError, IcaeError, InputError, ModelError};
pub use generate::{FinishReason, SamplingParams, Sequence};
pub use icae::{
    check_slots_per_segment, check_token_ids, Compressed, Generation, IcaeModel, Mode,
    ModelSummary, ToCompress,
};
pub use refine::{RefineOptions, Refined, Refinement};
pub use slot_dtype::SlotDtype;
