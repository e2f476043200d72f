"""Test-time slot refinement in the Rust engine (`icae compress --refine-steps`) gives the
slots, step count and reconstruction loss of the PyTorch oracle (training/icae_train/refine.py:
transformers + peft, torch autograd, torch.optim.Adam) on the same steps and data."""

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from conftest import ROOT, run_icae_json
from icae_train.adapter_io import load_adapter
from icae_train.refine import RefineOptions, SlotRefiner, reconstruction_loss, refine

ADAPTER = ROOT / "models" / "smollm2-135m-icae"
TEXTS = {
    "one-segment": "Benoit Quennedey, a senior civil servant in the French Senate, "
    "was arrested on suspicion of spying for North Korea in November 2018.",
    "two-segments": "The decoder reads memory slots like tokens, and refinement moves "
    "them until it reads the text back. " * 7,
}
STEPS, LR = 4, 0.1
# Slots after the same Adam steps, within this share of their largest magnitude: the two
# sides sum the same products in other orders, and Adam's normalised steps carry that noise.
SLOT_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def oracle(model_dir):
    return load_adapter(model_dir, ADAPTER)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(str(model_dir))


def compress(model_dir, tmp_path, text, *flags):
    text_file = tmp_path / "text.txt"
    text_file.write_text(text)
    out = tmp_path / "slots.safetensors"
    # fmt: off
    summary = run_icae_json(
        "compress", "--model", model_dir, "--adapter", ADAPTER, "--device", "cpu",
        "--text-file", text_file, "--out", out, "--json", *flags,
    )
    # fmt: on
    with safe_open(str(out), "pt") as f:
        return summary, f.get_tensor("slots"), f.metadata()


@pytest.mark.parametrize("name", TEXTS)
def test_refined_slots_match_the_oracle(name, model_dir, oracle, tokenizer, tmp_path):
    text = TEXTS[name]
    summary, ours, meta = compress(
        model_dir, tmp_path, text, "--refine-steps", STEPS, "--refine-lr", LR
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        start = oracle.compress(ids)
    want = refine(oracle, ids, start, RefineOptions(STEPS, LR))
    assert ours.shape == want.slots.shape
    # Refinement moved the slots far beyond the tolerance, so agreeing means something.
    scale = want.slots.abs().max().item()
    assert (want.slots - start).abs().max().item() > 20 * SLOT_TOLERANCE * scale
    assert (ours - want.slots).abs().max().item() <= SLOT_TOLERANCE * scale
    assert summary["refine_steps"] == want.steps_run == STEPS
    assert summary["reconstruction_loss"] == pytest.approx(want.reconstruction_loss, rel=2e-3)
    assert float(meta["reconstruction_loss"]) == summary["reconstruction_loss"]
    assert meta["refine_steps"] == str(STEPS) and meta["refine_steps_run"] == str(STEPS)
    plain = reconstruction_loss(oracle, start, ids)
    assert want.reconstruction_loss < plain


def test_plain_scores_and_early_stops_match_the_oracle(model_dir, oracle, tokenizer, tmp_path):
    text = TEXTS["one-segment"]
    ids = tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        start = oracle.compress(ids)
    # The plain slots' fidelity score: one decoder forward, no step.
    summary, _, meta = compress(model_dir, tmp_path, text, "--reconstruction-loss")
    plain = reconstruction_loss(oracle, start, ids)
    assert summary["reconstruction_loss"] == pytest.approx(plain, rel=1e-3)
    assert summary["refine_steps"] == 0 and "refine_steps" not in meta

    # A target halfway between the losses before steps 2 and 3 stops both sides at step 3.
    refiner = SlotRefiner(oracle, [ids], start.unsqueeze(0), LR)
    losses = [refiner.step().item() for _ in range(4)]
    target = (losses[2] + losses[3]) / 2
    summary, _, meta = compress(
        model_dir, tmp_path, text, "--refine-steps", 10, "--refine-lr", LR,
        "--target-loss", target,
    )  # fmt: skip
    want = refine(oracle, ids, start, RefineOptions(10, LR, target))
    assert want.steps_run == 3
    assert summary["refine_steps"] == 3
    assert meta["refine_steps"] == "10" and float(meta["refine_target_loss"]) == target
    assert summary["reconstruction_loss"] <= target
