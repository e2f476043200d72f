use anyhow::Result;
use clap::Args;
use icae_core::tokenizer::TextTokenizer;
use serde_json::json;

use icae_cli::common::{print_json, TextArgs};

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// HF-layout model directory (only tokenizer.json and tokenizer_config.json are read).
    #[arg(long, env = "ICAE_MODEL")]
    pub model: std::path::PathBuf,
    #[command(flatten)]
    pub text: TextArgs,
    /// Print {"token_ids": [...]} instead of space-separated ids.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    let tokenizer = TextTokenizer::load(&args.model)?;
    let ids = tokenizer.encode(&args.text.read()?)?;
    if args.json {
        print_json(&json!({ "token_ids": ids }))
    } else {
        println!(
            "{}",
            ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        );
        Ok(())
    }
}
