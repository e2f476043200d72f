//! The base model's tokenizer (`tokenizer.json` + `tokenizer_config.json`) and its chat
//! template pieces used by the ANSWER layout.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    add_bos: bool,
    bos_id: Option<u32>,
    chat_template: Option<String>,
}

/// Token ids placed before the slots and after the prompt in the ANSWER layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPieces {
    pub prefix: String,
    pub suffix: String,
    pub prefix_ids: Vec<u32>,
    pub suffix_ids: Vec<u32>,
}

impl TextTokenizer {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let config: serde_json::Value =
            match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| ModelError::Tokenizer(format!("tokenizer_config.json: {e}")))?,
                Err(_) => serde_json::Value::Null,
            };
        let add_bos = config["add_bos_token"].as_bool().unwrap_or(false);
        let bos_id = token_field(&config["bos_token"]).and_then(|t| inner.token_to_id(&t));
        let chat_template = config["chat_template"].as_str().map(str::to_owned);
        Ok(TextTokenizer {
            inner,
            add_bos,
            bos_id,
            chat_template,
        })
    }

    /// Token ids of `text` as the base tokenizer produces them by default (BOS only when the
    /// tokenizer config adds one). Special-token strings in the text are matched as tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Encode without the BOS token, for pieces inside a layout (prompts, answers).
    pub fn encode_fragment(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The ANSWER-layout pieces for the families of chat templates we know.
    pub fn chat_pieces(&self) -> Option<ChatPieces> {
        let template = self.chat_template.as_deref()?;
        let (prefix, suffix, with_bos) = if template.contains("<|im_start|>") {
            (
                "<|im_start|>user\n",
                "<|im_end|>\n<|im_start|>assistant\n",
                false,
            )
        } else if template.contains("<|start_header_id|>") {
            (
                "<|start_header_id|>user<|end_header_id|>\n\n",
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                true,
            )
        } else if template.contains("[INST]") {
            ("[INST]", " [/INST]", true)
        } else {
            return None;
        };
        let mut prefix_ids = Vec::new();
        if with_bos {
            prefix_ids.extend(self.bos_id);
        }
        prefix_ids.extend(self.encode_fragment(prefix).ok()?);
        Some(ChatPieces {
            prefix: prefix.into(),
            suffix: suffix.into(),
            prefix_ids,
            suffix_ids: self.encode_fragment(suffix).ok()?,
        })
    }
}

/// `bos_token` is a string in most configs and `{"content": ...}` in some.
fn token_field(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(map) => map.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}
