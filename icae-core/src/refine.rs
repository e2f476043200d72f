//! Test-time slot refinement: make the slots of a document hold it faithfully by
//! optimising the slot vectors themselves against the frozen decoder.
//!
//! The encoder gives a warm start; refinement then runs Adam on the slots only (no model
//! weight changes, no gradients for weights) against the teacher-forced AUTOENCODE loss of
//! the exact layout the decoder reads, `[slots] [AE] text` → text, EOS, with the LoRA off.
//! The objective per document is
//!
//! ```text
//! mean(nll) + mean(nll over the targets whose argmax is wrong)
//! ```
//!
//! The plain mean lets one hard target sit at several nats while the rest fall (the first
//! token after [AE] is such a target for the default adapter); the second term gives the
//! targets that greedy decoding would still get wrong half of the gradient however few they
//! are, and vanishes once every argmax is right, which is when greedy reconstruction is
//! exact. All documents of a refinement run as one right-padded batch per step (causal
//! attention: no real position sees the padding); Adam is elementwise and each document's
//! loss is its own mean, so a document's result does not depend on its batch.
//!
//! The oracle is `training/icae_train/refine.py` (torch autograd and `torch.optim.Adam` on
//! transformers): the same steps on the same data give the same slots
//! (`tests/training/test_refine_parity.py`).

use tch::{Kind, Tensor};

use crate::adapter::{Adapter, SpecialToken};
use crate::error::{IcaeError, InputError};
use crate::model::LlamaModel;
use crate::slot_dtype::SlotDtype;

/// Adam's constants (PyTorch's defaults, which the oracle uses).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

/// The learning rate when a caller gives none (docs/refinement.md: measured on held-out
/// passages with the default adapter).
pub const DEFAULT_LEARNING_RATE: f64 = 0.1;

/// The largest target loss a request may give.
pub const MAX_TARGET_LOSS: f64 = 100.0;

/// How to refine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefineOptions {
    /// Optimiser steps at most (0: the encoder's slots as they are).
    pub steps: usize,
    /// Stop a document early once its reconstruction loss (nats per token) is at or below
    /// this.
    pub target_loss: Option<f64>,
    pub learning_rate: f64,
}

impl RefineOptions {
    pub fn steps(steps: usize) -> Self {
        RefineOptions {
            steps,
            target_loss: None,
            learning_rate: DEFAULT_LEARNING_RATE,
        }
    }

    /// Refuse values no refinement can use, naming the value.
    pub fn check(&self, max_steps: usize) -> Result<(), InputError> {
        if self.steps > max_steps {
            return Err(InputError::BadParameter {
                name: "refine_steps",
                value: self.steps.to_string(),
                expected: format!("the limit is {max_steps}"),
            });
        }
        if let Some(target) = self.target_loss {
            // Bounded so that the key that names it stays short (a loss above ln(vocab),
            // about 11 nats, is never a useful target anyway).
            if !(0.0..=MAX_TARGET_LOSS).contains(&target) {
                return Err(InputError::BadParameter {
                    name: "target_loss",
                    value: target.to_string(),
                    expected: format!(
                        "expected a number from 0 to {MAX_TARGET_LOSS} (nats per token)"
                    ),
                });
            }
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(InputError::BadParameter {
                name: "learning_rate",
                value: self.learning_rate.to_string(),
                expected: "expected a finite number > 0".into(),
            });
        }
        Ok(())
    }
}

/// What the decoder pass needs: the base model with the LoRA off, the adapter's [AE]
/// token and the end-of-sequence id.
#[derive(Clone, Copy)]
pub struct ReadBackModel<'a> {
    pub base: &'a LlamaModel,
    pub adapter: &'a Adapter,
    pub eos_id: u32,
}

/// A refined document.
pub struct Refined {
    /// `[n, hidden]`, f32, on the model's device.
    pub slots: Tensor,
    /// Optimiser steps run (fewer than asked when the target loss was reached).
    pub steps_run: usize,
    /// Teacher-forced AE loss (nats per token, EOS included) of the slots as stored.
    pub reconstruction_loss: f64,
}

