"""Time test-time slot refinement with the PyTorch oracle (training/icae_train/refine.py:
transformers + peft, torch autograd, torch.optim.Adam): the reference `icae-bench refine`
compares the Rust engine with, step for step on the same documents.

Worker mode only: each input line is {"length": L, "batch": B, "steps": N}; the worker
compresses B consecutive windows of L bench tokens, then times N refinement steps of each,
one document after another as the oracle refines them, and answers {"seconds": per step of
all B}. The first line out is {"ready": true, "threads": N, "dtype": ..., "device": ...}.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from icae_train.adapter_io import load_adapter
from icae_train.refine import RefineOptions, refine

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True, help="HF model directory")
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--ids", type=Path, required=True, help="JSON list of token ids")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args(argv)
    model = load_adapter(args.model, args.adapter, device=args.device, dtype=DTYPES[args.dtype])
    model.eval()
    ids = json.loads(args.ids.read_text())
    ready = {"ready": True, "threads": torch.get_num_threads()}
    print(json.dumps({**ready, "dtype": args.dtype, "device": args.device}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        length, steps = case["length"], case["steps"]
        documents = [ids[b * length : (b + 1) * length] for b in range(case.get("batch", 1))]
        with torch.no_grad():
            slots = [model.compress(document) for document in documents]
        start = time.perf_counter()
        for document, start_slots in zip(documents, slots, strict=True):
            refine(model, document, start_slots, RefineOptions(steps, args.lr))
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds / max(1, case["steps"])}), flush=True)


if __name__ == "__main__":
    main()
