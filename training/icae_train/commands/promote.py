"""`icae-train promote`: replace an adapter directory if a new adapter reads held-out text
back better (see icae_train.promote)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "promote",
        help="replace an adapter directory (e.g. the committed default) with a new adapter "
        "if its held-out teacher-forced AE loss, measured the same way, is lower",
    )
    p.add_argument("--adapter", type=Path, required=True, help="the new adapter directory")
    p.add_argument("--eval", type=Path, required=True, help="its `icae-train eval` report")
    p.add_argument("--into", type=Path, required=True, help="the adapter directory to replace")
    p.add_argument("--curve", type=Path, help="the run's loss curve, copied beside it")
    p.set_defaults(func=run)


def run(args):
    from ..promote import promote

    try:
        decision = promote(args.adapter, args.eval, args.into, args.curve)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(decision))
