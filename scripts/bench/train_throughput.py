"""Training throughput on the CPU (issue 13 item 1): one AE step on a batch of equal-length
windows, texts one by one (forward + backward each) vs the whole batch in one forward,
alternating in one run; f32, and bf16 autocast where asked.

    $ICAE_VENV/bin/python scripts/bench/train_throughput.py --model "$ICAE_MODEL_DIR" \
        --batch 8 --text-tokens 64 --repeats 3
"""

import argparse
import json
import random
import time

import torch

from icae_train.model import ICAE, IcaeConfig


def step(model, texts, batched: bool, autocast: bool):
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        if batched:
            loss, _, _ = model.autoencode_batch_scores(texts)
            loss.backward()
        else:
            for ids in texts:
                loss, _ = model.autoencode_loss(ids)
                (loss / len(texts)).backward()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--autocast", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = IcaeConfig(
        mem_size=args.text_tokens // args.rate,
        compression_rate=args.rate,
        lora_r=16,
        slot_projector=True,
    )
    model = ICAE(args.model, config)
    model.train()
    rng = random.Random(0)
    vocab = model.icae.get_base_model().config.vocab_size
    texts = [[rng.randrange(vocab) for _ in range(args.text_tokens)] for _ in range(args.batch)]
    modes = [("one_by_one", False, False), ("batched", True, False)]
    if args.autocast:
        modes += [("one_by_one_bf16", False, True), ("batched_bf16", True, True)]
    step(model, texts, True, False)  # warm-up
    best = {name: float("inf") for name, _, _ in modes}
    for _ in range(args.repeats):
        for name, batched, autocast in modes:
            best[name] = min(best[name], step(model, texts, batched, autocast))
    targets = args.batch * (args.text_tokens + 1)
    report = {
        "batch": args.batch,
        "text_tokens": args.text_tokens,
        "threads": torch.get_num_threads(),
        "seconds_per_step": best,
        "examples_per_s": {k: args.batch / v for k, v in best.items()},
        "target_tokens_per_s": {k: targets / v for k, v in best.items()},
        "batched_over_one_by_one": best["one_by_one"] / best["batched"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
