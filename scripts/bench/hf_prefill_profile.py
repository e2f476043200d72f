"""Where transformers' prefill of one prompt spends its time: the reference that
`icae-bench decode`'s prefill is compared with, split by kind of work.

Times the model's forward over the prompt (logits at the last position only, as a prefill
needs), the prefill inside `generate` (as `hf_generate.py` stamps it), and profiles one
forward with torch.profiler, summing each operator's own time into the kinds below. The
matrix products and the attention kernel are the same libtorch kernels the engine calls,
so their sum is a floor that both engines share.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from hf_compress import DTYPES, bench_ids, load_base, synchronize
from hf_generate import time_generate
from operator_kinds import by_kind


def best_seconds(run, repeats: int, device: str) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(max(1, repeats)):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def profile(model, input_ids) -> dict:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(input_ids, logits_to_keep=1)
    events = prof.key_averages()
    return by_kind((e.key, e.self_cpu_time_total) for e in events)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("examples/pwc_dev.jsonl"))
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = load_base(args.model, DTYPES[args.dtype], args.device)
    ids = bench_ids(args.model, args.data, args.prompt_tokens)
    input_ids = torch.tensor([ids], device=args.device)
    with torch.no_grad():
        forward = best_seconds(
            lambda: model(input_ids, logits_to_keep=1), args.repeats, args.device
        )
        in_generate = min(
            time_generate(model, ids, 1, args.prompt_tokens, 2, args.device)["prefill_seconds"]
            for _ in range(max(1, args.repeats))
        )
        kinds = profile(model, input_ids)
    shared = kinds.get("matrix products", 0.0) + kinds.get("attention kernel", 0.0)
    print(
        json.dumps(
            {
                "bench": "hf prefill profile",
                "device": args.device,
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
                "prompt_tokens": args.prompt_tokens,
                "forward_seconds": forward,
                "generate_prefill_seconds": in_generate,
                "profiled_seconds_by_kind": kinds,
                "shared_kernels_seconds": shared,
            }
        )
    )


if __name__ == "__main__":
    main()
