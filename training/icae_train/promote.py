"""Promotion of a long run's adapter: a new adapter replaces the committed
default only when it reads held-out passages back better from its slots, measured the same
way: a lower teacher-forced AE loss (`autoencode.teacher_forced.loss` of `icae-train eval`)
on the same passages — the same number of passages, passage length and seed, and the same
BLEU implementation; anything else is refused rather than compared.

Not BLEU, although the targets are stated in BLEU: while reconstructions are wrong from the
first tokens, BLEU is ≈0 and ranks noise. Measured: BLEU 0.013 vs 0.006 promoted the long
run's step-467 adapter over one whose teacher-forced loss was 0.28 nats lower and whose slots
told the decoder five times more (docs/training.md, "Promotion"). The loss is what
training lowers, it moves smoothly, and a BLEU near 1 needs it near 0. BLEU is reported
beside it in every decision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .adapter_io import CONFIG_FILE

ADAPTER_FILE = "adapter.safetensors"
EVAL_FILE = "EVAL.json"
CURVE_FILE = "training-curve.png"
# What must agree for two AE evaluations to be compared, with the value an evaluation that
# does not record it had: the default seed, 0, and before sacrebleu a BLEU over token ids.
SETTINGS = {"passages": None, "passage_tokens": None, "seed": 0, "bleu": "token ids"}


def _measured(report: dict, where: str) -> tuple[dict, float, float]:
    """(settings, teacher-forced loss, BLEU-4) of an evaluation report."""
    autoencode = report.get("autoencode")
    if not autoencode or "bleu4" not in autoencode:
        raise ValueError(f"{where} has no autoencode.bleu4 (run `icae-train eval --heldout`)")
    if "teacher_forced" not in autoencode:
        raise ValueError(
            f"{where} has no autoencode.teacher_forced (an evaluation from before it was "
            "measured): evaluate that adapter again with `icae-train eval --heldout`"
        )
    settings = {key: autoencode.get(key, default) for key, default in SETTINGS.items()}
    return settings, autoencode["teacher_forced"]["loss"], autoencode["bleu4"]


def promote(adapter: Path, report_path: Path, into: Path, curve: Path | None = None) -> dict:
    """Copy `adapter` (with its evaluation and curve) into `into` if its held-out
    teacher-forced AE loss is lower than the one recorded there. Returns what was decided
    and why."""
    report = json.loads(report_path.read_text())
    new, new_loss, new_bleu = _measured(report, str(report_path))
    current_path = into / EVAL_FILE
    old_loss = old_bleu = None
    if current_path.exists():
        old, old_loss, old_bleu = _measured(json.loads(current_path.read_text()), str(current_path))
        if old != new:
            raise ValueError(
                f"{report_path} was measured with {new}, {current_path} with {old}: "
                "evaluate with the same settings to compare"
            )
    decision = {
        "loss": new_loss,
        "previous_loss": old_loss,
        "bleu4": new_bleu,
        "previous_bleu4": old_bleu,
    }
    if old_loss is not None and new_loss >= old_loss:
        return {**decision, "promoted": False, "reason": "held-out AE loss did not improve"}
    into.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_FILE, CONFIG_FILE):
        shutil.copyfile(adapter / name, into / name)
    report["adapter"] = str(into)
    current_path.write_text(json.dumps(report, indent=2) + "\n")
    if curve is not None and curve.exists():
        shutil.copyfile(curve, into / CURVE_FILE)
    return {**decision, "promoted": True, "reason": "held-out AE loss improved"}
