//! The example data (`examples/pwc_dev.jsonl`: documents with a question and its answer)
//! and complete generations, as the demo and the benchmarks read them.

use anyhow::{Context, Result};
use icae_client::{status_error, Decoder, Generated};
use icae_proto::v1::GenerateRequest;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct PwcRecord {
    pub input: String,
    pub prompt: String,
    pub answer: String,
}

pub fn read_pwc(path: &std::path::Path) -> Result<Vec<PwcRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// Run a generation to its final message, as the demo and `bench serve` need it: their
/// numbers come from complete generations, so a stream cut short is an error.
pub async fn generate(decoder: &mut Decoder, request: GenerateRequest) -> Result<Generated> {
    let generated = icae_client::generate(decoder, request)
        .await
        .map_err(status_error)?;
    generated.completed()?;
    Ok(generated)
}
