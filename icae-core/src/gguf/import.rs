//! Convert a GGUF Llama-family checkpoint into an HF model directory
//! (config.json, model.safetensors in f32, tokenizer.json, tokenizer_config.json,
//! generation_config.json) that `LlamaModel::load` and HF transformers both read.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use super::{
    dequantize, tokenizer_json_from_gguf, unpermute_rows, GgufError, GgufFile, TensorInfo, Value,
};

/// Called after each tensor is written: (tensors done, tensors total, tensor name).
pub type ImportProgress<'a> = &'a mut dyn FnMut(usize, usize, &str);

#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub out_dir: PathBuf,
    pub architecture: String,
    pub num_tensors: usize,
    pub num_parameters: u64,
    pub tied_embeddings: bool,
}

/// Hyper-parameters read from `{arch}.*` metadata.
struct Hparams {
    arch: String,
    layers: u64,
    hidden: u64,
    ffn: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    ctx: u64,
    rms_eps: f64,
    rope_theta: f64,
    vocab: u64,
}

/// Import `gguf_path` into `out_dir`. The directory is written next to its final place and
/// renamed at the end, so an interrupted import never leaves a half-written model behind.
pub fn import_gguf(
    gguf_path: &Path,
    out_dir: &Path,
    progress: ImportProgress,
) -> Result<ImportSummary, GgufError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| GgufError::Io { path, source }
    };
    let file = File::open(gguf_path).map_err(io(gguf_path))?;
    // SAFETY: the map is read-only and the file is not modified while we hold it.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io(gguf_path))?;
    let gguf = GgufFile::parse(&bytes)?;
    let hp = Hparams::read(&gguf)?;

    let staging = out_dir.with_extension("importing");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io(&staging))?;

    let tensors = plan_tensors(&gguf, &hp)?;
    let tied = gguf.tensor("output.weight").is_none();
    let num_parameters = tensors.iter().map(|(_, t)| t.num_elements()).sum();
    write_safetensors(
        &staging.join("model.safetensors"),
        &bytes,
        &tensors,
        &hp,
        progress,
    )?;

    let tokenizer = tokenizer_json_from_gguf(&gguf)?;
    // Validate with the same library that will load it.
    let tok_text =
        serde_json::to_string(&tokenizer).map_err(|e| GgufError::Tokenizer(e.to_string()))?;
    tok_text
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| GgufError::Tokenizer(e.to_string()))?;
    let token_name = |key: &str| -> Option<String> {
        let id = gguf.get(key)?.as_u64()? as usize;
        let tokens = gguf.get("tokenizer.ggml.tokens")?.as_array()?;
        tokens.get(id)?.as_str().map(str::to_owned)
    };
    let bos = gguf
        .get("tokenizer.ggml.bos_token_id")
        .and_then(Value::as_u64);
    let eos = gguf
        .get("tokenizer.ggml.eos_token_id")
        .and_then(Value::as_u64);
    let add_bos = gguf
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hp.hidden,
        "intermediate_size": hp.ffn,
        "num_hidden_layers": hp.layers,
        "num_attention_heads": hp.heads,
        "num_key_value_heads": hp.kv_heads,
        "head_dim": hp.head_dim,
        "max_position_embeddings": hp.ctx,
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_theta,
        "vocab_size": hp.vocab,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": eos,
    });
    if let Some(scaling) = rope_scaling(&gguf, &hp.arch)? {
        config["rope_scaling"] = scaling;
    }
    let mut tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "model_max_length": hp.ctx,
        "clean_up_tokenization_spaces": false,
        "bos_token": token_name("tokenizer.ggml.bos_token_id"),
        "eos_token": token_name("tokenizer.ggml.eos_token_id"),
        "unk_token": token_name("tokenizer.ggml.unknown_token_id"),
        "pad_token": token_name("tokenizer.ggml.padding_token_id"),
    });
    if let Some(template) = gguf.get("tokenizer.chat_template").and_then(Value::as_str) {
        tok_config["chat_template"] = json!(template);
    }
    let generation = json!({"bos_token_id": bos, "eos_token_id": eos});

    for (name, doc) in [
        ("config.json", &config),
        ("tokenizer.json", &tokenizer),
        ("tokenizer_config.json", &tok_config),
        ("generation_config.json", &generation),
    ] {
        let path = staging.join(name);
        let text =
            serde_json::to_string_pretty(doc).map_err(|e| GgufError::Tokenizer(e.to_string()))?;
        fs::write(&path, text).map_err(io(&path))?;
    }

    if out_dir.exists() {
        fs::remove_dir_all(out_dir).map_err(io(out_dir))?;
    }
    fs::rename(&staging, out_dir).map_err(io(out_dir))?;
    Ok(ImportSummary {
        out_dir: out_dir.to_path_buf(),
        architecture: hp.arch,
        num_tensors: tensors.len(),
        num_parameters,
        tied_embeddings: tied,
    })
}

