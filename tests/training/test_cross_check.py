"""The default (trained) adapter gives the same slots and greedy tokens in the Python
training model (transformers + peft) and in the Rust engine."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from conftest import ROOT, run_icae, run_icae_json
from icae_train.adapter_io import load_adapter

ADAPTER = ROOT / "models" / "smollm2-135m-icae"
TEXTS = [
    "Benoit Quennedey, a senior civil servant in the French Senate, "
    "was arrested on suspicion of spying.",
    "The decoder reads memory slots like tokens. " * 20,  # several segments
]


@pytest.fixture(scope="module")
def python_model(model_dir):
    if not (ADAPTER / "icae_config.json").exists():
        pytest.fail(f"the default adapter {ADAPTER} is missing")
    return load_adapter(model_dir, ADAPTER)


@pytest.mark.parametrize("text", TEXTS, ids=["short", "multi-segment"])
def test_slots_and_greedy_tokens_agree(text, model_dir, python_model, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(text)
    slots_file = tmp_path / "slots.safetensors"
    # fmt: off
    run_icae(
        "compress", "--model", model_dir, "--adapter", ADAPTER, "--device", "cpu",
        "--text-file", text_file, "--out", slots_file,
    )
    # fmt: on
    ours = load_file(str(slots_file))["slots"]
    ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(text, add_special_tokens=False)
    with torch.no_grad():
        expected = python_model.compress(ids)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= 1e-3 * expected.abs().max().item()

    # fmt: off
    generated = run_icae_json(
        "generate", "--model", model_dir, "--adapter", ADAPTER, "--device", "cpu",
        "--slots", slots_file, "--mode", "autoencode", "--greedy", "--max-new-tokens", 16, "--json",
    )
    # fmt: on
    want = python_model.greedy(python_model.ae_layout(expected), 16)
    assert generated["token_ids"] == want
