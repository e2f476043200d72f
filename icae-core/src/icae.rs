//! The In-context Autoencoder on top of the engine: compression by segments exactly as the
//! official `_compress`, and the decoder input layouts of each mode.

use std::ops::Range;
use std::path::Path;
use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::adapter::{Adapter, LoadOptions, SpecialToken};
use crate::device::{kind_name, DeviceSpec, DtypeSpec};
use crate::error::{IcaeError, InputError, ModelError};
use crate::fingerprint::{base_fingerprint, icae_fingerprint, IcaeIdentity};
use crate::generate::{FinishReason, SamplingParams, Sequence};
use crate::model::{LlamaModel, LoraWeights};
use crate::refine::ReadBackModel;
use crate::tokenizer::{ChatPieces, TextTokenizer};

/// Segments compressed in one forward pass (bounds activation memory on long documents).
const MAX_SEGMENTS_PER_BATCH: usize = 16;

/// What the decoder is asked to do with the slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `[slots] ++ [AE]` → the original text.
    Autoencode,
    /// `[slots]` (optionally `++ [LM]`) → a continuation.
    Continue,
    /// `prefix ++ [slots] ++ [FT] ++ prompt ++ suffix` → an answer.
    Answer,
}

impl FromStr for Mode {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, InputError> {
        match s.to_ascii_lowercase().as_str() {
            "autoencode" | "ae" => Ok(Mode::Autoencode),
            "continue" | "lm" => Ok(Mode::Continue),
            "answer" | "ft" => Ok(Mode::Answer),
            _ => Err(InputError::BadParameter {
                name: "mode",
                value: format!("\"{s}\""),
                expected: "expected autoencode, continue or answer".into(),
            }),
        }
    }
}

/// A document to compress: its token ids, and how many of the adapter's memory tokens each
/// of its segments gets: `mem_size` for ICAE as trained, fewer for a higher compression rate
/// (the segments stay `mem_size * compression_rate` tokens long; see docs/refinement.md).
#[derive(Debug, Clone)]
pub struct ToCompress<'a> {
    pub ids: &'a [u32],
    pub slots_per_segment: usize,
    /// The segments to compress, all when None: a long document can be compressed a few
    /// segments at a time (its slots are then the concatenation of the parts, in order).
    pub segments: Option<Range<usize>>,
}

impl<'a> ToCompress<'a> {
    /// All of `ids`, `slots_per_segment` slots per segment.
    pub fn whole(ids: &'a [u32], slots_per_segment: usize) -> Self {
        ToCompress {
            ids,
            slots_per_segment,
            segments: None,
        }
    }
}

/// The result of compressing one document.
pub struct Compressed {
    /// `[num_segments * slots_per_segment, hidden]`.
    pub slots: Tensor,
    pub num_tokens: usize,
    pub num_segments: usize,
}

/// Base model, tokenizer and adapter loaded together; the base weights are shared by the
/// encoder (LoRA on) and the decoder (LoRA off).
pub struct IcaeModel {
    pub base: LlamaModel,
    pub tokenizer: TextTokenizer,
    pub adapter: Adapter,
    pub base_fingerprint: String,
    pub fingerprint: String,
}

impl IcaeModel {
    pub fn load(
        model_dir: &Path,
        adapter_path: &Path,
        options: &LoadOptions,
        device: DeviceSpec,
        dtype: DtypeSpec,
    ) -> Result<Self, IcaeError> {
        let device = device.resolve()?;
        let kind = dtype.resolve(device);
        let base = LlamaModel::load(model_dir, device, kind)?;
        let tokenizer = TextTokenizer::load(model_dir)?;
        let adapter = Adapter::load(
            adapter_path,
            &base.config,
            options,
            tokenizer.chat_pieces(),
            device,
            kind,
        )?;
        let base_fingerprint = base_fingerprint(model_dir)?;
        let fingerprint = icae_fingerprint(&IcaeIdentity {
            base_fingerprint: &base_fingerprint,
            adapter_digest: &adapter.digest,
            mem_size: adapter.config.mem_size,
            compression_rate: adapter.config.compression_rate,
            lora_alpha: adapter.config.lora_alpha,
            dtype: kind_name(kind),
        });
        Ok(IcaeModel {
            base,
            tokenizer,
            adapter,
            base_fingerprint,
            fingerprint,
        })
    }

