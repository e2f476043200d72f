//! What the scheduler needs from the engine: start a request, prefill its prompt chunk by
//! chunk, choose a sequence's next token, and run a batched decoding step. The ICAE model is the real backend; the
//! scheduler's tests use a fake one.

use icae_core::generate::{decode_batch, Step};
use icae_core::{IcaeError, IcaeModel, Sequence};

use crate::request::{ContextSource, GenerationRequest};

pub trait DecodeBackend {
    type Sequence;

    /// Build the decoder's input for `request` without running the model: the prompt is
    /// then prefilled with `prefill_chunk`.
    fn start(&self, request: &GenerationRequest) -> Result<Self::Sequence, IcaeError>;

    /// Run at most `max_positions` more prompt positions through the model, extending the
    /// sequence's cache; returns how many ran. The first token's logits come out of the last
    /// chunk.
    fn prefill_chunk(
        &self,
        sequence: &mut Self::Sequence,
        max_positions: usize,
    ) -> Result<usize, IcaeError>;

    /// Prompt positions not yet prefilled: 0 once the sequence can choose tokens.
    fn prefill_remaining(&self, sequence: &Self::Sequence) -> usize;

    /// Choose the next token of `sequence` from its latest logits.
    fn choose(&self, sequence: &mut Self::Sequence) -> Result<Step, IcaeError>;

    /// Run every sequence's chosen token through the model as one batch.
    fn decode(&self, sequences: &mut [&mut Self::Sequence]) -> Result<(), IcaeError>;

    /// Positions the prefill put in the cache.
    fn prompt_len(&self, sequence: &Self::Sequence) -> usize;

    /// Tokens generated so far.
    fn generated_len(&self, sequence: &Self::Sequence) -> usize;
}

impl DecodeBackend for IcaeModel {
    type Sequence = Sequence;

    fn start(&self, request: &GenerationRequest) -> Result<Sequence, IcaeError> {
        let prompt = request.prompt_ids.as_deref();
        let embeds = match &request.context {
            ContextSource::Slots(slot_sets) => {
                self.decoder_input(slot_sets, request.mode, prompt)?
            }
            ContextSource::Baseline(ids) => self.baseline_input(ids, request.mode, prompt)?,
        };
        Sequence::begin(&self.base, &embeds, request.params.clone(), self.eos_ids())
    }

    fn prefill_chunk(
        &self,
        sequence: &mut Sequence,
        max_positions: usize,
    ) -> Result<usize, IcaeError> {
        sequence.prefill_chunk(&self.base, max_positions)
    }

    fn prefill_remaining(&self, sequence: &Sequence) -> usize {
        sequence.prefill_remaining()
    }

    fn choose(&self, sequence: &mut Sequence) -> Result<Step, IcaeError> {
        sequence.choose(&self.tokenizer)
    }

    fn decode(&self, sequences: &mut [&mut Sequence]) -> Result<(), IcaeError> {
        decode_batch(&self.base, sequences)
    }

    fn prompt_len(&self, sequence: &Sequence) -> usize {
        sequence.prompt_len()
    }

    fn generated_len(&self, sequence: &Sequence) -> usize {
        sequence.generated().len()
    }
}
