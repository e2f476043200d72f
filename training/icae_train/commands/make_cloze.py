"""`icae-train make-cloze`: extractive cloze (input, prompt, answer) triples; no model."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "make-cloze",
        help="write extractive cloze (input, prompt, answer) triples from passages; no model",
    )
    p.add_argument(
        "--documents",
        type=Path,
        required=True,
        help='JSONL of documents under "text" (a corpus split) or "input" (PwC format)',
    )
    p.add_argument("--passages", type=int, default=5000, help="passages to draw questions from")
    p.add_argument("--per-passage", type=int, default=2, help="most questions per passage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def run(args):
    from ..cloze import make_cloze, write_cloze
    from ..data import read_jsonl

    documents = [d.get("text") or d["input"] for d in read_jsonl(args.documents)]
    records = make_cloze(documents, args.passages, args.per_passage, args.seed)
    print(json.dumps(write_cloze(records, args.out)))
