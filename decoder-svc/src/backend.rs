//! What the scheduler needs from the engine: prefill a request, choose a sequence's next
//! token, and run a batched decoding step. The ICAE model is the real backend; the
//! scheduler's tests use a fake one.

use icae_core::generate::{decode_batch, Step};
use icae_core::{IcaeError, IcaeModel, Sequence};

use crate::scheduler::{ContextSource, GenerationRequest};

pub trait DecodeBackend {
    type Sequence;

    /// Build the decoder's input for `request` and run it through the model; the first
    /// token's logits come out of this prefill.
    fn prefill(&self, request: &GenerationRequest) -> Result<Self::Sequence, IcaeError>;

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

    fn prefill(&self, request: &GenerationRequest) -> Result<Sequence, IcaeError> {
        let prompt = request.prompt_ids.as_deref();
        let embeds = match &request.context {
            ContextSource::Slots(slot_sets) => {
                self.decoder_input(slot_sets, request.mode, prompt)?
            }
            ContextSource::Baseline(ids) => self.baseline_input(ids, request.mode, prompt)?,
        };
        Sequence::start(&self.base, &embeds, request.params.clone(), self.eos_ids())
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