impl Hparams {
    fn read(gguf: &GgufFile) -> Result<Self, GgufError> {
        let arch = gguf
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?
            .to_string();
        if !matches!(arch.as_str(), "llama" | "mistral") {
            return Err(GgufError::BadMetadata {
                key: "general.architecture".into(),
                reason: format!(
                    "architecture \"{arch}\" is not supported (supported: llama, mistral)"
                ),
            });
        }
        let int = |name: &str| -> Result<u64, GgufError> {
            let key = format!("{arch}.{name}");
            let v = gguf
                .get(&key)
                .ok_or_else(|| GgufError::MissingKey(key.clone()))?;
            match v.as_u64() {
                Some(n) if n > 0 => Ok(n),
                _ => Err(GgufError::BadMetadata {
                    key,
                    reason: format!("expected a positive integer, got {v:?}"),
                }),
            }
        };
        let float = |name: &str, default: f64| -> f64 {
            gguf.get(&format!("{arch}.{name}"))
                .and_then(Value::as_f64)
                .unwrap_or(default)
        };
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = match gguf.get(&format!("{arch}.attention.head_count_kv")) {
            Some(_) => int("attention.head_count_kv")?,
            None => heads,
        };
        let head_dim = match gguf
            .get(&format!("{arch}.attention.key_length"))
            .and_then(Value::as_u64)
        {
            Some(d) => d,
            None => hidden / heads,
        };
        if heads % kv_heads != 0 || head_dim % 2 != 0 || head_dim == 0 {
            return Err(GgufError::BadMetadata {
                key: format!("{arch}.attention.head_count_kv"),
                reason: format!("{heads} heads with {kv_heads} KV heads of dim {head_dim} is not a valid grouped-query layout"),
            });
        }
        let vocab = match gguf
            .get(&format!("{arch}.vocab_size"))
            .and_then(Value::as_u64)
        {
            Some(v) => v,
            None => gguf
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|t| t.len() as u64)
                .ok_or_else(|| GgufError::MissingKey(format!("{arch}.vocab_size")))?,
        };
        Ok(Hparams {
            layers: int("block_count")?,
            hidden,
            ffn: int("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            ctx: int("context_length")?,
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: float("rope.freq_base", 10_000.0),
            vocab,
            arch,
        })
    }
}

fn rope_scaling(gguf: &GgufFile, arch: &str) -> Result<Option<Json>, GgufError> {
    if gguf.tensor("rope_freqs.weight").is_some() {
        return Err(GgufError::BadTensor {
            name: "rope_freqs.weight".into(),
            reason: "Llama-3 rope frequency factors are not imported from GGUF; convert the HF checkpoint instead".into(),
        });
    }
    let key = format!("{arch}.rope.scaling.type");
    match gguf.get(&key).and_then(Value::as_str) {
        None | Some("none") => Ok(None),
        Some("linear") => {
            let factor = gguf
                .get(&format!("{arch}.rope.scaling.factor"))
                .and_then(Value::as_f64)
                .ok_or_else(|| GgufError::MissingKey(format!("{arch}.rope.scaling.factor")))?;
            Ok(Some(json!({"rope_type": "linear", "factor": factor})))
        }
        Some(other) => Err(GgufError::BadMetadata {
            key,
            reason: format!("rope scaling \"{other}\" is not supported by the importer (supported: none, linear)"),
        }),
    }
}

