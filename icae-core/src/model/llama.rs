//! The Llama / Mistral decoder-only transformer on libtorch.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::attention::{self, Mask};
use super::config::{ModelConfig, TokenIds};
use super::kv_cache::KvCache;
use super::lora::{add_delta, LoraWeights, Target};
use super::rope::{self, Rope};
use super::weights::TensorMap;
use crate::error::ModelError;

struct Layer {
    input_norm: Tensor,
    /// q, k and v projections stacked into one `[q_dim + 2 * kv_dim, hidden]` matrix.
    qkv: Tensor,
    o: Tensor,
    post_norm: Tensor,
    /// gate and up projections stacked into one `[2 * ffn, hidden]` matrix.
    gate_up: Tensor,
    down: Tensor,
}

pub struct LlamaModel {
    pub config: ModelConfig,
    pub device: Device,
    pub kind: Kind,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    rope: Rope,
}

impl LlamaModel {
    /// Load `config.json` and the safetensors weights of an HF model directory.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| ModelError::Io(format!("{}: {e}", config_path.display())))?;
        let mut config = ModelConfig::from_json(&text)?;
        // generation_config.json, when present, says which tokens end a generation.
        if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
            let generation: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Config(format!("generation_config.json: {e}")))?;
            if let Ok(eos) = serde_json::from_value::<TokenIds>(generation["eos_token_id"].clone())
            {
                config.eos_token_id = Some(eos);
            }
        }
        let mut weights = TensorMap::load_model_dir(dir, device, kind)?;
        Self::from_weights(config, &mut weights, device, kind)
    }

    pub fn from_weights(
        config: ModelConfig,
        w: &mut TensorMap,
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        let _guard = tch::no_grad_guard();
        let h = config.hidden_size as i64;
        let q_dim = (config.num_attention_heads * config.head_dim()) as i64;
        let kv_dim = (config.kv_heads() * config.head_dim()) as i64;
        let ffn = config.intermediate_size as i64;
        let vocab = config.vocab_size as i64;

        let embed_tokens = w.take("model.embed_tokens.weight", &[vocab, h])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let mut take =
                |name: &str, shape: &[i64]| w.take(&format!("model.layers.{i}.{name}"), shape);
            let q = take("self_attn.q_proj.weight", &[q_dim, h])?;
            let k = take("self_attn.k_proj.weight", &[kv_dim, h])?;
            let v = take("self_attn.v_proj.weight", &[kv_dim, h])?;
            let gate = take("mlp.gate_proj.weight", &[ffn, h])?;
            let up = take("mlp.up_proj.weight", &[ffn, h])?;
            layers.push(Layer {
                input_norm: take("input_layernorm.weight", &[h])?,
                qkv: Tensor::cat(&[q, k, v], 0),
                o: take("self_attn.o_proj.weight", &[h, q_dim])?,
                post_norm: take("post_attention_layernorm.weight", &[h])?,
                gate_up: Tensor::cat(&[gate, up], 0),
                down: take("mlp.down_proj.weight", &[h, ffn])?,
            });
        }
        let norm = w.take("model.norm.weight", &[h])?;
        let lm_head = match w.remove("lm_head.weight") {
            Some(head) if !config.tie_word_embeddings => {
                if head.size() != [vocab, h] {
                    return Err(ModelError::ShapeMismatch {
                        name: "lm_head.weight".into(),
                        expected: vec![vocab, h],
                        actual: head.size(),
                    });
                }
                head
            }
            _ if config.tie_word_embeddings => embed_tokens.shallow_clone(),
            _ => {
                return Err(ModelError::MissingTensor {
                    name: "lm_head.weight".into(),
                    location: "model weights (tie_word_embeddings is false)".into(),
                })
            }
        };
        let rope = Rope::new(&config, device);
        Ok(LlamaModel {
            config,
            device,
            kind,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

    /// Fold `lora` into the projections it targets (`W <- W + scale * B A`, see
    /// [`LoraWeights::merged_weight`]): afterwards `forward` without LoRA computes what it
    /// computed with it, without the two extra matmuls per target. The base weights are gone,
    /// so only a process that never decodes may do this (crate-private: reached only through
    /// `IcaeModel::merge_lora_for_encoding`, whose result cannot decode).
    pub(crate) fn merge_lora(&mut self, lora: &LoraWeights) {
        let _guard = tch::no_grad_guard();
        let q_dim = (self.config.num_attention_heads * self.config.head_dim()) as i64;
        let kv_dim = (self.config.kv_heads() * self.config.head_dim()) as i64;
        let ffn = self.config.intermediate_size as i64;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let merge = |w: &Tensor, target| lora.merged_weight(i, target, w);
            // q, k, v and gate, up are stacked: merge each block, then stack again.
            let qkv = &layer.qkv;
            layer.qkv = Tensor::cat(
                &[
                    merge(&qkv.narrow(0, 0, q_dim), Target::Q),
                    merge(&qkv.narrow(0, q_dim, kv_dim), Target::K),
                    merge(&qkv.narrow(0, q_dim + kv_dim, kv_dim), Target::V),
                ],
                0,
            );
            layer.o = merge(&layer.o, Target::O);
            // Restacked only when targeted: a copy of an untouched matrix would cost memory
            // for nothing (and twice that while a copy of the base is kept for decoding).
            if lora.pair(i, Target::Gate).is_some() || lora.pair(i, Target::Up).is_some() {
                let gate_up = &layer.gate_up;
                layer.gate_up = Tensor::cat(
                    &[
                        merge(&gate_up.narrow(0, 0, ffn), Target::Gate),
                        merge(&gate_up.narrow(0, ffn, ffn), Target::Up),
                    ],
                    0,
                );
            }
            layer.down = merge(&layer.down, Target::Down);
        }
    }

    /// Another handle on the same weights (no copy). Merging LoRA into one replaces the
    /// matrices it targets with new ones, so the other keeps the base weights.
    pub(crate) fn shallow_clone(&self) -> LlamaModel {
        LlamaModel {
            config: self.config.clone(),
            device: self.device,
            kind: self.kind,
            embed_tokens: self.embed_tokens.shallow_clone(),
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    input_norm: l.input_norm.shallow_clone(),
                    qkv: l.qkv.shallow_clone(),
                    o: l.o.shallow_clone(),
                    post_norm: l.post_norm.shallow_clone(),
                    gate_up: l.gate_up.shallow_clone(),
                    down: l.down.shallow_clone(),
                })
                .collect(),
            norm: self.norm.shallow_clone(),
            lm_head: self.lm_head.shallow_clone(),
            rope: self.rope.shallow_clone(),
        }
    }

    pub fn hidden_size(&self) -> i64 {
        self.config.hidden_size as i64
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings `[batch, seq, hidden]` for ids `[batch, seq]`.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(
            &self.embed_tokens,
            &ids.to_device(self.device),
            -1,
            false,
            false,
        )
    }

    /// A new KV cache sized for `capacity` positions.
    pub fn new_cache(&self, capacity: i64) -> KvCache {
        KvCache::new(self.layers.len(), capacity)
    }

    /// Run the transformer on `embeds` (`[batch, seq, hidden]`) at `positions` (`[batch, seq]`)
    /// and return the final hidden states after the last RMSNorm.
    ///
    /// `key_mask` (`[batch, past + seq]`, bool, true = real token) is only needed when the
    /// batch holds padded rows. With a cache, new keys and values are appended to it.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        lora: Option<&LoraWeights>,
    ) -> Tensor {
        let size = embeds.size();
        let (batch, seq) = (size[0], size[1]);
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (cos, sin) = self
            .rope
            .tables(&positions.to_device(self.device), self.kind);
        let mask = Mask::new(past, seq, key_mask, self.device);
        let hidden = self.run_layers(embeds, lora, |layer, q, k, v| {
            let (q, k, v) = self.heads(q, k, v, batch, seq, &cos, &sin);
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.update(layer, &k, &v),
                None => (k, v),
            };
            self.attend(&q, &k, &v, &mask, batch, seq)
        });
        if let Some(c) = cache {
            c.advance(seq);
        }
        hidden
    }

    /// One decoding step for several independent sequences: row `i` of `embeds`
    /// (`[batch, 1, hidden]`) is the next token of the sequence whose cache is `caches[i]`,
    /// at `positions[i]`. The projections run as one batch; attention runs per sequence
    /// against its own cache, so the sequences may have any lengths.
    pub fn decode_step(
        &self,
        embeds: &Tensor,
        positions: &[i64],
        caches: &mut [&mut KvCache],
    ) -> Tensor {
        let batch = positions.len() as i64;
        let pos = Tensor::from_slice(positions)
            .view([batch, 1])
            .to_device(self.device);
        let (cos, sin) = self.rope.tables(&pos, self.kind);
        let hidden = self.run_layers(embeds, None, |layer, q, k, v| {
            let (q, k, v) = self.heads(q, k, v, batch, 1, &cos, &sin);
            let rows: Vec<Tensor> = caches
                .iter_mut()
                .enumerate()
                .map(|(row, cache)| {
                    let r = row as i64;
                    let (k, v) = cache.update(layer, &k.narrow(0, r, 1), &v.narrow(0, r, 1));
                    self.attend(&q.narrow(0, r, 1), &k, &v, &Mask::none(), 1, 1)
                })
                .collect();
            Tensor::cat(&rows, 0)
        });
        caches.iter_mut().for_each(|c| c.advance(1));
        hidden
    }

    /// The layer stack around an attention function that maps the projected
    /// `q`, `k`, `v` (`[batch, seq, dim]`) of layer `i` to its `[batch, seq, q_dim]` output.
    // `x = x + o` on purpose: `+=` would add in place into `embeds`' storage when no
    // conversion was needed, changing the caller's tensor.
    #[allow(clippy::assign_op_pattern)]
    fn run_layers(
        &self,
        embeds: &Tensor,
        lora: Option<&LoraWeights>,
        mut attention: impl FnMut(usize, Tensor, Tensor, Tensor) -> Tensor,
    ) -> Tensor {
        let q_dim = (self.config.num_attention_heads * self.config.head_dim()) as i64;
        let kv_dim = (self.config.kv_heads() * self.config.head_dim()) as i64;
        let ffn = self.config.intermediate_size as i64;
        let mut x = embeds.to_device(self.device).to_kind(self.kind);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, self.config.rms_norm_eps);
            // Split, not narrowed three times: the backward of a split is one concatenation,
            // where each narrow's would be a zero-filled full-width gradient to sum.
            let [q, k, v] = split(
                h.linear::<Tensor>(&layer.qkv, None),
                [q_dim, kv_dim, kv_dim],
            );
            let q = add_delta(q, lora, i, Target::Q, &h);
            let k = add_delta(k, lora, i, Target::K, &h);
            let v = add_delta(v, lora, i, Target::V, &h);
            let attn = attention(i, q, k, v);
            let o = add_delta(
                attn.linear::<Tensor>(&layer.o, None),
                lora,
                i,
                Target::O,
                &attn,
            );
            x = x + o;

            let h = rms_norm(&x, &layer.post_norm, self.config.rms_norm_eps);
            let [gate, up] = split(h.linear::<Tensor>(&layer.gate_up, None), [ffn, ffn]);
            let gate = add_delta(gate, lora, i, Target::Gate, &h);
            let up = add_delta(up, lora, i, Target::Up, &h);
            let act = gate.silu() * up;
            let down = add_delta(
                act.linear::<Tensor>(&layer.down, None),
                lora,
                i,
                Target::Down,
                &act,
            );
            x = x + down;
        }
        rms_norm(&x, &self.norm, self.config.rms_norm_eps)
    }

    /// Split projections into heads (`[batch, heads, seq, head_dim]`) and rotate q and k.
    #[allow(clippy::too_many_arguments)]
    fn heads(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        batch: i64,
        seq: i64,
        cos: &Tensor,
        sin: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let head_dim = self.config.head_dim() as i64;
        let split = |t: Tensor, n: usize| t.view([batch, seq, n as i64, head_dim]).transpose(1, 2);
        let q = rope::apply(&split(q, self.config.num_attention_heads), cos, sin);
        let k = rope::apply(&split(k, self.config.kv_heads()), cos, sin);
        (q, k, split(v, self.config.kv_heads()))
    }

    /// Scaled dot-product attention with grouped KV heads, back to `[batch, seq, q_dim]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Mask,
        batch: i64,
        seq: i64,
    ) -> Tensor {
        let out = attention::attend(q, k, v, mask);
        let q_dim = (self.config.num_attention_heads * self.config.head_dim()) as i64;
        out.transpose(1, 2).reshape([batch, seq, q_dim])
    }

    /// Logits over the base vocabulary for hidden states `[.., hidden]`, in f32.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden
            .linear::<Tensor>(&self.lm_head, None)
            .to_kind(Kind::Float)
    }
}

/// The last dimension of `x` cut into consecutive parts of `sizes`.
fn split<const N: usize>(x: Tensor, sizes: [i64; N]) -> [Tensor; N] {
    x.split_with_sizes(sizes, -1)
        .try_into()
        .unwrap_or_else(|_| unreachable!("split_with_sizes gives one part per size"))
}

/// RMSNorm computed in f32 like HF, then cast back and scaled.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = xf * (variance + eps).rsqrt();
    weight * normed.to_kind(kind)
}
