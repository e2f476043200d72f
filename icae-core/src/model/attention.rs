//! Scaled dot-product attention with grouped KV heads, and the masks it takes.
//!
//! libtorch's fused kernel serves every forward, with one exception measured on CPU
//! (BENCHMARKS.md, "Test-time refinement"): when gradients flow through a bf16 model, as in
//! slot refinement, its backward is slower than the plain composition of two batched matrix
//! products and a softmax while the `[queries, keys]` probabilities are small, so that case
//! spells attention out. In f32, for large probability tensors and on GPUs the fused kernel is
//! as fast or faster, and it never holds the probabilities for the backward.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU8, Ordering};

use tch::{Device, Kind, Tensor};

/// The spelled-out attention holds one layer's probabilities (`batch × heads × queries ×
/// keys` bf16 values) for the backward; above this many bytes the fused kernel runs
/// (`icae-bench refine --attention`, BENCHMARKS.md: the spelled-out form made a step faster
/// at 161 and 641 keys, 0.5 and 7.4 MB, and slower at 1,281 keys, 29.5 MB).
const SPELLED_OUT_MAX_BYTES: i64 = 12 << 20;

/// Which keys each query may read, for every layer of one forward.
pub struct Mask {
    past: i64,
    seq: i64,
    /// The fused kernel's own causal mask (query `i` sees keys up to `past + i`).
    causal: bool,
    /// `[batch or 1, 1, seq, past + seq]`, true = may attend.
    explicit: Option<Tensor>,
    /// The mask as `0 / -inf` to add to the scores of the spelled-out attention, built once
    /// per forward when that path first runs.
    additive: OnceCell<Tensor>,
}

impl Mask {
    /// Choose the cheapest correct mask: the fused causal kernel for a fresh unpadded
    /// prompt, no mask for one new token per row, an explicit one otherwise. `key_mask`
    /// (`[batch, past + seq]`, true = real token) marks padding.
    pub fn new(past: i64, seq: i64, key_mask: Option<&Tensor>, device: Device) -> Mask {
        let explicit = match key_mask {
            None if past == 0 => None,
            None if seq == 1 => None,
            _ => {
                let total = past + seq;
                let (query, key) = positions(past, seq, device);
                let mut allowed = key.le_tensor(&query).view([1, 1, seq, total]);
                if let Some(keys) = key_mask {
                    let batch = keys.size()[0];
                    let real = keys.to_device(device).to_kind(Kind::Bool);
                    allowed = allowed.logical_and(&real.view([batch, 1, 1, total]));
                    // A padding query would otherwise see no key at all and turn into NaN,
                    // which then leaks through 0 * NaN in later layers: let every query see
                    // itself.
                    let itself = key.eq_tensor(&query).view([1, 1, seq, total]);
                    allowed = allowed.logical_or(&itself);
                }
                Some(allowed)
            }
        };
        Mask {
            past,
            seq,
            causal: key_mask.is_none() && past == 0,
            explicit,
            additive: OnceCell::new(),
        }
    }

    /// Every query sees every key.
    pub fn none() -> Mask {
        Mask {
            past: 0,
            seq: 0,
            causal: false,
            explicit: None,
            additive: OnceCell::new(),
        }
    }

    /// `[batch or 1, group * seq, keys]`: the mask for scores whose rows are the `group` query
    /// heads of one KV head, one after another (None: nothing is masked).
    fn additive(&self, kind: Kind, kv_heads: i64, group: i64, device: Device) -> Option<&Tensor> {
        if self.explicit.is_none() && !self.causal {
            return None;
        }
        Some(self.additive.get_or_init(|| {
            let allowed = match &self.explicit {
                Some(explicit) => explicit.shallow_clone(),
                None => causal_allowed(self.past, self.seq, device)
                    .unsqueeze(0)
                    .unsqueeze(0),
            };
            let [batch, _, seq, keys] = allowed.size()[..] else {
                unreachable!("masks are [batch, 1, seq, keys]")
            };
            let blocked = allowed.view([batch, 1, 1, seq, keys]).logical_not();
            let bias = Tensor::zeros([batch, 1, 1, seq, keys], (kind, device))
                .masked_fill(&blocked, f64::NEG_INFINITY);
            // A batch-wide mask repeats per KV head (the batch and KV heads share the first
            // dimension of the batched products); a shared one broadcasts.
            let heads = if batch == 1 { 1 } else { kv_heads };
            bias.expand([batch, heads, group, seq, keys], false)
                .reshape([batch * heads, group * seq, keys])
        }))
    }
}