struct Document {
    ids: Vec<u32>,
    /// The f32 master copy the optimiser updates.
    slots: Tensor,
    first_moment: Tensor,
    second_moment: Tensor,
    steps_run: usize,
    /// Finished: the steps are done, the target loss reached, or the client went away.
    done: bool,
    abandoned: bool,
}

/// One refinement in progress: several documents, stepped together. A caller runs
/// [`step`](Self::step) until it returns None (and may do other work between steps), then
/// [`finish`](Self::finish).
pub struct Refinement {
    documents: Vec<Document>,
    options: RefineOptions,
}

/// Progress after a step, for progress bars and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Documents that took an optimiser step in this call.
    pub stepped: usize,
    /// Mean reconstruction loss of the documents read in this call, before their update.
    pub mean_loss: f64,
}

impl Refinement {
    /// `documents`: each document's token ids and its encoder slots (`[n, hidden]`).
    pub fn new(documents: Vec<(Vec<u32>, Tensor)>, options: RefineOptions) -> Self {
        let documents = documents
            .into_iter()
            .map(|(ids, slots)| {
                let slots = slots.detach().to_kind(Kind::Float).copy();
                Document {
                    first_moment: slots.zeros_like(),
                    second_moment: slots.zeros_like(),
                    done: ids.is_empty() || options.steps == 0,
                    ids,
                    slots,
                    steps_run: 0,
                    abandoned: false,
                }
            })
            .collect();
        Refinement { documents, options }
    }

    /// True while some document still has steps to run.
    pub fn is_running(&self) -> bool {
        self.documents.iter().any(|d| !d.done)
    }

    /// One optimiser step for every document still running and still `wanted` (documents
    /// whose client went away are dropped here, and come back `None` from `finish`).
    /// Returns None when no document took a step.
    pub fn step(
        &mut self,
        model: ReadBackModel<'_>,
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Option<StepReport>, IcaeError> {
        for (index, document) in self.documents.iter_mut().enumerate() {
            if !document.done && !wanted(index) {
                document.done = true;
                document.abandoned = true;
            }
        }
        let active: Vec<usize> = (0..self.documents.len())
            .filter(|&i| !self.documents[i].done)
            .collect();
        if active.is_empty() {
            return Ok(None);
        }
        let leaves: Vec<Tensor> = active
            .iter()
            .map(|&i| self.documents[i].slots.set_requires_grad(true))
            .collect();
        let inputs: Vec<(&[u32], &Tensor)> = active
            .iter()
            .zip(&leaves)
            .map(|(&i, slots)| (self.documents[i].ids.as_slice(), slots))
            .collect();
        let read = read_back(model, &inputs)?;
        let losses = read.mean_losses();

        // Documents at their target stop before the update.
        let mut weights = vec![0f32; read.right.len()];
        let mut stepping = Vec::new();
        for (row, &index) in active.iter().enumerate() {
            let reached = self.options.target_loss.is_some_and(|t| losses[row] <= t);
            if reached {
                self.documents[index].done = true;
                continue;
            }
            read.objective_weights(row, &mut weights);
            stepping.push(row);
        }
        let mean_loss = losses.iter().sum::<f64>() / losses.len() as f64;
        if stepping.is_empty() {
            return Ok(Some(StepReport {
                stepped: 0,
                mean_loss,
            }));
        }
        let device = read.nll.device();
        let objective =
            (&read.nll * Tensor::from_slice(&weights).to_device(device)).sum(Kind::Float);
        let stepping_leaves: Vec<&Tensor> = stepping.iter().map(|&row| &leaves[row]).collect();
        let gradients = Tensor::f_run_backward(&[objective], &stepping_leaves, false, false)?;
        let _guard = tch::no_grad_guard();
        for (&row, gradient) in stepping.iter().zip(&gradients) {
            let document = &mut self.documents[active[row]];
            let learning_rate = scheduled_rate(&self.options, document.steps_run);
            adam_update(document, gradient, learning_rate);
            document.steps_run += 1;
            if document.steps_run >= self.options.steps {
                document.done = true;
            }
        }
        Ok(Some(StepReport {
            stepped: stepping.len(),
            mean_loss,
        }))
    }

    /// The refined documents (None for those whose client went away), their
    /// reconstruction loss measured on the slots as stored in `storage`.
    pub fn finish(
        self,
        model: ReadBackModel<'_>,
        storage: SlotDtype,
    ) -> Result<Vec<Option<Refined>>, IcaeError> {
        let kept: Vec<(usize, Tensor)> = self
            .documents
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.abandoned)
            .map(|(i, d)| (i, storage.cast(&d.slots.detach()).to_kind(Kind::Float)))
            .collect();
        let inputs: Vec<(&[u32], &Tensor)> = kept
            .iter()
            .map(|(i, slots)| (self.documents[*i].ids.as_slice(), slots))
            .collect();
        let losses = reconstruction_losses(model, &inputs)?;
        let mut out: Vec<Option<Refined>> = self.documents.iter().map(|_| None).collect();
        for ((index, slots), loss) in kept.into_iter().zip(losses) {
            out[index] = Some(Refined {
                slots,
                steps_run: self.documents[index].steps_run,
                reconstruction_loss: loss,
            });
        }
        Ok(out)
    }
}

