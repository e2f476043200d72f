"""scripts/train-gpu.sh end to end on the CPU with a tiny step count: pieces that fit one call
each, a first call that only stores its piece, a second that reassembles the GGUF and trains
into $OUT with a resumable checkpoint, and the resume on the imported model here."""

import json
import os
import subprocess

import torch
from test_training import write_corpus

from conftest import ROOT
from icae_train.model import load_base

SCRIPT = ROOT / "scripts" / "train-gpu.sh"
# fmt: off
FLAGS = [
    "--steps", "3", "--checkpoint-every", "1", "--mem-size", "8", "--lora-r", "4",
    "--min-tokens", "8", "--lm-ratio", "0", "--warmup-steps", "1", "--lr", "1e-3",
    "--slot-projector",
]
# fmt: on


def script(*args, env):
    proc = subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def history(run):
    return json.loads((run / "checkpoint" / "progress.json").read_text())["history"]


def test_pieces_train_there_and_resume_here(model_dir, default_gguf, tmp_path):
    corpus, pack, out = tmp_path / "corpus", tmp_path / "pack", tmp_path / "out"
    write_corpus(corpus)
    env = {**os.environ, "ICAE_GPU_PACK": str(pack), "OUT": str(out)}
    script("prepare", "--corpus", corpus, "--gguf", default_gguf, env=env)
    for piece in ("piece-1", "piece-2"):
        size = sum(f.stat().st_size for f in (pack / piece).rglob("*") if f.is_file())
        assert 0 < size <= 60 * 2**20 + 2**20, (piece, size)

    # Call 1 carries piece 1 only: nothing to train yet.
    (pack / "piece-2").rename(tmp_path / "held-back")
    assert "piece 2 is not here yet" in script("train", "--device", "cpu", "--", *FLAGS, env=env)
    (tmp_path / "held-back").rename(pack / "piece-2")
    # Call 2: reassembled, 2 of 3 steps (a stand-in for the wall-time budget), checkpoint in $OUT.
    script("train", "--device", "cpu", "--", *FLAGS, "--stop-after", "2", env=env)
    run = out / "run"
    assert [h["step"] for h in history(run)] == [1, 2]
    assert not (run / "adapter").exists(), "no export where the imported model is absent"

    # The GGUF there and the imported directory here are the same weights, so the run resumes.
    there, here = (
        load_base(str(pack / "model.gguf"), torch.float32),
        load_base(str(model_dir), torch.float32),
    )
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        assert torch.equal(there.state_dict()[name], here.state_dict()[name]), name
    script("resume-cpu", run, "--", *FLAGS, env=env)
    assert [h["step"] for h in history(run)] == [1, 2, 3]
    assert json.loads((run / "adapter" / "icae_config.json").read_text())["slot_projector"]