/// `[seq, past + seq]`: query `i` (at position `past + i`) may read keys up to itself.
fn causal_allowed(past: i64, seq: i64, device: Device) -> Tensor {
    let (query, key) = positions(past, seq, device);
    key.le_tensor(&query)
}

/// The positions of the queries (`[seq, 1]`, from `past` on) and of the keys
/// (`[1, past + seq]`), to compare into masks.
fn positions(past: i64, seq: i64, device: Device) -> (Tensor, Tensor) {
    let total = past + seq;
    let query = Tensor::arange_start(past, total, (Kind::Int64, device)).view([seq, 1]);
    let key = Tensor::arange(total, (Kind::Int64, device)).view([1, total]);
    (query, key)
}

/// The two ways to compute attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// libtorch's `scaled_dot_product_attention`.
    Fused,
    /// Two batched matrix products around a softmax.
    SpelledOut,
}

/// 0: choose by shape (the default); 1: always fused; 2: spelled out wherever gradients flow.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Make every forward of this process use `kernel` (None: choose by shape again), for
/// benchmarks that compare the two inside a whole computation (`icae-bench refine
/// --attention`). The spelled-out form is only ever used while gradients flow.
pub fn override_kernel(kernel: Option<Kernel>) {
    let code = match kernel {
        None => 0,
        Some(Kernel::Fused) => 1,
        Some(Kernel::SpelledOut) => 2,
    };
    OVERRIDE.store(code, Ordering::Relaxed);
}

impl Kernel {
    /// The kernel for these queries and keys: the faster one as measured (module docs),
    /// unless a benchmark overrode the choice.
    pub fn for_shapes(q: &Tensor, k: &Tensor) -> Kernel {
        match OVERRIDE.load(Ordering::Relaxed) {
            1 => Kernel::Fused,
            2 if q.requires_grad() => Kernel::SpelledOut,
            _ if spelled_out_is_faster(q, k) => Kernel::SpelledOut,
            _ => Kernel::Fused,
        }
    }
}

/// Attention of `q` (`[batch, heads, seq, head_dim]`) over `k`, `v`
/// (`[batch, kv_heads, keys, head_dim]`), query head `h` reading KV head
/// `h / (heads / kv_heads)`, restricted by `mask`. Returns `[batch, heads, seq, head_dim]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Mask) -> Tensor {
    match Kernel::for_shapes(q, k) {
        Kernel::SpelledOut => spelled_out(q, k, v, mask),
        Kernel::Fused => Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            mask.explicit.as_ref(),
            0.0,
            mask.causal,
            None,
            k.size()[1] != q.size()[1],
        ),
    }
}

fn spelled_out_is_faster(q: &Tensor, k: &Tensor) -> bool {
    let [batch, heads, seq, _] = q.size()[..] else {
        return false;
    };
    let probabilities = batch * heads * seq * k.size()[2] * q.kind().elt_size_in_bytes() as i64;
    q.requires_grad()
        && q.device() == Device::Cpu
        && q.kind() == Kind::BFloat16
        && probabilities <= SPELLED_OUT_MAX_BYTES
}

