"""`icae-train promote`: a long run's adapter replaces the committed one only when its
held-out teacher-forced AE loss, measured with the same settings, is lower (whatever BLEU
says: at BLEU ≈ 0 it ranks noise)."""

import json
import subprocess

import pytest

from icae_train.promote import promote


def adapter(path, content: bytes, loss=None, bleu=0.01, seed=None, metric="sacrebleu"):
    path.mkdir(parents=True)
    (path / "adapter.safetensors").write_bytes(content)
    (path / "icae_config.json").write_text(json.dumps({"mem_size": 32, "tag": content.decode()}))
    if loss is not None:
        autoencode = {"passages": 30, "passage_tokens": 128, "bleu4": bleu}
        autoencode["teacher_forced"] = {"loss": loss, "accuracy": 0.4}
        if seed is not None:
            autoencode["seed"] = seed
        if metric is not None:
            autoencode["bleu"] = metric
        (path / "EVAL.json").write_text(json.dumps({"autoencode": autoencode}))
    return path


def report(path, loss, bleu=0.01, passages=30, seed=0):
    autoencode = {
        "passages": passages,
        "passage_tokens": 128,
        "seed": seed,
        "bleu": "sacrebleu",
        "bleu4": bleu,
        "teacher_forced": {"loss": loss, "accuracy": 0.4},
    }
    path.write_text(json.dumps({"adapter": "runs/x/adapter", "autoencode": autoencode}))
    return path


def test_a_better_adapter_replaces_the_committed_one(tmp_path):
    # The committed EVAL.json predates the recorded seed: it counts as seed 0.
    # A lower BLEU does not stop it: at these levels BLEU ranks noise.
    into = adapter(tmp_path / "default", b"old", loss=3.4, bleu=0.02)
    new = adapter(tmp_path / "new", b"new")
    curve = tmp_path / "loss.png"
    curve.write_bytes(b"png")
    decision = promote(new, report(tmp_path / "eval.json", 3.1, bleu=0.01), into, curve)
    assert decision == {
        "loss": 3.1,
        "previous_loss": 3.4,
        "bleu4": 0.01,
        "previous_bleu4": 0.02,
        "promoted": True,
        "reason": "held-out AE loss improved",
    }
    assert (into / "adapter.safetensors").read_bytes() == b"new"
    assert json.loads((into / "icae_config.json").read_text())["tag"] == "new"
    saved = json.loads((into / "EVAL.json").read_text())
    assert saved["autoencode"]["teacher_forced"]["loss"] == 3.1 and saved["adapter"] == str(into)
    assert (into / "training-curve.png").read_bytes() == b"png"


@pytest.mark.parametrize("loss", [3.4, 3.5])
def test_an_adapter_that_is_not_better_changes_nothing(tmp_path, loss):
    into = adapter(tmp_path / "default", b"old", loss=3.4, bleu=0.01, seed=0)
    before = {p.name: p.read_bytes() for p in into.iterdir()}
    new = adapter(tmp_path / "new", b"new")
    decision = promote(new, report(tmp_path / "eval.json", loss, bleu=0.5), into)
    assert decision["promoted"] is False and decision["previous_loss"] == 3.4
    assert {p.name: p.read_bytes() for p in into.iterdir()} == before


def test_evaluations_with_other_settings_are_not_compared(tmp_path):
    into = adapter(tmp_path / "default", b"old", loss=3.4)
    new = adapter(tmp_path / "new", b"new")
    with pytest.raises(ValueError, match="'passages': 5"):
        promote(new, report(tmp_path / "a.json", 1.0, passages=5), into)
    with pytest.raises(ValueError, match="'seed': 7"):
        promote(new, report(tmp_path / "b.json", 1.0, seed=7), into)
    # An evaluation from before sacrebleu (no "bleu" entry) held a BLEU over token ids.
    old_metric = adapter(tmp_path / "old-metric", b"old", loss=3.4, metric=None)
    with pytest.raises(ValueError, match="'bleu': 'token ids'"):
        promote(new, report(tmp_path / "d.json", 1.0), old_metric)
    # One from before the teacher-forced measures: re-evaluate, do not guess.
    unmeasured = adapter(tmp_path / "unmeasured", b"old", loss=3.4)
    saved = json.loads((unmeasured / "EVAL.json").read_text())
    del saved["autoencode"]["teacher_forced"]
    (unmeasured / "EVAL.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="no autoencode.teacher_forced .* evaluate that adapter"):
        promote(new, report(tmp_path / "e.json", 1.0), unmeasured)
    assert (into / "adapter.safetensors").read_bytes() == b"old"
    # Through the command: a clear error, exit status 1, nothing replaced.
    cmd = ["icae-train", "promote", "--adapter", str(new), "--eval", str(tmp_path / "a.json"),
           "--into", str(into)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "same settings" in proc.stderr
    no_bleu = tmp_path / "c.json"
    no_bleu.write_text(json.dumps({"answers": {}}))
    with pytest.raises(ValueError, match="no autoencode.bleu4"):
        promote(new, no_bleu, into)
