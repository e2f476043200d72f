"""Llama-family variants the default model does not exercise, each a small random model
saved by transformers and compared with it: Llama-3 rope scaling with an untied LM head in
sharded safetensors, linear rope scaling, Mistral without grouped-query attention."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from conftest import run_icae

TEXT = "Rotary scaling, untied heads and shards: 1234 tokens, more or less."

VARIANTS = {
    "llama3-rope-untied-sharded": (
        LlamaForCausalLM,
        LlamaConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=49152,
            max_position_embeddings=4096,
            rope_theta=500000.0,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        "3MB",
    ),
    "linear-rope": (
        LlamaForCausalLM,
        LlamaConfig(
            hidden_size=96,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=2048,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            rope_scaling={"rope_type": "linear", "factor": 4.0},
        ),
        None,
    ),
    "mistral-no-gqa": (
        MistralForCausalLM,
        MistralConfig(
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=49152,
            max_position_embeddings=2048,
            sliding_window=None,
            tie_word_embeddings=False,
        ),
        None,
    ),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_logits_match(name, model_dir, tmp_path):
    cls, config, shard = VARIANTS[name]
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # larger weights than the default init make differences visible
        for p in model.parameters():
            p.mul_(4.0)
    out = tmp_path / name
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    if shard:
        assert (out / "model.safetensors.index.json").exists(), "the checkpoint should be sharded"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / f, out / f)
    logits_file = tmp_path / "logits.safetensors"
    run_icae("logits", "--model", out, "--device", "cpu", "--text", TEXT * 3, "--out", logits_file)
    ours = load_file(str(logits_file))
    with torch.no_grad():
        ref = model(ours["token_ids"].unsqueeze(0)).logits[0]
    diff = (ref - ours["logits"]).abs().max().item()
    assert diff <= 1e-3 * ref.abs().max().item(), diff
