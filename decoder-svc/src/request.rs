//! A validated generation request, as the pipeline hands it to the scheduler and the
//! scheduler to the model backend.

use icae_core::{Mode, SamplingParams};
use tch::Tensor;

/// What the decoder reads: slot sets (in order) or, for the baseline, the document's tokens.
pub enum ContextSource {
    Slots(Vec<Tensor>),
    Baseline(Vec<u32>),
}

/// A validated request, ready for the model.
pub struct GenerationRequest {
    pub context: ContextSource,
    pub mode: Mode,
    pub prompt_ids: Option<Vec<u32>>,
    pub params: SamplingParams,
}