    pub fn device(&self) -> Device {
        self.base.device
    }

    pub fn kind(&self) -> Kind {
        self.base.kind
    }

    /// Check token ids a client sent before they reach the embedding table.
    pub fn check_token_ids(&self, ids: &[u32], limit: usize) -> Result<(), InputError> {
        check_token_ids(ids, limit, self.base.config.vocab_size)
    }

    /// What a service reports about the loaded model and computes keys with.
    pub fn summary(&self, model_dir: &Path, adapter_path: &Path) -> ModelSummary {
        ModelSummary {
            model: model_dir.display().to_string(),
            adapter: adapter_path.display().to_string(),
            adapter_trained: self.adapter.config.trained,
            fingerprint: self.fingerprint.clone(),
            hidden_size: self.base.config.hidden_size,
            vocab_size: self.base.config.vocab_size,
            context_length: self.base.config.max_position_embeddings,
            mem_size: self.adapter.config.mem_size,
            compression_rate: self.adapter.config.compression_rate,
            device: format!("{:?}", self.device()),
            dtype: kind_name(self.kind()).to_string(),
            kv_bytes_per_position: crate::model::KvCache::bytes_for(
                1,
                self.base.config.num_hidden_layers as i64,
                self.base.config.kv_heads() as i64,
                self.base.config.head_dim() as i64,
                self.kind(),
            ) as u64,
        }
    }

