//! LoRA deltas applied on top of the frozen base projections (`y += scale * B(A(x))`).
//! They live beside the base weights, so one process can run the same base model with
//! LoRA (encoder) and without (decoder) without copying anything. A process that only
//! encodes may instead fold them into the weights once (`merged_weight`,
//! `IcaeModel::merge_lora_for_encoding`).

use std::fmt;
use std::str::FromStr;

use tch::Tensor;

/// A projection LoRA can attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module path below `model.layers.{i}.` in HF / PEFT names.
    pub fn module_path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// The PEFT `target_modules` name.
    pub fn name(self) -> &'static str {
        let path = self.module_path();
        &path[path.find('.').map_or(0, |i| i + 1)..]
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown LoRA target module \"{s}\" (known: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"))
    }
}

/// One LoRA pair: `a` is `[r, in]`, `b` is `[out, r]`.
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// LoRA deltas for every layer, already in the model's device and dtype.
pub struct LoraWeights {
    pub scale: f64,
    pub rank: i64,
    /// `layers[i]` holds the pairs of layer `i`, indexed by target.
    pub layers: Vec<Vec<(Target, LoraPair)>>,
}

impl LoraWeights {
    pub(crate) fn pair(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.layers
            .get(layer)?
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, pair)| pair)
    }

    pub fn delta(&self, layer: usize, target: Target, x: &Tensor) -> Option<Tensor> {
        self.pair(layer, target).map(|pair| {
            x.linear::<Tensor>(&pair.a, None)
                .linear::<Tensor>(&pair.b, None)
                * self.scale
        })
    }

    /// `weight + scale * B A` for `target` of `layer` (`weight` itself when LoRA does not
    /// target it). The sum is formed in f32 and rounded once to `weight`'s dtype: in bf16,
    /// rounding `B A` and the sum separately would lose the small delta to bf16's 8-bit
    /// significand.
    pub fn merged_weight(&self, layer: usize, target: Target, weight: &Tensor) -> Tensor {
        match self.pair(layer, target) {
            None => weight.shallow_clone(),
            Some(pair) => {
                let f32 = tch::Kind::Float;
                let delta = pair.b.to_kind(f32).matmul(&pair.a.to_kind(f32)) * self.scale;
                (weight.to_kind(f32) + delta).to_kind(weight.kind())
            }
        }
    }

    pub fn targets(&self) -> Vec<Target> {
        let mut targets: Vec<Target> = self.layers.iter().flatten().map(|(t, _)| *t).collect();
        targets.sort();
        targets.dedup();
        targets
    }
}

/// Add the LoRA delta of `target` to `y` when LoRA is on and has that target.
pub fn add_delta(
    y: Tensor,
    lora: Option<&LoraWeights>,
    layer: usize,
    target: Target,
    x: &Tensor,
) -> Tensor {
    match lora.and_then(|l| l.delta(layer, target, x)) {
        Some(delta) => y + delta,
        None => y,
    }
}
