"""`icae-train search`: recipes compared under one protocol (see icae_train.search)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import Protocol
from ..flags import add_flags, from_args
from .common import add_model_flags, device, tokenize_documents


def add_parser(sub):
    p = sub.add_parser(
        "search",
        help="compare recipes under one protocol (same data, seed, examples seen, held-out set)",
    )
    add_model_flags(p)
    p.add_argument("--corpus", type=Path, required=True, help="with train.jsonl, heldout.jsonl")
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        help="name:key=value,... (keys: slot_projector, lr, lora_r, random_offsets, "
        "slot_scale, aux_weight, curriculum, lm_ratio, lm_after); repeatable; none = the "
        "default set",
    )
    add_flags(
        p,
        Protocol,
        only=(
            "steps",
            "batch",
            "text_tokens",
            "compression_rate",
            "target_modules",
            "eval_every",
            "eval_texts",
        ),
    )
    p.add_argument("--max-documents", type=int, default=None)
    add_flags(p, Protocol, only=("seed",))
    p.add_argument("--out", type=Path, required=True, help="the report (JSON)")
    p.add_argument("--plot", type=Path, help="curves of every candidate (PNG)")
    p.set_defaults(func=run)


def run(args):
    from transformers import AutoTokenizer

    from ..search import DEFAULT_CANDIDATES, parse_candidate, plot_curves, search

    device_name, dtype = device(args.device)
    try:
        candidates = [parse_candidate(c) for c in args.candidate] or DEFAULT_CANDIDATES
    except ValueError as e:
        sys.exit(f"error: {e}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train_docs = tokenize_documents(tokenizer, args.corpus / "train.jsonl", args.max_documents)
    heldout_docs = tokenize_documents(tokenizer, args.corpus / "heldout.jsonl", None)
    # One segment per window: the memory tokens follow from the window and the rate.
    protocol = from_args(Protocol, args, mem_size=args.text_tokens // args.compression_rate)

    def log(name, record):
        print(json.dumps({"candidate": name, **record}), flush=True)

    report = search(
        args.model, candidates, protocol, train_docs, heldout_docs, dtype, device_name, log
    )
    args.out.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_curves(report, args.plot)
    for row in report["table"]:
        print(
            f"{row['name']:<20} accuracy {row['start']['accuracy']:.3f} -> {row['accuracy']:.3f}"
            f"  loss {row['start']['loss']:.3f} -> {row['loss']:.3f}"
        )