    /// Number of segments the official algorithm cuts `num_tokens` into.
    pub fn num_segments(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.adapter.segment_capacity())
    }

    /// Compress token ids into memory slots (LoRA on; the adapter's slot projector, if any,
    /// applied).
    pub fn compress(&self, ids: &[u32]) -> Result<Compressed, IcaeError> {
        let mut all = self.compress_many(&[ids])?;
        Ok(all.remove(0))
    }

    /// Compress several documents. Segments of equal length — within a document and across
    /// documents — run as one batch; each is computed exactly as alone (positions from 0,
    /// causal attention), as in the official `_compress`.
    pub fn compress_many(&self, documents: &[&[u32]]) -> Result<Vec<Compressed>, IcaeError> {
        let documents = self.at_trained_rate(documents);
        let all = self.compress_wanted(&documents, &|_| true)?;
        Ok(all.into_iter().flatten().collect())
    }

    /// `documents` with every segment given all `mem_size` memory tokens, as trained.
    pub fn at_trained_rate<'a>(&self, documents: &[&'a [u32]]) -> Vec<ToCompress<'a>> {
        let slots_per_segment = self.adapter.mem_size();
        documents
            .iter()
            .map(|&ids| ToCompress::whole(ids, slots_per_segment))
            .collect()
    }

    /// Refuse a number of slots per segment the adapter cannot give: each slot is one of
    /// its memory tokens.
    pub fn check_slots_per_segment(&self, slots_per_segment: usize) -> Result<(), InputError> {
        check_slots_per_segment(slots_per_segment, self.adapter.mem_size())
    }

    /// [`compress_many`](Self::compress_many), asking `wanted(document)` before each model
    /// call: the segments of documents no longer wanted (their client went away) are
    /// skipped, and such documents come back `None`. A caller can thus stop abandoned work
    /// within one batch of segments.
    pub fn compress_wanted(
        &self,
        documents: &[ToCompress],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError> {
        self.compress_with(documents, wanted, Some(&self.adapter.lora))
    }

    /// [`compress_wanted`](Self::compress_wanted) with `lora` added to the base projections
    /// (None once it is merged into them).
    pub(crate) fn compress_with(
        &self,
        documents: &[ToCompress],
        wanted: &dyn Fn(usize) -> bool,
        lora: Option<&LoraWeights>,
    ) -> Result<Vec<Option<Compressed>>, IcaeError> {
        for doc in documents {
            if doc.ids.is_empty() {
                return Err(InputError::EmptyText.into());
            }
            self.check_slots_per_segment(doc.slots_per_segment)?;
        }
        let _guard = tch::no_grad_guard();
        // (document, segment, memory tokens, ids) grouped by segment shape.
        let mut segments: Vec<(usize, usize, usize, &[u32])> = Vec::new();
        let mut counts = Vec::with_capacity(documents.len());
        for (doc, input) in documents.iter().enumerate() {
            let ids = input.ids;
            let num_segments = self.num_segments(ids.len());
            let wanted = input.segments.clone().unwrap_or(0..num_segments);
            if wanted.is_empty() || wanted.end > num_segments {
                return Err(InputError::BadParameter {
                    name: "segments",
                    value: format!("{wanted:?}"),
                    expected: format!("must be a non-empty range within 0..{num_segments}"),
                }
                .into());
            }
            let seg_len = ids.len().div_ceil(num_segments);
            let chosen = ids.chunks(seg_len).enumerate().skip(wanted.start);
            for (seg, chunk) in chosen.take(wanted.len()) {
                segments.push((doc, seg - wanted.start, input.slots_per_segment, chunk));
            }
            counts.push(wanted.len());
        }
        segments.sort_by_key(|&(doc, seg, k, chunk)| (k, chunk.len(), doc, seg));

        let mut outputs: Vec<Vec<Option<Tensor>>> = counts
            .iter()
            .map(|&n| (0..n).map(|_| None).collect())
            .collect();
        for group in segments.chunk_by(|a, b| (a.2, a.3.len()) == (b.2, b.3.len())) {
            for chunk in group.chunks(MAX_SEGMENTS_PER_BATCH) {
                let batch_segments: Vec<_> =
                    chunk.iter().copied().filter(|s| wanted(s.0)).collect();
                if batch_segments.is_empty() {
                    continue;
                }
                // The first k memory tokens: a segment read at a higher rate keeps the
                // positions and embeddings its first k slots have at the trained rate.
                let k = batch_segments[0].2 as i64;
                let memory = self.adapter.memory_tokens().narrow(0, 0, k);
                let len = batch_segments[0].3.len() as i64;
                let batch = batch_segments.len() as i64;
                let flat: Vec<i64> = batch_segments
                    .iter()
                    .flat_map(|s| s.3.iter().map(|&t| t as i64))
                    .collect();
                let token_ids = Tensor::from_slice(&flat).view([batch, len]);
                let embeds = Tensor::cat(
                    &[
                        self.base.embed(&token_ids),
                        memory.unsqueeze(0).expand([batch, k, -1], false),
                    ],
                    1,
                );
                let positions = Tensor::arange(len + k, (Kind::Int64, self.device()))
                    .unsqueeze(0)
                    .expand([batch, len + k], false);
                let hidden = self.base.forward(&embeds, &positions, None, None, lora);
                let slots = hidden.narrow(1, len, k);
                // Slots leave the encoder projected: what is stored and sent is what the
                // decoder reads (see adapter/projector.rs).
                let slots = match &self.adapter.slot_projector {
                    Some(projector) => projector.apply(&slots),
                    None => slots,
                };
                for (row, &(doc, seg, _, _)) in batch_segments.iter().enumerate() {
                    outputs[doc][seg] = Some(slots.get(row as i64));
                }
            }
        }
        Ok(outputs
            .into_iter()
            .zip(documents)
            .map(|(parts, doc)| {
                // A skipped segment leaves the whole document unfinished.
                let parts: Vec<Tensor> = parts.into_iter().collect::<Option<_>>()?;
                Some(Compressed {
                    num_segments: parts.len(),
                    slots: Tensor::cat(&parts, 0),
                    num_tokens: doc.ids.len(),
                })
            })
            .collect())
    }

    /// The decoder's input embeddings `[1, len, hidden]` for `slot_sets` (each `[n, hidden]`,
    /// in order) in `mode`. `prompt_ids` is required for ANSWER.
    pub fn decoder_input(
        &self,
        slot_sets: &[Tensor],
        mode: Mode,
        prompt_ids: Option<&[u32]>,
    ) -> Result<Tensor, IcaeError> {
        if slot_sets.is_empty() {
            return Err(InputError::NoSlots.into());
        }
        let hidden = self.base.hidden_size();
        for (index, set) in slot_sets.iter().enumerate() {
            let size = set.size();
            if size.len() != 2 || size[1] != hidden {
                return Err(InputError::SlotWidth {
                    index,
                    actual: size.last().copied().unwrap_or(0),
                    expected: hidden,
                }
                .into());
            }
        }
        let slots: Vec<Tensor> = slot_sets
            .iter()
            .map(|s| s.to_device(self.device()).to_kind(self.kind()))
            .collect();
        let mut parts: Vec<Tensor> = Vec::new();
        match mode {
            Mode::Autoencode => {
                parts.extend(slots);
                parts.push(self.adapter.special(SpecialToken::Autoencode));
            }
            Mode::Continue => {
                parts.extend(slots);
                if self.adapter.config.continue_with_lm_token {
                    parts.push(self.adapter.special(SpecialToken::LanguageModel));
                }
            }
            Mode::Answer => {
                let prompt = prompt_ids
                    .filter(|p| !p.is_empty())
                    .ok_or(InputError::MissingPrompt)?;
                let chat = self.chat()?;
                parts.push(self.embed_ids(&chat.prefix_ids));
                parts.extend(slots);
                parts.push(self.adapter.special(SpecialToken::FineTune));
                parts.push(self.embed_ids(prompt));
                parts.push(self.embed_ids(&chat.suffix_ids));
            }
        }
        let parts: Vec<Tensor> = parts.into_iter().filter(|p| p.size()[0] > 0).collect();
        Ok(Tensor::cat(&parts, 0).unsqueeze(0))
    }

    /// The uncompressed baseline: the same layout with the document's tokens in place of the
    /// slots and no special token (what the base model sees without ICAE).
    pub fn baseline_input(
        &self,
        document_ids: &[u32],
        mode: Mode,
        prompt_ids: Option<&[u32]>,
    ) -> Result<Tensor, IcaeError> {
        let mut ids: Vec<u32> = Vec::new();
        match mode {
            Mode::Autoencode | Mode::Continue => ids.extend_from_slice(document_ids),
            Mode::Answer => {
                let prompt = prompt_ids
                    .filter(|p| !p.is_empty())
                    .ok_or(InputError::MissingPrompt)?;
                let chat = self.chat()?;
                ids.extend_from_slice(&chat.prefix_ids);
                ids.extend_from_slice(document_ids);
                ids.extend_from_slice(
                    &self
                        .tokenizer
                        .encode_fragment("\n")
                        .map_err(IcaeError::Model)?,
                );
                ids.extend_from_slice(prompt);
                ids.extend_from_slice(&chat.suffix_ids);
            }
        }
        Ok(self.embed_ids(&ids).unsqueeze(0))
    }

    fn chat(&self) -> Result<&ChatPieces, InputError> {
        self.adapter
            .config
            .chat
            .as_ref()
            .ok_or_else(|| InputError::BadParameter {
                name: "mode",
                value: "ANSWER".into(),
                expected: "but the base model has no chat template the adapter knows".into(),
            })
    }

    /// Embeddings `[n, hidden]` of base-vocabulary ids.
    fn embed_ids(&self, ids: &[u32]) -> Tensor {
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        self.base.embed(&Tensor::from_slice(&ids))
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        self.base.config.eos_ids()
    }

    /// What refinement and reconstruction scores read slots back with: the base model with
    /// the LoRA off, the [AE] token and the first end-of-sequence id (the AE target).
    pub fn read_back_model(&self) -> Result<ReadBackModel<'_>, IcaeError> {
        read_back_model(&self.base, &self.adapter)
    }
}