/// The definition, step by step, in the model's dtype (the softmax accumulates in f32 inside
/// its kernel). The query heads that share a KV head are one block of rows, so each product
/// reads every key once; the scale and the mask enter the first product (`baddbmm`).
fn spelled_out(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Mask) -> Tensor {
    let [batch, heads, seq, head_dim] = q.size()[..] else {
        unreachable!("queries are [batch, heads, seq, head_dim]")
    };
    let (kv_heads, keys) = (k.size()[1], k.size()[2]);
    let group = heads / kv_heads;
    let q = q.reshape([batch * kv_heads, group * seq, head_dim]);
    let k_t = k
        .reshape([batch * kv_heads, keys, head_dim])
        .transpose(1, 2);
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = match mask.additive(q.kind(), kv_heads, group, q.device()) {
        Some(bias) => bias.baddbmm(&q, &k_t, 1.0, scale),
        None => q.bmm(&k_t) * scale,
    };
    scores
        .softmax(-1, q.kind())
        .bmm(&v.reshape([batch * kv_heads, keys, head_dim]))
        .view([batch, heads, seq, head_dim])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: &[i64], kind: Kind) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind)
    }

    /// The spelled-out attention computes what the fused kernel computes, with every mask
    /// form, grouped heads, and a cache (more keys than queries).
    #[test]
    fn spelled_out_matches_the_fused_kernel() {
        tch::manual_seed(0);
        let (batch, heads, kv_heads, seq, dim) = (2, 6, 2, 5, 8);
        let past = 4;
        let keys = past + seq;
        // Row 1's first key is padding.
        let padding = Tensor::ones([batch, keys], (Kind::Bool, Device::Cpu));
        let _ = padding.get(1).get(0).fill_(0);
        let all_real = Tensor::ones([batch, keys], (Kind::Bool, Device::Cpu));
        let cpu = Device::Cpu;
        let cases = [
            ("causal, fresh", keys, Mask::new(0, keys, None, cpu)),
            ("causal after a cache", seq, Mask::new(past, seq, None, cpu)),
            ("padding", seq, Mask::new(past, seq, Some(&padding), cpu)),
            ("all real", seq, Mask::new(past, seq, Some(&all_real), cpu)),
            ("one new token", 1, Mask::new(keys - 1, 1, None, cpu)),
        ];
        for (name, queries, mask) in cases {
            let q = random(&[batch, heads, queries, dim], Kind::Float);
            let k = random(&[batch, kv_heads, keys, dim], Kind::Float);
            let v = random(&[batch, kv_heads, keys, dim], Kind::Float);
            let fused = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                mask.explicit.as_ref(),
                0.0,
                mask.causal,
                None,
                true,
            );
            let ours = spelled_out(&q, &k, &v, &mask);
            let gap = (fused - ours).abs().max().double_value(&[]);
            assert!(gap < 1e-5, "{name}: max difference {gap}");
        }
    }

    /// Where it runs (bf16, gradients flowing), its gradients are the fused kernel's within
    /// bf16 rounding.
    #[test]
    fn spelled_out_gradients_match_the_fused_kernel_in_bf16() {
        tch::manual_seed(1);
        let (batch, heads, kv_heads, seq, dim) = (2, 6, 2, 24, 16);
        let leaf = |shape: &[i64]| random(shape, Kind::BFloat16).set_requires_grad(true);
        let (q, k, v) = (
            leaf(&[batch, heads, seq, dim]),
            leaf(&[batch, kv_heads, seq, dim]),
            leaf(&[batch, kv_heads, seq, dim]),
        );
        let upstream = random(&[batch, heads, seq, dim], Kind::BFloat16);
        let gradients = |out: Tensor| {
            Tensor::run_backward(
                &[(out * &upstream).sum(Kind::Float)],
                &[&q, &k, &v],
                false,
                false,
            )
        };
        let mask = Mask::new(0, seq, None, Device::Cpu);
        let fused = gradients(Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<&Tensor>,
            0.0,
            true,
            None,
            true,
        ));
        let ours = gradients(spelled_out(&q, &k, &v, &mask));
        for (name, (a, b)) in ["q", "k", "v"].iter().zip(fused.iter().zip(&ours)) {
            let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
            let relative = ((&a - &b).norm() / a.norm()).double_value(&[]);
            assert!(
                relative < 2e-2,
                "gradient of {name}: relative difference {relative}"
            );
        }
    }

    #[test]
    fn the_spelled_out_path_is_taken_only_where_it_was_measured_faster() {
        let k = random(&[1, 3, 100, 8], Kind::BFloat16);
        let q = random(&[1, 9, 100, 8], Kind::BFloat16);
        assert!(!spelled_out_is_faster(&q, &k), "no gradients: fused");
        let q = q.set_requires_grad(true);
        assert!(spelled_out_is_faster(&q, &k));
        // 9 heads x 100 queries x 8,000 keys x 2 bytes = 14.4 MB of probabilities.
        let long = random(&[1, 3, 8_000, 8], Kind::BFloat16);
        assert!(
            !spelled_out_is_faster(&q, &long),
            "large probabilities: fused"
        );
        let f32 = random(&[1, 9, 100, 8], Kind::Float).set_requires_grad(true);
        assert!(!spelled_out_is_faster(&f32, &k), "f32: fused");
    }
}
