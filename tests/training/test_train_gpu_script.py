"""scripts/train-gpu.sh end to end on the CPU with tiny settings: two recipes side by side,
each a few steps of its own run with an exported adapter; the same command again resumes a
run where it stopped (on two data-parallel processes); a GGUF base trains from a tokenized
corpus and the run resumes on the imported model directory."""

import json
import os
import subprocess
import sys

import torch
from test_training import TEXT

from conftest import ROOT
from icae_train.model import load_base

SCRIPT = ROOT / "scripts" / "train-gpu.sh"
# Tiny shapes for the fresh recipe (the continued one keeps the default's), 2 windows a step;
# --stop-after ends an invocation early as --max-minutes would.
# fmt: off
FLAGS = [
    "--checkpoint-every", "1", "--mem-size", "8", "--lora-r", "4", "--min-tokens", "8",
    "--warmup-steps", "1", "--batch-windows", "2",
]
# fmt: on


def script(*args, ok=True):
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def steps_done(run):
    progress = json.loads((run / "checkpoint" / "progress.json").read_text())
    return [h["step"] for h in progress["history"]]


def run_json(run):
    return json.loads((run / "run.json").read_text())


def write_corpus(path):
    path.mkdir(parents=True)
    docs = [f"{TEXT} Document {i}: " + " ".join(f"w{i}-{j}" for j in range(40)) for i in range(6)]
    (path / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


def test_recipes_side_by_side_then_the_same_command_resumes(model_dir, tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_corpus(corpus)
    common = ["--model", model_dir, "--corpus", corpus, "--out", out]
    script(*common, "--recipes", "continue,fresh-qv", "--steps", 4, "--", *FLAGS, "--stop-after", 2)
    assert (out / "tokens.npz").exists()
    default = json.loads((ROOT / "models/smollm2-135m-icae/icae_config.json").read_text())
    for name in ("continue", "fresh-qv"):
        run = out / name
        assert steps_done(run) == [1, 2], name
        assert run_json(run)["train"]["steps"] == 4
        assert (run / "checkpoint" / "state.pt").exists() and (run / "loss.png").exists()
        assert json.loads((run / "adapter" / "icae_config.json").read_text())["trained"]
    # The continued recipe keeps the default's shape; the fresh one has the given shape.
    continued = run_json(out / "continue")
    assert continued["icae"]["target_modules"] == default["target_modules"]
    assert continued["args"]["seed"] == "5"
    fresh = json.loads((out / "fresh-qv" / "adapter" / "icae_config.json").read_text())
    assert (fresh["mem_size"], fresh["slot_projector"]) == (8, True)

    # Again, without --steps: the run resumes at step 2 of its own schedule, here on two
    # data-parallel processes (torch.distributed.run, gloo on the CPU).
    script(*common, "--recipes", "fresh-qv", "--processes", 2, "--", *FLAGS, "--stop-after", 1)
    assert steps_done(out / "fresh-qv") == [1, 2, 3]
    assert run_json(out / "fresh-qv")["train"]["steps"] == 4
    assert run_json(out / "fresh-qv")["processes"] == 2
    assert steps_done(out / "continue") == [1, 2]  # not named: left alone


def test_a_gguf_base_trains_from_tokens_and_resumes_on_the_model_directory(
    model_dir, default_gguf, tmp_path
):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_corpus(corpus)
    tokens = tmp_path / "tokens.npz"
    subprocess.run(
        [sys.executable, "-m", "icae_train.cli", "tokenize", "--model", model_dir,
         "--corpus", corpus, "--out", tokens],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "training")},
    )  # fmt: skip
    gguf = ["--model", default_gguf, "--out", out, "--recipes", "fresh-qv", "--steps", 3]
    said = script(*gguf, ok=False)
    assert "pass --tokens" in said  # a GGUF has no tokenizer directory
    script(*gguf, "--tokens", tokens, "--", *FLAGS, "--stop-after", 1)
    run = out / "fresh-qv"
    assert steps_done(run) == [1] and not (run / "adapter").exists()
    # The GGUF dequantizes to the imported directory's weights: the run goes on there.
    there = load_base(str(default_gguf), torch.float32)
    here = load_base(str(model_dir), torch.float32)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        assert torch.equal(there.state_dict()[name], here.state_dict()[name]), name
    del there, here
    script("--model", model_dir, "--tokens", tokens, "--out", out, "--recipes", "fresh-qv",
           "--", *FLAGS, "--stop-after", 1)  # fmt: skip
    assert steps_done(run) == [1, 2] and run_json(run)["train"]["steps"] == 3
    assert (run / "adapter" / "adapter.safetensors").exists()
