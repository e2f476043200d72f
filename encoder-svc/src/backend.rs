//! What the batcher needs from the engine: compress a batch of documents. The ICAE model is
//! the real backend — with its LoRA merged into the weights (the default: this process
//! never decodes) or not (`--merge-lora false`); the batcher's tests use a fake one.

use icae_core::{Compressed, EncodeOnlyModel, IcaeError, IcaeModel};

pub trait CompressBackend {
    /// Compress every document (token ids) into slots on the CPU, in order. Between model
    /// calls the backend asks `wanted(document)`; documents no longer wanted may be left
    /// out (`None`), so abandoned work stops early.
    fn compress(
        &self,
        documents: &[&[u32]],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError>;
}

/// The loaded model, as `--merge-lora` chose.
pub enum EncoderModel {
    Merged(EncodeOnlyModel),
    Unmerged(IcaeModel),
}

impl EncoderModel {
    pub fn new(icae: IcaeModel, merge_lora: bool) -> Self {
        if merge_lora {
            EncoderModel::Merged(icae.merge_lora_for_encoding())
        } else {
            EncoderModel::Unmerged(icae)
        }
    }
}

impl CompressBackend for EncoderModel {
    fn compress(
        &self,
        documents: &[&[u32]],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError> {
        let compressed = match self {
            EncoderModel::Merged(model) => model.compress_wanted(documents, wanted)?,
            EncoderModel::Unmerged(model) => model.compress_wanted(documents, wanted)?,
        };
        Ok(compressed
            .into_iter()
            .map(|c| {
                c.map(|c| Compressed {
                    slots: c.slots.to_device(tch::Device::Cpu),
                    ..c
                })
            })
            .collect())
    }
}
