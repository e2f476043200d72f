"""`icae-train export`: the adapter of a run's latest checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def add_parser(sub):
    p = sub.add_parser("export", help="write the adapter of a run's latest checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--lora-dtype",
        choices=["f32", "bf16"],
        default="f32",
        help="bf16 halves the file, as the official release",
    )
    p.add_argument("--notes", default=None, help="replace the notes recorded in icae_config.json")
    p.set_defaults(func=run)


def run(args):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from ..adapter_io import save_adapter
    from ..model import ICAE, IcaeConfig

    progress = json.loads((args.run_dir / "checkpoint" / "progress.json").read_text())
    config = IcaeConfig(**progress["meta"]["icae"])
    model = ICAE(args.model, config)
    model.load_trainable(load_file(str(args.run_dir / "checkpoint" / "trainable.safetensors")))
    notes = (
        args.notes
        or f"{progress['meta']['objective']} checkpoint at step {progress['step']} "
        f"of {args.run_dir.name}; see docs/training.md"
    )
    lora_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.lora_dtype]
    save_adapter(
        model,
        args.model,
        args.out,
        AutoTokenizer.from_pretrained(args.model),
        notes,
        lora_dtype=lora_dtype,
    )
    print(f"adapter (step {progress['step']}) written to {args.out}")
