"""`icae-train refine-eval`: reconstruction of held-out passages after test-time slot
refinement, against the number of steps (see icae_train.refine_eval)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .common import _positive_int, add_model_flags, device, tokenize_documents


def add_parser(sub):
    p = sub.add_parser(
        "refine-eval",
        help="reconstruction of held-out passages after test-time slot refinement, "
        "against the number of steps (BLEU, exact, teacher-forced)",
    )
    add_model_flags(p)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--heldout", type=Path, required=True, help="held-out corpus JSONL")
    p.add_argument("--passages", type=_positive_int, default=16)
    p.add_argument("--passage-tokens", type=_positive_int, default=128)
    p.add_argument(
        "--steps",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[0, 10, 25, 50, 100],
        help="comma-separated step counts; each is its own refinement",
    )
    p.add_argument("--lr", type=float, default=0.1, help="Adam's peak learning rate")
    p.add_argument(
        "--cold-start",
        action="store_true",
        help="start every slot at the mean slot instead of the encoder's slots",
    )
    p.add_argument(
        "--slots",
        type=_positive_int,
        default=None,
        help="slots per passage, the passage as one segment with the first N memory "
        "tokens (a higher rate than the adapter's); default: the adapter's layout",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=run)


def run(args):
    from transformers import AutoTokenizer

    from ..adapter_io import load_adapter
    from ..evaluate import heldout_passages
    from ..refine_eval import refine_eval

    device_name, _ = device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    documents = tokenize_documents(tokenizer, args.heldout, None)
    try:  # before loading the model: a length no document reaches is an input error
        heldout_passages(documents, args.passage_tokens, 1, args.seed)
    except ValueError as e:
        sys.exit(f"error: {e}")
    # f32 everywhere: the engine's parity with this oracle is checked in f32.
    model = load_adapter(args.model, args.adapter, device=device_name, dtype=torch.float32)
    report = refine_eval(
        model,
        tokenizer,
        documents,
        args.passage_tokens,
        args.passages,
        args.steps,
        args.lr,
        cold_start=args.cold_start,
        slots_per_passage=args.slots,
        seed=args.seed,
    )
    report["adapter"] = str(args.adapter)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
