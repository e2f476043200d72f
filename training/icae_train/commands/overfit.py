"""`icae-train overfit`: the overfit check (see icae_train.overfit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..config import OverfitConfig
from ..flags import add_flags, from_args
from .common import add_icae_flags, add_model_flags, device, icae_config, tokenize_documents

# The repository's docs/: the texts when neither --corpus nor --tokens is given.
DOCS_DIR = Path(__file__).resolve().parents[3] / "docs"


def add_parser(sub):
    p = sub.add_parser(
        "overfit",
        help="the overfit check: train on one fixed batch until its teacher-forced AE "
        "accuracy reaches a target",
    )
    add_model_flags(p)
    p.add_argument("--corpus", type=Path, help="texts from this corpus (default: docs/*.md)")
    p.add_argument("--tokens", type=Path, help="texts from this tokenized .npz")
    p.add_argument("--texts", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=64)
    add_icae_flags(
        p,
        mem_size=16,
        lora_r=16,
        target_modules="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj".split(","),
    )
    add_flags(p, OverfitConfig, defaults={"max_steps": 300})
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the history as JSON here")
    p.set_defaults(func=run)


def _texts(args, tokenizer) -> list[list[int]]:
    """`--texts` windows of `--text-tokens` tokens from the corpus (or, without one, the
    Markdown files under the repository's docs/), chosen by `--seed`."""
    import random

    from ..data import read_tokens

    if args.tokens:
        documents = read_tokens(args.tokens)
    elif args.corpus:
        documents = tokenize_documents(tokenizer, args.corpus / "train.jsonl", None)
    else:
        texts = [p.read_text() for p in sorted(DOCS_DIR.glob("*.md"))]
        documents = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # Non-overlapping windows of every document, `--texts` of them drawn by `--seed`.
    n = args.text_tokens
    windows = [d[i : i + n] for d in documents for i in range(0, len(d) - n + 1, n)]
    if len(windows) < args.texts:
        sys.exit(f"error: only {len(windows)} windows of {n} tokens in the texts")
    return random.Random(args.seed).sample(windows, args.texts)


def run(args):
    from transformers import AutoTokenizer

    from ..model import ICAE
    from ..overfit import overfit

    device_name, dtype = device(args.device)
    texts = _texts(args, AutoTokenizer.from_pretrained(args.model))
    config = icae_config(args)
    torch.manual_seed(args.seed)
    model = ICAE(args.model, config, dtype=dtype, device=device_name)
    cfg = from_args(OverfitConfig, args)
    history = overfit(model, texts, cfg, log=lambda r: print(json.dumps(r), flush=True))
    report = {"icae": config.__dict__, "overfit": cfg.__dict__, "history": history}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    last = history[-1]
    reached = last["accuracy"] >= args.target_accuracy
    print(
        f"{'reached' if reached else 'did not reach'} accuracy {args.target_accuracy} "
        f"(last {last['accuracy']:.3f}, loss {last['loss']:.3f}) at step {last['step']} "
        f"in {last['seconds']:.0f} s"
    )
