"""`icae-train tokenize`: a corpus's train.jsonl as one .npz of token ids (for --tokens)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import tokenize_documents


def add_parser(sub):
    p = sub.add_parser(
        "tokenize", help="tokenize a corpus's train.jsonl into one .npz (for --tokens)"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)


def run(args):
    from transformers import AutoTokenizer

    from ..data import write_tokens

    documents = tokenize_documents(
        AutoTokenizer.from_pretrained(args.model), args.corpus / "train.jsonl", None
    )
    write_tokens(args.out, documents)
    print(json.dumps({"documents": len(documents), "tokens": sum(map(len, documents))}))
