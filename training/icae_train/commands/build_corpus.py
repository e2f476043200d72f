"""`icae-train build-corpus`: the offline plain-text corpus (train / held-out)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "build-corpus", help="build the offline plain-text corpus (train / held-out)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--heldout-percent", type=int, default=5)
    p.set_defaults(func=run)


def run(args):
    from ..corpus import build

    print(json.dumps(build(args.out, args.heldout_percent), indent=2))
