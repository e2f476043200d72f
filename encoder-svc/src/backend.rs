//! What the batcher needs from the engine: compress a batch of documents, and refine or
//! score their slots step by step. The ICAE model is the real backend — with its LoRA merged
//! into the weights (the default: this process never decodes; the base weights LoRA changes
//! are kept when refinement is on) or not (`--merge-lora false`); the batcher's tests use a
//! fake one.

use icae_core::{
    Compressed, EncodeOnlyModel, IcaeError, IcaeModel, ModelError, RefineOptions, Refined,
    Refinement, SlotDtype, ToCompress,
};
use tch::Tensor;

pub trait CompressBackend {
    /// A refinement in progress.
    type Refining;

    /// Compress every document (token ids, slots per segment) into slots on the CPU, in
    /// order. Between model calls the backend asks `wanted(document)`; documents no longer
    /// wanted may be left out (`None`), so abandoned work stops early.
    fn compress(
        &self,
        documents: &[ToCompress],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError>;

    /// Begin refining documents (token ids and their encoder slots); with 0 steps only
    /// their reconstruction loss is measured, by `finish_refining`.
    fn start_refining(
        &self,
        documents: Vec<(Vec<u32>, Tensor)>,
        options: RefineOptions,
    ) -> Self::Refining;

    /// One optimiser step for every document still running and `wanted`; false once no
    /// document has a step left.
    fn refine_step(
        &self,
        refining: &mut Self::Refining,
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<bool, IcaeError>;

    /// The refined documents on the CPU (None: no longer wanted), each with the
    /// reconstruction loss of its slots as stored.
    fn finish_refining(&self, refining: Self::Refining) -> Result<Vec<Option<Refined>>, IcaeError>;
}

/// The loaded model, as `--merge-lora` chose, and the dtype slots are stored in (the
/// reconstruction loss is measured on the stored values).
pub struct EncoderModel {
    model: LoadedModel,
    slot_dtype: SlotDtype,
}

enum LoadedModel {
    Merged(Box<EncodeOnlyModel>),
    Unmerged(Box<IcaeModel>),
}

impl EncoderModel {
    /// `refines`: keep what refinement's decoder pass needs (the base weights under a
    /// merged LoRA).
    pub fn new(icae: IcaeModel, merge_lora: bool, refines: bool, slot_dtype: SlotDtype) -> Self {
        let model = match (merge_lora, refines) {
            (true, true) => LoadedModel::Merged(Box::new(icae.merge_lora_keeping_base())),
            (true, false) => LoadedModel::Merged(Box::new(icae.merge_lora_for_encoding())),
            (false, _) => LoadedModel::Unmerged(Box::new(icae)),
        };
        EncoderModel { model, slot_dtype }
    }

    fn read_back_model(&self) -> Result<icae_core::refine::ReadBackModel<'_>, IcaeError> {
        match &self.model {
            LoadedModel::Merged(model) => model.read_back_model().unwrap_or_else(|| {
                Err(ModelError::Config(
                    "refinement is off in this encoder (--max-refine-steps 0)".into(),
                )
                .into())
            }),
            LoadedModel::Unmerged(model) => model.read_back_model(),
        }
    }
}

impl CompressBackend for EncoderModel {
    type Refining = Refinement;

    fn compress(
        &self,
        documents: &[ToCompress],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError> {
        let compressed = match &self.model {
            LoadedModel::Merged(model) => model.compress_wanted(documents, wanted)?,
            LoadedModel::Unmerged(model) => model.compress_wanted(documents, wanted)?,
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

    fn start_refining(
        &self,
        documents: Vec<(Vec<u32>, Tensor)>,
        options: RefineOptions,
    ) -> Refinement {
        let device = match &self.model {
            LoadedModel::Merged(model) => model.device(),
            LoadedModel::Unmerged(model) => model.device(),
        };
        let documents = documents
            .into_iter()
            .map(|(ids, slots)| (ids, slots.to_device(device)))
            .collect();
        Refinement::new(documents, options)
    }

    fn refine_step(
        &self,
        refining: &mut Refinement,
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<bool, IcaeError> {
        refining.step(self.read_back_model()?, wanted)?;
        Ok(refining.is_running())
    }

    fn finish_refining(&self, refining: Refinement) -> Result<Vec<Option<Refined>>, IcaeError> {
        let refined = refining.finish(self.read_back_model()?, self.slot_dtype)?;
        Ok(refined
            .into_iter()
            .map(|r| {
                r.map(|r| Refined {
                    slots: r.slots.to_device(tch::Device::Cpu),
                    ..r
                })
            })
            .collect())
    }
}
