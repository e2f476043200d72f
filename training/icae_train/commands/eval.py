"""`icae-train eval`: AE reconstruction of held-out text and answers on PwC data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import _positive_int, add_model_flags, device, tokenize_documents


def add_parser(sub):
    p = sub.add_parser(
        "eval",
        help="AE BLEU (sacrebleu) / exact prefix / token accuracy on held-out text; "
        "ROUGE-L (rouge-score) on PwC data",
    )
    add_model_flags(p)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--heldout", type=Path, help="held-out corpus JSONL")
    p.add_argument("--passages", type=int, default=50)
    p.add_argument("--passage-tokens", type=_positive_int, default=128)
    p.add_argument(
        "--long-passages",
        type=int,
        default=0,
        help="also read back this many held-out passages of --long-passage-tokens "
        "teacher-forced (autoencode_long: several segments each); 0: skip",
    )
    p.add_argument("--long-passage-tokens", type=_positive_int, default=512)
    p.add_argument("--pwc", type=Path, nargs="*", help="PwC-format JSONL files")
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--refine-steps",
        type=int,
        default=0,
        help="also answer every question from its context's slots refined this many steps",
    )
    p.add_argument("--refine-lr", type=float, default=0.1)
    p.add_argument(
        "--refine-slots-per-segment",
        type=_positive_int,
        help="compress the contexts to refine with this many slots per segment (default: "
        "the adapter's mem_size), as CompressOptions.slots_per_segment",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=run)


def run(args):
    from transformers import AutoTokenizer

    from ..adapter_io import load_adapter
    from ..data import read_jsonl
    from ..evaluate import answer_eval, autoencode_eval, heldout_passages, long_teacher_forced_eval
    from ..refine import RefineOptions

    device_name, dtype = device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.heldout:
        documents = tokenize_documents(tokenizer, args.heldout, None)
        lengths = [args.passage_tokens] + ([args.long_passage_tokens] if args.long_passages else [])
        try:  # before loading the model: a length no document reaches is an input error
            for length in lengths:
                heldout_passages(documents, length, 1, args.seed)
        except ValueError as e:
            sys.exit(f"error: {e}")
    model = load_adapter(args.model, args.adapter, device=device_name, dtype=dtype)
    report = {"adapter": str(args.adapter)}
    if args.heldout:
        report["autoencode"] = autoencode_eval(
            model, tokenizer, documents, args.passage_tokens, args.passages, args.seed
        )
        if args.long_passages:
            report["autoencode_long"] = long_teacher_forced_eval(
                model, documents, args.long_passage_tokens, args.long_passages, args.seed
            )
    if args.pwc:
        records = [r for path in args.pwc for r in read_jsonl(path)][: args.questions]
        refine = RefineOptions(args.refine_steps, args.refine_lr) if args.refine_steps else None
        report["answers"] = answer_eval(
            model,
            tokenizer,
            records,
            args.max_new_tokens,
            refine=refine,
            refine_slots_per_segment=args.refine_slots_per_segment,
        )
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
