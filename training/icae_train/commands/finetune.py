"""`icae-train finetune`: instruction fine-tuning on PwC-format JSONL (ANSWER layout)."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import add_model_flags, add_train_flags, device, train_and_export


def add_parser(sub):
    p = sub.add_parser(
        "finetune", help="instruction fine-tuning on PwC-format JSONL (ANSWER layout)"
    )
    add_model_flags(p)
    add_train_flags(p)
    p.add_argument("--init-adapter", type=Path, required=True, help="pretrained adapter directory")
    p.add_argument("--data", type=Path, nargs="+", required=True)
    p.add_argument("--max-context-tokens", type=int, default=2048)
    p.set_defaults(func=run)


def run(args):
    from transformers import AutoTokenizer

    from ..adapter_io import chat_pieces, load_adapter
    from ..data import FinetuneStream, read_jsonl
    from ..model import AnswerInput

    device_name, dtype = device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pieces = chat_pieces(tokenizer)
    if pieces is None:
        sys.exit(
            "error: the base model has no chat template icae-train knows (chatml, llama-3, [INST])"
        )
    model = load_adapter(args.model, args.init_adapter, device=device_name, dtype=dtype)
    records = [r for path in args.data for r in read_jsonl(path)]
    stream = FinetuneStream(records, tokenizer, args.seed, args.max_context_tokens)

    def example_for(step, index):
        ex = stream.example(step, index)
        return AnswerInput(
            ex.context, ex.prompt, ex.answer, pieces["prefix_ids"], pieces["suffix_ids"]
        )

    notes = (
        f"fine-tuned (ANSWER layout) from {args.init_adapter} by icae-train "
        f"for {args.run_dir.name}; see docs/training.md"
    )
    train_and_export(args, model, tokenizer, example_for, "finetune", notes)
