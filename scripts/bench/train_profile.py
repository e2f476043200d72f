"""Where a training step's time goes: one
batched AE step at the fresh long run's shape (LONG_RUN_RECIPE: 4 windows of 128 tokens ->
32 slots, LoRA r16 on q and v, the slot projector, f32) under torch.profiler, grouped into
matrix products, attention and everything else, with the matrix products' achieved GFLOP/s
against a plain square matmul measured in the same run (the machine's practical f32 peak).

    $ICAE_VENV/bin/python scripts/bench/train_profile.py --model "$ICAE_MODEL_DIR"
"""

import argparse
import json
import time

import torch
from operator_kinds import MATRIX_PRODUCTS, by_kind
from torch.profiler import ProfilerActivity, profile
from train_throughput import model_and_texts


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--top", type=int, default=12, help="operators listed by self time")
    args = parser.parse_args()
    model, texts = model_and_texts(args.model, args.batch, args.text_tokens, args.rate)

    def one_step():
        model.zero_grad(set_to_none=True)
        loss, _, _ = model.autoencode_batch_scores(texts)
        loss.backward()

    one_step()  # warm-up
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        one_step()
    wall = time.perf_counter() - started
    events = prof.key_averages()
    # Self times: each operator's own time, so the groups add up to the step.
    self_s = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    profiled = sum(self_s.values())
    kinds = by_kind((e.key, e.self_cpu_time_total) for e in events)
    matmul_s = kinds.get("matrix products", 0.0)
    attention_s = kinds.get("attention kernel", 0.0)
    matmul_flops = sum(e.flops for e in events if e.key in MATRIX_PRODUCTS)
    peak = matmul_peak_gflops()
    achieved = matmul_flops / matmul_s / 1e9
    report = {
        "batch": args.batch,
        "text_tokens": args.text_tokens,
        "threads": torch.get_num_threads(),
        "step_seconds_profiled": round(wall, 2),
        "share": {
            "matrix_products": round(matmul_s / profiled, 3),
            "attention": round(attention_s / profiled, 3),
            "other": round(1 - (matmul_s + attention_s) / profiled, 3),
        },
        "matrix_product_gflop": round(matmul_flops / 1e9, 1),
        "matrix_product_gflops_achieved": round(achieved, 1),
        "square_matmul_gflops_peak": round(peak, 1),
        "matrix_products_at_share_of_peak": round(achieved / peak, 3),
        "top_operators_self_seconds": {
            k: round(s, 3) for k, s in sorted(self_s.items(), key=lambda kv: -kv[1])[: args.top]
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
