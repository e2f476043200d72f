"""`icae-train pretrain`: autoencoding + language-modelling pretraining."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import IcaeConfig
from ..flags import add_flags
from .common import (
    add_icae_flags,
    add_model_flags,
    add_train_flags,
    device,
    icae_config,
    tokenize_documents,
    train_and_export,
)


def add_parser(sub):
    p = sub.add_parser("pretrain", help="autoencoding + language-modelling pretraining")
    add_model_flags(p)
    add_train_flags(p)
    p.add_argument("--corpus", type=Path, help="directory with train.jsonl")
    p.add_argument(
        "--tokens",
        type=Path,
        help="tokenized documents (.npz from `icae-train tokenize`) instead of --corpus",
    )
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        help="start from this adapter directory (its mem_size/rate/LoRA settings win) "
        "instead of a fresh one; with --slot-projector, an adapter without a projector gets "
        "one at the identity, so training starts from exactly what the adapter computes",
    )
    add_icae_flags(p)
    p.add_argument(
        "--lm-ratio",
        type=float,
        default=0.5,
        help="share of LM examples (paper: about 0.4-0.6 of AE)",
    )
    add_flags(p, IcaeConfig, only=("lm_token",))
    p.add_argument(
        "--max-segments",
        type=int,
        default=1,
        help="longest example, in segments of mem_size x rate tokens",
    )
    p.add_argument("--min-tokens", type=int, default=16)
    p.add_argument(
        "--min-lm-tokens",
        type=int,
        default=16,
        help="an LM example needs at least this many continuation tokens",
    )
    p.add_argument(
        "--leave-tokens-for-lm", type=int, default=8, help="first continuation tokens without loss"
    )
    p.add_argument(
        "--batch-windows",
        type=int,
        default=0,
        help="each micro-step is one batched forward of AE windows from random offsets (needs "
        "--lm-ratio 0): this many windows of mem_size x rate tokens, or with --max-segments S "
        "> 1, s whole segments (s drawn from 1..S) in N // s windows; 0: one example of any "
        "length",
    )
    p.add_argument(
        "--first-target-weight",
        type=float,
        default=1.0,
        help="weight of each window's first target (the token read at the [AE] position) in "
        "the AE loss, the others weighing 1 (needs --batch-windows)",
    )
    p.set_defaults(func=run)


def run(args):
    from transformers import AutoTokenizer

    from ..data import PretrainStream
    from ..model import ICAE, AutoencodeBatch, AutoencodeInput, LmInput

    device_name, dtype = device(args.device)
    if args.first_target_weight <= 0:
        sys.exit(f"error: --first-target-weight must be > 0 (given {args.first_target_weight})")
    if args.first_target_weight != 1.0 and not args.batch_windows:
        sys.exit("error: --first-target-weight weighs batched AE windows: it needs --batch-windows")
    if args.batch_windows and args.lm_ratio != 0:
        sys.exit(
            "error: --batch-windows trains autoencoding only: it needs "
            f"--lm-ratio 0 (given {args.lm_ratio})"
        )
    # The tokenizer reads --corpus and goes into the exported adapter. A GGUF base has no
    # tokenizer directory: it takes --tokens.
    needs_tokenizer = not args.tokens or not args.no_export
    tokenizer = (
        AutoTokenizer.from_pretrained(args.model)
        if needs_tokenizer and not args.model.endswith(".gguf")
        else None
    )
    config = icae_config(args)
    torch.manual_seed(args.seed)
    if args.init_adapter:
        # Warm start from an adapter directory (e.g. the committed default adapter): its
        # configuration wins; the optimizer starts fresh.
        from ..adapter_io import load_adapter

        model = load_adapter(args.model, args.init_adapter, device=device_name, dtype=dtype)
        if args.slot_projector and model.slot_projector is None:
            model.add_identity_slot_projector()
        config = model.config
    else:
        model = ICAE(args.model, config, dtype=dtype, device=device_name)
    capacity = config.mem_size * config.compression_rate
    if args.tokens:
        from ..data import read_tokens

        documents = read_tokens(args.tokens)[: args.max_documents]
    elif args.corpus and tokenizer is not None:
        documents = tokenize_documents(tokenizer, args.corpus / "train.jsonl", args.max_documents)
    else:
        sys.exit("error: pretrain needs --corpus (with an HF model directory) or --tokens")
    stream = PretrainStream(
        documents,
        seed=args.seed,
        max_tokens=capacity * args.max_segments,
        min_tokens=args.min_tokens,
        lm_ratio=args.lm_ratio,
        min_lm_tokens=args.min_lm_tokens,
    )

    def example_for(step, index):
        if args.batch_windows:
            return AutoencodeBatch(
                stream.window_batch(step, index, args.batch_windows, segment_tokens=capacity),
                first_target_weight=args.first_target_weight,
            )
        example = stream.example(step, index)
        if example.is_lm:
            return LmInput(example.context, example.continuation, args.leave_tokens_for_lm)
        return AutoencodeInput(example.context)

    notes = f"pretrained (AE + LM, lm_ratio {args.lm_ratio}) by icae-train for {args.run_dir.name}"
    if args.init_adapter:
        notes += f", continued from the adapter in {args.init_adapter}"
    notes += "; see docs/training.md"
    train_and_export(args, model, tokenizer, example_for, "pretrain", notes)
