"""`icae-train make-qa`: (input, prompt, answer) triples written by the base model itself."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "make-qa", help="write (input, prompt, answer) triples with the base model itself"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--count", type=int, default=300, help="passages to try")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def run(args):
    from ..data import read_jsonl
    from ..qa import make_qa

    documents = [d["text"] for d in read_jsonl(args.corpus / "train.jsonl")]
    print(json.dumps(make_qa(args.model, documents, args.count, args.seed, args.out)))
