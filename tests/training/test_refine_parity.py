"""Test-time slot refinement in the Rust engine (`icae compress --refine-steps`) gives the
slots, step count and reconstruction loss of the PyTorch oracle (training/icae_train/refine.py:
transformers + peft, torch autograd, torch.optim.Adam) on the same steps and data."""

import json
import subprocess

import pytest
from safetensors import safe_open
from transformers import AutoTokenizer

from conftest import ROOT, run_icae_json
from icae_train.adapter_io import load_adapter
from icae_train.refine import (
    RefineOptions,
    SlotRefiner,
    reconstruction_loss,
    refine,
    scheduled_rate,
)

ADAPTER = ROOT / "models" / "smollm2-135m-icae"
TEXTS = {
    "one-segment": "Benoit Quennedey, a senior civil servant in the French Senate, "
    "was arrested on suspicion of spying for North Korea in November 2018.",
    "two-segments": "The decoder reads memory slots like tokens, and refinement moves "
    "them until it reads the text back. " * 7,
}
STEPS, LR = 4, 0.1
# The oracle refines the engine's own plain slots, so that only refinement is compared (the
# encoders agree within 1e-3 of the largest slot, tests/training/test_cross_check.py). The
# updates (refined - plain) must agree within this share of their largest magnitude: the two
# sides sum the same products in other orders, and Adam's normalised steps carry that noise.
UPDATE_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def oracle(model_dir):
    return load_adapter(model_dir, ADAPTER)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(str(model_dir))


def compress(model_dir, tmp_path, text, *flags):
    """`icae compress` with `flags`: its JSON summary, slots and metadata."""
    text_file = tmp_path / "text.txt"
    text_file.write_text(text)
    out = tmp_path / f"slots-{len(list(tmp_path.iterdir()))}.safetensors"
    # fmt: off
    summary = run_icae_json(
        "compress", "--model", model_dir, "--adapter", ADAPTER, "--device", "cpu",
        "--text-file", text_file, "--out", out, "--json", *flags,
    )
    # fmt: on
    with safe_open(str(out), "pt") as f:
        return summary, f.get_tensor("slots").clone(), f.metadata()


@pytest.mark.parametrize("name", TEXTS)
def test_refined_slots_match_the_oracle(name, model_dir, oracle, tokenizer, tmp_path):
    text = TEXTS[name]
    ids = tokenizer.encode(text, add_special_tokens=False)
    _, start, _ = compress(model_dir, tmp_path, text)
    summary, ours, meta = compress(
        model_dir, tmp_path, text, "--refine-steps", STEPS, "--refine-lr", LR
    )
    want = refine(oracle, ids, start, RefineOptions(STEPS, LR))
    assert ours.shape == want.slots.shape
    ours_update, want_update = ours - start, want.slots - start
    scale = want_update.abs().max().item()
    assert scale > 0.05, "refinement hardly moved the slots: the comparison would say little"
    assert (ours_update - want_update).abs().max().item() <= UPDATE_TOLERANCE * scale
    assert summary["refine_steps"] == want.steps_run == STEPS
    assert summary["reconstruction_loss"] == pytest.approx(want.reconstruction_loss, rel=2e-3)
    assert float(meta["reconstruction_loss"]) == summary["reconstruction_loss"]
    assert meta["refine_steps"] == str(STEPS) and meta["refine_steps_run"] == str(STEPS)
    assert want.reconstruction_loss < reconstruction_loss(oracle, start, ids)


def test_refined_slots_at_a_higher_rate_match_the_oracle(model_dir, oracle, tokenizer, tmp_path):
    """`--slots-per-segment 16`: the encoder's first 16 slots of each segment (the oracle's
    `compress(ids, 16)`), refined, as the oracle refines them."""
    text = TEXTS["two-segments"]
    ids = tokenizer.encode(text, add_special_tokens=False)
    plain, start, _ = compress(model_dir, tmp_path, text, "--slots-per-segment", 16)
    expected = oracle.compress(ids, 16).detach()
    assert plain["num_segments"] == 2 and start.shape == expected.shape == (32, 576)
    assert (start - expected).abs().max().item() <= 1e-3 * expected.abs().max().item()
    summary, ours, _ = compress(
        model_dir, tmp_path, text, "--slots-per-segment", 16, "--refine-steps", STEPS,
        "--refine-lr", LR,
    )  # fmt: skip
    want = refine(oracle, ids, start, RefineOptions(STEPS, LR))
    ours_update, want_update = ours - start, want.slots - start
    scale = want_update.abs().max().item()
    assert scale > 0.05
    assert (ours_update - want_update).abs().max().item() <= UPDATE_TOLERANCE * scale
    assert summary["reconstruction_loss"] == pytest.approx(want.reconstruction_loss, rel=2e-3)


def test_plain_scores_and_early_stops_match_the_oracle(model_dir, oracle, tokenizer, tmp_path):
    text = TEXTS["one-segment"]
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The plain slots' fidelity score: one decoder forward, no step.
    summary, start, meta = compress(model_dir, tmp_path, text, "--reconstruction-loss")
    plain = reconstruction_loss(oracle, start, ids)
    assert summary["reconstruction_loss"] == pytest.approx(plain, rel=1e-3)
    assert summary["refine_steps"] == 0 and "refine_steps" not in meta

    # A target halfway between the losses before steps 2 and 3 stops both sides at step 3.
    refiner = SlotRefiner(oracle, [ids], start.unsqueeze(0), LR)
    losses = [refiner.step(scheduled_rate(LR, step, 10)).item() for step in range(4)]
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


def test_refine_eval_reports_each_step_count(model_dir, tmp_path):
    """`icae-train refine-eval`: each step count is its own refinement of the same held-out
    passages, from the encoder's slots or from the mean slot, at the adapter's rate or a
    higher one."""
    texts = [
        "Refinement moves the memory slots until the frozen decoder reads the text back. " * 3,
        "A second document about the weather in Lyon: rain all week, twelve degrees. " * 3,
    ]
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "report.json"
    base = ["icae-train", "refine-eval", "--model", str(model_dir), "--adapter", str(ADAPTER)]
    base += ["--device", "cpu", "--heldout", str(heldout), "--passages", "2"]
    base += ["--passage-tokens", "24", "--steps", "3,0", "--out", str(out)]
    for extra in ([], ["--cold-start", "--slots", "4"]):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(out.read_text())
        assert report["passages"] == 2 and report["passage_tokens"] == 24
        assert report["slots"] == (4 if extra else 32)
        assert report["start"] == ("mean slot" if extra else "encoder")
        plain, refined = report["steps"]
        assert (plain["steps"], refined["steps"]) == (0, 3)
        assert refined["teacher_forced_loss"] < plain["teacher_forced_loss"]
        for row in (plain, refined):
            assert 0 <= row["bleu4"] <= 1 and 0 <= row["exact"] <= 1
            assert 0 <= row["teacher_forced_accuracy"] <= 1
    proc = subprocess.run(
        base + ["--passage-tokens", "5000"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0 and "5000" in proc.stderr
