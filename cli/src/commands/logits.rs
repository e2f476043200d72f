use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use icae_core::args::ModelArgs;
use icae_core::model::LlamaModel;
use icae_core::tokenizer::TextTokenizer;
use tch::{Kind, Tensor};

use icae_cli::common::TextArgs;

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub text: TextArgs,
    /// Output safetensors file with tensors `logits` [seq, vocab] and `token_ids` [seq].
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: LogitsArgs) -> Result<()> {
    let device = args.model.device.resolve()?;
    let model = LlamaModel::load(&args.model.model, device, args.model.dtype.resolve(device))?;
    let tokenizer = TextTokenizer::load(&args.model.model)?;
    let ids: Vec<i64> = tokenizer
        .encode(&args.text.read()?)?
        .into_iter()
        .map(i64::from)
        .collect();
    anyhow::ensure!(!ids.is_empty(), "text is empty");
    let _guard = tch::no_grad_guard();
    let ids = Tensor::from_slice(&ids).unsqueeze(0);
    let positions = Tensor::arange(ids.size()[1], (Kind::Int64, device)).unsqueeze(0);
    let hidden = model.forward(&model.embed(&ids), &positions, None, None, None);
    let logits = model
        .logits(&hidden)
        .squeeze_dim(0)
        .to_device(tch::Device::Cpu);
    Tensor::write_safetensors(
        &[("logits", logits), ("token_ids", ids.squeeze_dim(0))],
        &args.out,
    )?;
    Ok(())
}
