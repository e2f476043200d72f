//! An ICAE model that only compresses, with its LoRA merged into the base weights.
//!
//! The encoder runs the base model plus LoRA on every projection LoRA targets: two extra
//! thin matmuls per target and layer on every forward. A process that never decodes (the
//! encoder service) can fold the deltas into the weights once at load, `W + scale * B A`,
//! and run the plain base forward. The slots are the same up to float rounding, so the
//! fingerprint — which names the model, adapter and dtype, not how the sum is computed —
//! does not change, and slots from merged and unmerged encoders are interchangeable.
//!
//! The merged weights are no longer the base model the decoder needs (it runs with LoRA
//! off). Merging therefore consumes the `IcaeModel` and returns an `EncodeOnlyModel`,
//! which has no decoding methods and no access to its base model: decoding after merging
//! does not compile.
//!
//! ```no_run
//! # fn decode(model: icae_core::IcaeModel, embeds: &tch::Tensor) {
//! // The unmerged model decodes …
//! let _ = model.generate(embeds, icae_core::SamplingParams::greedy(1), |_| {});
//! # }
//! ```
//!
//! ```compile_fail
//! # fn decode(model: icae_core::IcaeModel, embeds: &tch::Tensor) {
//! // … the merged one cannot.
//! let model = model.merge_lora_for_encoding();
//! let _ = model.generate(embeds, icae_core::SamplingParams::greedy(1), |_| {});
//! # }
//! ```
//!
//! ```compile_fail
//! # fn decode(model: icae_core::IcaeModel) {
//! // Nor can its merged base model be reached to decode with.
//! let model = model.merge_lora_for_encoding();
//! let _ = &model.base;
//! # }
//! ```

use tch::{Device, Kind};

use crate::error::IcaeError;
use crate::icae::{read_back_model, Compressed, IcaeModel, ToCompress};
use crate::model::LlamaModel;
use crate::refine::ReadBackModel;

/// An ICAE model whose LoRA is merged into its weights: it compresses, and — when it kept
/// the base weights — scores and refines slots, nothing else.
pub struct EncodeOnlyModel {
    icae: IcaeModel,
    /// The unmerged base model (sharing every matrix the merge left alone), kept when the
    /// process also refines slots: the decoder pass of refinement runs the base model.
    base: Option<LlamaModel>,
}

impl IcaeModel {
    /// Merge the adapter's LoRA into the base weights for a process that only encodes
    /// (see the [module](crate::encode_only) comment). The merge is computed in f32 and
    /// rounded once to the model's dtype, so it is as exact in bf16 as the dtype allows.
    pub fn merge_lora_for_encoding(self) -> EncodeOnlyModel {
        self.merge(false)
    }

    /// [`merge_lora_for_encoding`](Self::merge_lora_for_encoding), keeping the base weights
    /// of the matrices LoRA targets for refinement's decoder pass (with LoRA on q and v:
    /// one more copy of each layer's stacked q, k, v matrix).
    pub fn merge_lora_keeping_base(self) -> EncodeOnlyModel {
        self.merge(true)
    }

    fn merge(mut self, keep_base: bool) -> EncodeOnlyModel {
        let base = keep_base.then(|| self.base.shallow_clone());
        self.base.merge_lora(&self.adapter.lora);
        // The deltas now live in the weights: drop them, so nothing can add them twice.
        self.adapter.lora.layers.clear();
        EncodeOnlyModel { icae: self, base }
    }
}

impl EncodeOnlyModel {
    /// [`IcaeModel::compress`].
    pub fn compress(&self, ids: &[u32]) -> Result<Compressed, IcaeError> {
        let mut all = self.compress_many(&[ids])?;
        Ok(all.remove(0))
    }

    /// [`IcaeModel::compress_many`].
    pub fn compress_many(&self, documents: &[&[u32]]) -> Result<Vec<Compressed>, IcaeError> {
        let documents = self.icae.at_trained_rate(documents);
        let all = self.compress_wanted(&documents, &|_| true)?;
        Ok(all.into_iter().flatten().collect())
    }

    /// [`IcaeModel::compress_wanted`], on the merged weights.
    pub fn compress_wanted(
        &self,
        documents: &[ToCompress],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError> {
        self.icae.compress_with(documents, wanted, None)
    }

    /// The same fingerprint as before merging: slots of merged and unmerged encoders are
    /// interchangeable.
    pub fn fingerprint(&self) -> &str {
        &self.icae.fingerprint
    }

    pub fn kind(&self) -> Kind {
        self.icae.kind()
    }

    pub fn device(&self) -> Device {
        self.icae.device()
    }

    /// What refinement reads slots back with, when the base weights were kept.
    pub fn read_back_model(&self) -> Option<Result<ReadBackModel<'_>, IcaeError>> {
        self.base
            .as_ref()
            .map(|base| read_back_model(base, &self.icae.adapter))
    }
}
