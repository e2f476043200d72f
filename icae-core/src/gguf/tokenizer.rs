//! Build an HF `tokenizer.json` from a GGUF file's `tokenizer.ggml.*` metadata.

use serde_json::{json, Value as Json};

use super::{GgufError, GgufFile, Value};

/// llama.cpp token types: 3 = control, 4 = user defined. Both are matched as whole
/// tokens before BPE runs (HF "added tokens"); control tokens are also "special".
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// Llama-3's pre-tokenizer split pattern (GGUF `pre` = "llama-bpe").
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer.json document for the GGUF's BPE vocabulary.
pub fn tokenizer_json_from_gguf(file: &GgufFile) -> Result<Json, GgufError> {
    let model = str_key(file, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::BadMetadata {
            key: "tokenizer.ggml.model".into(),
            reason: format!(
                "tokenizer model \"{model}\" is not supported (supported: \"gpt2\" byte-level BPE)"
            ),
        });
    }
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let merges = string_array(file, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
        Some(v) => array(v, "tokenizer.ggml.token_type")?
            .iter()
            .map(|t| t.as_u64().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(GgufError::BadMetadata {
            key: "tokenizer.ggml.token_type".into(),
            reason: format!(
                "has {} entries but there are {} tokens",
                types.len(),
                tokens.len()
            ),
        });
    }

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (token, ty)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(token.clone(), json!(id));
        if *ty == TOKEN_TYPE_CONTROL || *ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }
    if vocab.len() != tokens.len() {
        return Err(GgufError::BadMetadata {
            key: "tokenizer.ggml.tokens".into(),
            reason: format!(
                "{} tokens but only {} distinct strings",
                tokens.len(),
                vocab.len()
            ),
        });
    }

    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        // SmolLM splits every digit off on its own before the GPT-2 regex.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "default" | "gpt2" => byte_level,
        "llama-bpe" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
        other => {
            return Err(GgufError::BadMetadata {
                key: "tokenizer.ggml.pre".into(),
                reason: format!("pre-tokenizer \"{other}\" is not supported (supported: smollm, gpt2, default, llama-bpe)"),
            })
        }
    };

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

fn str_key<'a>(file: &'a GgufFile, key: &str) -> Result<&'a str, GgufError> {
    let v = file
        .get(key)
        .ok_or_else(|| GgufError::MissingKey(key.into()))?;
    v.as_str().ok_or_else(|| GgufError::BadMetadata {
        key: key.into(),
        reason: format!("expected a string, found {}", v.type_name()),
    })
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], GgufError> {
    v.as_array().ok_or_else(|| GgufError::BadMetadata {
        key: key.into(),
        reason: format!("expected an array, found {}", v.type_name()),
    })
}

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>, GgufError> {
    let v = file
        .get(key)
        .ok_or_else(|| GgufError::MissingKey(key.into()))?;
    array(v, key)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .map(str::to_owned)
                .ok_or_else(|| GgufError::BadMetadata {
                    key: key.into(),
                    reason: format!("element {i} is a {}, expected a string", item.type_name()),
                })
        })
        .collect()
}