/// The loaded model as services describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    pub model: String,
    pub adapter: String,
    pub adapter_trained: bool,
    pub fingerprint: String,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// Positions the decoder can hold: slots, special tokens, prompt and new tokens.
    pub context_length: usize,
    pub mem_size: usize,
    pub compression_rate: usize,
    pub device: String,
    pub dtype: String,
    pub kv_bytes_per_position: u64,
}

impl ModelSummary {
    /// Segments of a document of `num_tokens` tokens (`mem_size * compression_rate` tokens
    /// each, as [`IcaeModel::num_segments`] cuts them).
    pub fn num_segments(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil((self.mem_size * self.compression_rate).max(1))
    }

    /// Slots of a document of `num_tokens` tokens with `slots_per_segment` slots in each of
    /// its segments.
    pub fn num_slots(&self, num_tokens: usize, slots_per_segment: usize) -> usize {
        self.num_segments(num_tokens) * slots_per_segment
    }
}

/// Slots per segment are the first of the adapter's `mem_size` memory tokens: 1 to all.
pub fn check_slots_per_segment(
    slots_per_segment: usize,
    mem_size: usize,
) -> Result<(), InputError> {
    if (1..=mem_size).contains(&slots_per_segment) {
        return Ok(());
    }
    Err(InputError::BadParameter {
        name: "slots_per_segment",
        value: slots_per_segment.to_string(),
        expected: format!(
            "must be 1..={mem_size}: each slot of a segment is one of the adapter's \
             {mem_size} memory tokens"
        ),
    })
}

