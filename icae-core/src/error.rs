//! Error types of the core library, one enum per concern. The services map them to gRPC
//! status codes in one place (`ServiceError` in icae-serving).

use thiserror::Error;

pub use crate::gguf::GgufError;

/// Loading a model directory or running it.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{0}")]
    Io(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("invalid weights file: {0}")]
    Format(String),
    #[error("tensor {name} is missing from {location}")]
    MissingTensor { name: String, location: String },
    #[error("tensor {name} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        actual: Vec<i64>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("device: {0}")]
    Device(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A caller bug: tokens are only chosen once the prompt is in the cache.
    #[error("a token was requested before the prompt's prefill finished")]
    NotPrefilled,
}

/// Loading, validating or writing an ICAE adapter.
#[derive(Debug, Error)]
pub enum AdapterError {
    #[error("{0}")]
    Io(String),
    #[error("adapter {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("adapter tensor {name}: shape {actual:?}, expected {expected}")]
    Shape {
        name: String,
        actual: Vec<i64>,
        expected: String,
    },
    #[error("adapter does not match the base model: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A request the engine cannot serve as given. Each message names the limit and the value.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum InputError {
    #[error("text is empty (nothing but whitespace or invisible characters)")]
    EmptyText,
    #[error("input has {actual} tokens, the limit is {limit}")]
    TooManyTokens { actual: usize, limit: usize },
    #[error("token id {id} at position {position} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        id: i64,
        position: usize,
        vocab: usize,
    },
    #[error("{name} is {value}, {expected}")]
    BadParameter {
        name: &'static str,
        value: String,
        expected: String,
    },
    #[error("mode ANSWER needs a prompt")]
    MissingPrompt,
    #[error("no slots given: at least one slot set is needed")]
    NoSlots,
    #[error("slot set {index} has hidden size {actual}, the model's is {expected}")]
    SlotWidth {
        index: usize,
        actual: i64,
        expected: i64,
    },
    #[error("document {index}: {error}")]
    Document {
        index: usize,
        error: Box<InputError>,
    },
    #[error("the decoder context would hold {actual} positions, the limit is {limit}")]
    ContextTooLong { actual: usize, limit: usize },
    /// Found from the slot values' headers, before their data is read.
    #[error(
        "the slot sets hold {slots} slots; with {others} positions for the prompt and \
         max_new_tokens the decoder context would hold at least {} positions, the limit is \
         {limit}",
        slots + others
    )]
    SlotsOverContext {
        slots: usize,
        others: usize,
        limit: usize,
    },
}

/// Errors of the ICAE operations (compress, generate).
#[derive(Debug, Error)]
pub enum IcaeError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
