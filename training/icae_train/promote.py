"""Promotion of a long run's adapter (issue 13, item 3): a new adapter replaces the committed
default only when its held-out AE BLEU, measured the same way, is higher. "The same way"
means the same number of passages, passage length and seed; anything else is refused rather
than compared."""

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


def _settings(report: dict, where: str) -> dict:
    autoencode = report.get("autoencode")
    if not autoencode or "bleu4" not in autoencode:
        raise ValueError(f"{where} has no autoencode.bleu4 (run `icae-train eval --heldout`)")
    return {key: autoencode.get(key, default) for key, default in SETTINGS.items()}


def promote(adapter: Path, report_path: Path, into: Path, curve: Path | None = None) -> dict:
    """Copy `adapter` (with its evaluation and curve) into `into` if its held-out BLEU beats
    the one recorded there. Returns what was decided and why."""
    report = json.loads(report_path.read_text())
    new = _settings(report, str(report_path))
    new_bleu = report["autoencode"]["bleu4"]
    current_path = into / EVAL_FILE
    old_bleu = None
    if current_path.exists():
        current = json.loads(current_path.read_text())
        old = _settings(current, str(current_path))
        if old != new:
            raise ValueError(
                f"{report_path} was measured with {new}, {current_path} with {old}: "
                "evaluate with the same settings to compare"
            )
        old_bleu = current["autoencode"]["bleu4"]
    decision = {"bleu4": new_bleu, "previous_bleu4": old_bleu}
    if old_bleu is not None and new_bleu <= old_bleu:
        return {**decision, "promoted": False, "reason": "held-out BLEU did not improve"}
    into.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_FILE, CONFIG_FILE):
        shutil.copyfile(adapter / name, into / name)
    report["adapter"] = str(into)
    current_path.write_text(json.dumps(report, indent=2) + "\n")
    if curve is not None and curve.exists():
        shutil.copyfile(curve, into / CURVE_FILE)
    return {**decision, "promoted": True, "reason": "held-out BLEU improved"}
