"""scripts/train-gpu.sh end to end on the CPU with a tiny step count: pieces that fit one call
each beside the working tree, a first call that stores its piece and probes every arm's speed,
a second that reassembles the GGUF and trains every arm side by side for the step count the
probe says fits, the returned parts unpacked here, and the resume on the imported model."""

import importlib.metadata
import json
import os
import subprocess

import torch
from test_training import TEXT

from conftest import ROOT
from icae_train.model import load_base

SCRIPT = ROOT / "scripts" / "train-gpu.sh"
CALL_BYTES = 64 * 2**20
# Tiny shapes for the fresh arms (the continued one keeps the default's), 2 windows a step.
# fmt: off
FLAGS = [
    "--checkpoint-every", "1", "--mem-size", "8", "--lora-r", "4", "--min-tokens", "8",
    "--warmup-steps", "1", "--batch-windows", "2",
]
# fmt: on
# The default arms (the committed default continued, on one segment and on 1-4) and a fresh one.
ARMS = ("continue", "continue-seg4", "fresh-qv")
# A return limit that takes every arm's tensors and the fresh arm's optimizer state (4.5 MB),
# not the continued arms' (10 MB each): what happens to the continued default's 40 MB.
RETURN_BYTES = 20 * 2**20


def script(*args, env, ok=True):
    proc = subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def history(run):
    return json.loads((run / "checkpoint" / "progress.json").read_text())["history"]


def tree_bytes():
    """What travels with every call besides the carried piece (tracked + untracked files)."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    paths = (ROOT / n.decode() for n in names if n)
    return sum(p.stat().st_size for p in paths if p.is_file())


def write_long_corpus(path):
    """Documents of ≈600 tokens: windows of four 128-token segments fit them."""
    path.mkdir(parents=True)
    docs = [
        f"{TEXT} {TEXT} Document {i}: " + " ".join(f"w{i}-{j}" for j in range(40)) for i in range(6)
    ]
    (path / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


def test_pieces_probe_train_there_and_resume_here(model_dir, default_gguf, tmp_path):
    corpus, pack, out = tmp_path / "corpus", tmp_path / "pack", tmp_path / "out"
    write_long_corpus(corpus)
    env = {
        **os.environ,
        "ICAE_GPU_PACK": str(pack),
        "OUT": str(out),
        "ICAE_GPU_RETURN_BYTES": str(RETURN_BYTES),
        # Not this checkout's training/runs, where a real GPU run may lie (it would continue).
        "ICAE_GPU_RUNS": str(tmp_path / "runs"),
    }
    arms = ["--arms", ",".join(ARMS)]
    script("prepare", "--corpus", corpus, "--gguf", default_gguf, env=env)
    for piece in ("piece-1", "piece-2"):
        size = sum(f.stat().st_size for f in (pack / piece).rglob("*") if f.is_file())
        assert 0 < size and size + tree_bytes() <= CALL_BYTES, (piece, size)
    # transformers checks the carried gguf package's version through its metadata.
    carried = importlib.metadata.distributions(path=[str(pack / "piece-1" / "site")])
    assert [d.metadata["Name"] for d in carried if d.version] == ["gguf"]

    # Call 1 carries piece 1 only: stored, and every arm probed on a random model.
    (pack / "piece-2").rename(tmp_path / "held-back")
    said = script("train", "--device", "cpu", *arms, "--probe-steps", "2", "--", *FLAGS, env=env)
    assert "piece 2 is not here yet" in said
    rates = dict(line.split() for line in (pack / "store" / "rates").read_text().splitlines())
    assert sorted(rates) == sorted(ARMS) and all(float(r) > 0 for r in rates.values())

    # Call 2 carries piece 2 only (piece 1 was stored on arrival): reassembled, every arm trains
    # 2 steps (a stand-in for the wall time) of a schedule as long as the probe said fits
    # 5 minutes (at the CPU's seconds per step, more than 3 steps).
    (pack / "piece-1").rename(tmp_path / "piece-1-gone")
    (tmp_path / "held-back").rename(pack / "piece-2")
    minutes = 5
    script(
        "train",
        "--device",
        "cpu",
        *arms,
        "--max-minutes",
        str(minutes),
        "--",
        *FLAGS,
        "--stop-after",
        "2",
        env=env,
    )
    assert (out / "summary.txt").exists() and (out / "runs.tar.part-00").exists()
    parts = list(out.iterdir())
    assert len(parts) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    assert sum(p.stat().st_size for p in parts) <= RETURN_BYTES + 2**20

    (tmp_path / "piece-1-gone").rename(pack / "piece-1")
    runs = tmp_path / "runs"
    script("unpack", out, env=env)
    for arm in ARMS:
        run = runs / f"gpu-{arm}"
        assert [h["step"] for h in history(run)] == [1, 2], arm
        steps = json.loads((run / "run.json").read_text())["train"]["steps"]
        assert steps == int(minutes * 60 * 0.95 / float(rates[arm])) > 2, (arm, steps, rates)
    default = json.loads((ROOT / "models/smollm2-135m-icae/icae_config.json").read_text())
    for arm in ("continue", "continue-seg4"):
        meta = json.loads((runs / f"gpu-{arm}" / "run.json").read_text())
        assert meta["icae"]["target_modules"] == default["target_modules"], arm
        assert meta["args"]["max_segments"] == ("4" if arm == "continue-seg4" else "1")
        # Their optimizer state did not fit the return beside the rest; the smallest did.
        assert not (runs / f"gpu-{arm}" / "checkpoint" / "state.pt").exists()
        assert f"{arm}: optimizer state left there" in (out / "summary.txt").read_text()
    assert (runs / "gpu-fresh-qv" / "checkpoint" / "state.pt").exists()
    said = script("resume-cpu", runs / "gpu-continue", env=env, ok=False)
    assert "without its optimizer state" in said

    # The GGUF there and the imported directory here are the same weights, so a run resumes.
    there, here = (
        load_base(str(pack / "store" / "model.gguf"), torch.float32),
        load_base(str(model_dir), torch.float32),
    )
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        assert torch.equal(there.state_dict()[name], here.state_dict()[name]), name
    run = runs / "gpu-fresh-qv"
    script("resume-cpu", run, "--", *FLAGS, "--stop-after", "1", env=env)
    assert [h["step"] for h in history(run)] == [1, 2, 3]
    assert json.loads((run / "adapter" / "icae_config.json").read_text())["slot_projector"]