/// The learning rate of step `step` (from 0): a cosine from `learning_rate` down to 0 over
/// the steps asked for. A constant rate keeps Adam's normalised steps at full size to the
/// end, so the last few targets read wrong keep knocking others over; decaying it lets the
/// slots settle (docs/refinement.md).
pub fn scheduled_rate(options: &RefineOptions, step: usize) -> f64 {
    let progress = step as f64 / options.steps.max(1) as f64;
    options.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// PyTorch's Adam step (`torch.optim.Adam`, no weight decay), in f32.
fn adam_update(document: &mut Document, gradient: &Tensor, learning_rate: f64) {
    let step = (document.steps_run + 1) as i32;
    let gradient = gradient.to_kind(Kind::Float);
    let _ = document.first_moment.lerp_(&gradient, 1.0 - BETA1);
    let _ = document.second_moment.g_mul_scalar_(BETA2);
    let _ = document
        .second_moment
        .g_add_(&(gradient.square() * (1.0 - BETA2)));
    let bias1 = 1.0 - BETA1.powi(step);
    let bias2 = 1.0 - BETA2.powi(step);
    let denominator = document.second_moment.sqrt() / bias2.sqrt() + EPSILON;
    let update = &document.first_moment / denominator * (learning_rate / bias1);
    let _ = document.slots.g_sub_(&update);
}

/// Teacher-forced AE loss (nats per token, EOS included) of reading each document back from
/// its slots: one batched forward without gradients.
pub fn reconstruction_losses(
    model: ReadBackModel<'_>,
    documents: &[(&[u32], &Tensor)],
) -> Result<Vec<f64>, IcaeError> {
    if documents.is_empty() {
        return Ok(Vec::new());
    }
    let _guard = tch::no_grad_guard();
    Ok(read_back(model, documents)?.mean_losses())
}

/// The decoder's teacher-forced reading of a batch of documents.
struct ReadBack {
    /// Per target, all documents one after another: `[targets]`, f32.
    nll: Tensor,
    /// Each document's targets: `ranges[d]` = (first index, count).
    ranges: Vec<(usize, usize)>,
    nll_values: Vec<f32>,
    /// Whether the argmax of each target is right.
    right: Vec<bool>,
}

impl ReadBack {
    fn mean_losses(&self) -> Vec<f64> {
        self.ranges
            .iter()
            .map(|&(start, count)| {
                let sum: f64 = self.nll_values[start..start + count]
                    .iter()
                    .map(|&v| v as f64)
                    .sum();
                sum / count as f64
            })
            .collect()
    }

    /// Write document `row`'s objective weights: `1/n` on every target plus `1/w` on each of
    /// the `w` targets whose argmax is wrong.
    fn objective_weights(&self, row: usize, weights: &mut [f32]) {
        let (start, count) = self.ranges[row];
        let right = &self.right[start..start + count];
        let wrong = right.iter().filter(|&&r| !r).count();
        for (offset, &is_right) in right.iter().enumerate() {
            let mut w = 1.0 / count as f64;
            if !is_right {
                w += 1.0 / wrong as f64;
            }
            weights[start + offset] = w as f32;
        }
    }
}

/// Run the frozen decoder (LoRA off) over `[slots] [AE] ids` for every document as one
/// right-padded batch and score `ids ++ [EOS]` at the positions that predict them.
fn read_back(
    model: ReadBackModel<'_>,
    documents: &[(&[u32], &Tensor)],
) -> Result<ReadBack, IcaeError> {
    let base = model.base;
    let device = base.device;
    let hidden = base.hidden_size();
    let ae = model
        .adapter
        .special(SpecialToken::Autoencode)
        .to_kind(base.kind);
    let lengths: Vec<i64> = documents
        .iter()
        .map(|(ids, slots)| slots.size()[0] + 1 + ids.len() as i64)
        .collect();
    let width = lengths.iter().copied().max().unwrap_or(0);
    let mut rows = Vec::with_capacity(documents.len());
    let mut select = Vec::new();
    let mut targets = Vec::new();
    let mut ranges = Vec::with_capacity(documents.len());
    for (row, ((ids, slots), &length)) in documents.iter().zip(&lengths).enumerate() {
        if ids.is_empty() {
            return Err(InputError::EmptyText.into());
        }
        let size = slots.size();
        if size.len() != 2 || size[1] != hidden {
            return Err(InputError::SlotWidth {
                index: row,
                actual: size.last().copied().unwrap_or(0),
                expected: hidden,
            }
            .into());
        }
        let ids_i64: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let mut parts = vec![
            slots.to_device(device).to_kind(base.kind),
            ae.shallow_clone(),
            base.embed(&Tensor::from_slice(&ids_i64)),
        ];
        if length < width {
            parts.push(Tensor::zeros([width - length, hidden], (base.kind, device)));
        }
        rows.push(Tensor::cat(&parts, 0));
        // The position holding [AE] predicts the first token; the last token predicts EOS.
        let first = row as i64 * width + size[0];
        ranges.push((select.len(), ids.len() + 1));
        select.extend(first..first + ids.len() as i64 + 1);
        targets.extend(ids_i64.iter().copied().chain([model.eos_id as i64]));
    }
    let batch = documents.len() as i64;
    let embeds = Tensor::stack(&rows, 0);
    let positions = Tensor::arange(width, (Kind::Int64, device))
        .unsqueeze(0)
        .expand([batch, width], false);
    let states = base.forward(&embeds, &positions, None, None, None);
    let picked = states
        .view([batch * width, hidden])
        .index_select(0, &Tensor::from_slice(&select).to_device(device));
    let logits = base.logits(&picked);
    let target_ids = Tensor::from_slice(&targets).to_device(device).unsqueeze(1);
    let nll = -logits
        .log_softmax(-1, Kind::Float)
        .gather(1, &target_ids, false)
        .squeeze_dim(1);
    // Read right when the target's logit is the largest (a target tied for the top counts
    // as right): the largest value is a vectorised reduction, an argmax over the vocabulary
    // is not (on CPU it was a noticeable part of a short document's step).
    let scores = logits.detach();
    let right = scores
        .gather(1, &target_ids, false)
        .ge_tensor(&scores.amax([-1i64].as_slice(), true))
        .squeeze_dim(1);
    let nll_values = Vec::<f32>::try_from(nll.detach().to_device(tch::Device::Cpu))?;
    let right = Vec::<bool>::try_from(right.to_device(tch::Device::Cpu))?;
    Ok(ReadBack {
        nll,
        ranges,
        nll_values,
        right,
    })
}
