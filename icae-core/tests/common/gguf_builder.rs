//! Builds GGUF v3 files byte by byte, so tests control every field (and can break any).

pub const GGML_F32: u32 = 0;

pub enum Kv {
    U32(u32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
    /// Raw: (type id, encoded value bytes).
    Raw(u32, Vec<u8>),
}

pub struct Tensor {
    pub name: String,
    /// GGUF order (fastest-varying first).
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

#[derive(Default)]
pub struct GgufBuilder {
    pub kvs: Vec<(String, Kv)>,
    pub tensors: Vec<Tensor>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufBuilder {
    pub fn kv(mut self, key: &str, value: Kv) -> Self {
        self.kvs.push((key.into(), value));
        self
    }

    pub fn f32_tensor(mut self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type: GGML_F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            string(&mut out, key);
            match value {
                Kv::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Kv::U64(v) => {
                    out.extend(10u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Kv::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Kv::Bool(v) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*v as u8);
                }
                Kv::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Kv::StrArray(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|s| string(&mut out, s));
                }
                Kv::I32Array(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|v| out.extend(v.to_le_bytes()));
                }
                Kv::Raw(ty, bytes) => {
                    out.extend(ty.to_le_bytes());
                    out.extend(bytes);
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.ggml_type.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        let base = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend(&t.data);
        }
        out
    }
}

/// A complete, importable two-layer Llama GGUF with F32 tensors and a small BPE vocabulary.
pub fn tiny_llama() -> GgufBuilder {
    let (hidden, ffn, heads, kv_heads, layers) = (16u64, 32u64, 4u64, 2u64, 2u64);
    let head_dim = hidden / heads;
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    tokens.extend((b'a'..=b'z').map(|c| (c as char).to_string()));
    tokens.extend(["Ġ", "0", "1", "2", "3", "ab", "Ġa"].map(String::from));
    let vocab = tokens.len() as u64;
    let mut types = vec![3, 3, 3];
    types.resize(tokens.len(), 1);
    let mut value = 0.0f32;
    let mut values = |n: u64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                value += 0.37;
                value.sin() * 0.1
            })
            .collect()
    };
    let mut b = GgufBuilder::default()
        .kv("general.architecture", Kv::Str("llama".into()))
        .kv("llama.block_count", Kv::U32(layers as u32))
        .kv("llama.context_length", Kv::U32(128))
        .kv("llama.embedding_length", Kv::U32(hidden as u32))
        .kv("llama.feed_forward_length", Kv::U32(ffn as u32))
        .kv("llama.attention.head_count", Kv::U32(heads as u32))
        .kv("llama.attention.head_count_kv", Kv::U32(kv_heads as u32))
        .kv("llama.rope.freq_base", Kv::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", Kv::F32(1e-5))
        .kv("tokenizer.ggml.model", Kv::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", Kv::Str("smollm".into()))
        .kv("tokenizer.ggml.tokens", Kv::StrArray(tokens))
        .kv("tokenizer.ggml.token_type", Kv::I32Array(types))
        .kv(
            "tokenizer.ggml.merges",
            Kv::StrArray(vec!["a b".into(), "Ġ a".into()]),
        )
        .kv("tokenizer.ggml.bos_token_id", Kv::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Kv::U32(2))
        .kv("tokenizer.ggml.add_bos_token", Kv::Bool(false));
    b = b.f32_tensor(
        "token_embd.weight",
        &[hidden, vocab],
        &values(hidden * vocab),
    );
    b = b.f32_tensor("output_norm.weight", &[hidden], &vec![1.0; hidden as usize]);
    for i in 0..layers {
        let name = |s: &str| format!("blk.{i}.{s}.weight");
        b = b
            .f32_tensor(&name("attn_norm"), &[hidden], &vec![1.0; hidden as usize])
            .f32_tensor(&name("ffn_norm"), &[hidden], &vec![1.0; hidden as usize])
            .f32_tensor(
                &name("attn_q"),
                &[hidden, heads * head_dim],
                &values(hidden * heads * head_dim),
            )
            .f32_tensor(
                &name("attn_k"),
                &[hidden, kv_heads * head_dim],
                &values(hidden * kv_heads * head_dim),
            )
            .f32_tensor(
                &name("attn_v"),
                &[hidden, kv_heads * head_dim],
                &values(hidden * kv_heads * head_dim),
            )
            .f32_tensor(
                &name("attn_output"),
                &[heads * head_dim, hidden],
                &values(hidden * heads * head_dim),
            )
            .f32_tensor(&name("ffn_gate"), &[hidden, ffn], &values(hidden * ffn))
            .f32_tensor(&name("ffn_up"), &[hidden, ffn], &values(hidden * ffn))
            .f32_tensor(&name("ffn_down"), &[ffn, hidden], &values(hidden * ffn));
    }
    b
}