/// The HF name of each GGUF tensor, checked against the expected shape. Tensors are looked
/// up one by one so a corrupt layer count fails at the first missing tensor.
fn plan_tensors<'a>(
    gguf: &'a GgufFile,
    hp: &Hparams,
) -> Result<Vec<(String, &'a TensorInfo)>, GgufError> {
    let q_dim = hp.heads * hp.head_dim;
    let kv_dim = hp.kv_heads * hp.head_dim;
    let mut planned = Vec::new();
    let mut want = |gg_name: String, hf_name: String, shape: &[u64]| -> Result<(), GgufError> {
        let info = gguf
            .tensor(&gg_name)
            .ok_or_else(|| GgufError::MissingTensor(gg_name.clone()))?;
        let actual: Vec<u64> = info.torch_shape().iter().map(|&d| d as u64).collect();
        if actual != shape {
            return Err(GgufError::BadTensor {
                name: gg_name,
                reason: format!(
                    "shape is {actual:?}, expected {shape:?} from the model hyper-parameters"
                ),
            });
        }
        planned.push((hf_name, info));
        Ok(())
    };
    want(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        &[hp.vocab, hp.hidden],
    )?;
    want(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        &[hp.hidden],
    )?;
    if gguf.tensor("output.weight").is_some() {
        want(
            "output.weight".into(),
            "lm_head.weight".into(),
            &[hp.vocab, hp.hidden],
        )?;
    }
    for i in 0..hp.layers {
        let hf = |s: &str| format!("model.layers.{i}.{s}");
        let gg = |s: &str| format!("blk.{i}.{s}.weight");
        want(gg("attn_norm"), hf("input_layernorm.weight"), &[hp.hidden])?;
        want(
            gg("attn_q"),
            hf("self_attn.q_proj.weight"),
            &[q_dim, hp.hidden],
        )?;
        want(
            gg("attn_k"),
            hf("self_attn.k_proj.weight"),
            &[kv_dim, hp.hidden],
        )?;
        want(
            gg("attn_v"),
            hf("self_attn.v_proj.weight"),
            &[kv_dim, hp.hidden],
        )?;
        want(
            gg("attn_output"),
            hf("self_attn.o_proj.weight"),
            &[hp.hidden, q_dim],
        )?;
        want(
            gg("ffn_norm"),
            hf("post_attention_layernorm.weight"),
            &[hp.hidden],
        )?;
        want(
            gg("ffn_gate"),
            hf("mlp.gate_proj.weight"),
            &[hp.ffn, hp.hidden],
        )?;
        want(gg("ffn_up"), hf("mlp.up_proj.weight"), &[hp.ffn, hp.hidden])?;
        want(
            gg("ffn_down"),
            hf("mlp.down_proj.weight"),
            &[hp.hidden, hp.ffn],
        )?;
    }
    Ok(planned)
}

/// Stream the dequantized tensors into a safetensors file, one tensor in memory at a time.
fn write_safetensors(
    path: &Path,
    bytes: &[u8],
    tensors: &[(String, &TensorInfo)],
    hp: &Hparams,
    progress: ImportProgress,
) -> Result<(), GgufError> {
    let io = |source| GgufError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        json!({"format": "pt", "source": "gguf"}),
    );
    let mut offset = 0u64;
    for (name, info) in tensors {
        let len = info.num_elements() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": info.torch_shape(), "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut header_bytes = serde_json::to_vec(&Json::Object(header))
        .map_err(|e| GgufError::Tokenizer(e.to_string()))?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    out.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header_bytes).map_err(io)?;

    for (done, (name, info)) in tensors.iter().enumerate() {
        let raw = &bytes[info.data_start..info.data_start + info.data_len];
        let mut values = dequantize(info, raw)?;
        let row_len = info.dims[0] as usize;
        if info.name.ends_with("attn_q.weight") {
            values = unpermute_rows(&values, hp.heads as usize, row_len);
        } else if info.name.ends_with("attn_k.weight") {
            values = unpermute_rows(&values, hp.kv_heads as usize, row_len);
        }
        let mut buf = Vec::with_capacity(values.len() * 4);
        for v in values {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&buf).map_err(io)?;
        progress(done + 1, tensors.len(), name);
    }
    out.flush().map_err(io)?;
    Ok(())
}