/// Refuse empty, too long, or out-of-vocabulary token ids.
pub fn check_token_ids(ids: &[u32], limit: usize, vocab: usize) -> Result<(), InputError> {
    if ids.is_empty() {
        return Err(InputError::EmptyText);
    }
    if ids.len() > limit {
        return Err(InputError::TooManyTokens {
            actual: ids.len(),
            limit,
        });
    }
    match ids.iter().position(|&id| id as usize >= vocab) {
        Some(position) => Err(InputError::TokenOutOfRange {
            id: ids[position] as i64,
            position,
            vocab,
        }),
        None => Ok(()),
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_len: usize,
}

impl IcaeModel {
    /// Decode from `embeds` (`[1, len, hidden]`, from `decoder_input` or `baseline_input`)
    /// until a stop condition, calling `on_delta` with each piece of final text.
    pub fn generate(
        &self,
        embeds: &Tensor,
        params: SamplingParams,
        mut on_delta: impl FnMut(&str),
    ) -> Result<Generation, IcaeError> {
        let mut sequence = Sequence::start(&self.base, embeds, params, self.eos_ids())?;
        let mut text = String::new();
        let mut token_ids = Vec::new();
        loop {
            let step = sequence.step(&self.base, &self.tokenizer)?;
            if !step.text_delta.is_empty() {
                on_delta(&step.text_delta);
                text.push_str(&step.text_delta);
            }
            if step.finished != Some(FinishReason::Eos) {
                token_ids.push(step.token_id);
            }
            if let Some(finish_reason) = step.finished {
                return Ok(Generation {
                    text,
                    token_ids,
                    finish_reason,
                    prompt_len: sequence.prompt_len(),
                });
            }
        }
    }
}

/// [`ReadBackModel`] of a base model (with the LoRA off) and its adapter.
pub(crate) fn read_back_model<'a>(
    base: &'a LlamaModel,
    adapter: &'a Adapter,
) -> Result<ReadBackModel<'a>, IcaeError> {
    let eos_id = base.config.eos_ids().first().copied().ok_or_else(|| {
        ModelError::Config("the model names no end-of-sequence token to read slots back to".into())
    })?;
    Ok(ReadBackModel {
        base,
        adapter,
        eos_id,
    })
}
