"""Time greedy decoding with HF transformers `generate`: the reference `icae-bench decode`
compares the engine's batched decoding with.

Every sequence of a batch has the same prompt length (no padding) and generates exactly
the same number of tokens (min_new_tokens = max_new_tokens: end-of-sequence never stops
it). A logits processor stamps the time its first call sees the prefill's logits, so the
prefill and the decoding steps are timed apart, as the engine's are.

Worker mode (`--ids FILE`) answers requests on stdin; standalone mode (`--standalone`, for
a machine without the Rust build) tokenizes the bench text itself and prints one report.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from hf_compress import DTYPES, bench_ids, load_base, synchronize
from transformers import LogitsProcessor, LogitsProcessorList


class FirstLogits(LogitsProcessor):
    """Records when the prefill's logits reach the first processing step."""

    def __init__(self, device: str):
        self.device = device
        self.at = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            synchronize(self.device)
            self.at = time.perf_counter()
        return scores


def prompts(ids, batch, prompt_tokens):
    """The prompts of a batch: consecutive windows, as `icae-bench decode` cuts them."""
    return [ids[b * prompt_tokens : (b + 1) * prompt_tokens] for b in range(batch)]


def time_generate(model, ids, batch, prompt_tokens, new_tokens, device):
    input_ids = torch.tensor(prompts(ids, batch, prompt_tokens), device=device)
    stamp = FirstLogits(device)
    synchronize(device)
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        num_beams=1,
        logits_processor=LogitsProcessorList([stamp]),
        pad_token_id=model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, int)
        else 0,
    )
    synchronize(device)
    end = time.perf_counter()
    generated = int(out.shape[0] * (out.shape[1] - prompt_tokens))
    return {
        "prefill_seconds": stamp.at - start,
        "decode_seconds": end - stamp.at,
        "total_seconds": end - start,
        "generated": generated,
    }


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large tensor copy (the best of six)."""
    numel = (256 << 20) // 4 if device == "cpu" else (2 << 30) // 4
    src = torch.ones(numel, device=device)
    dst = torch.zeros(numel, device=device)
    best = float("inf")
    for _ in range(6):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * numel * 4 / best


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True, help="HF model dir or .gguf file")
    parser.add_argument("--ids", type=Path, help="JSON list of token ids (worker mode)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--standalone", action="store_true")
    parser.add_argument("--data", type=Path, default=Path("examples/pwc_dev.jsonl"))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.standalone and args.ids is None:
        parser.error("give --ids (worker mode) or --standalone")
    return args


def standalone(args, model):
    batches = [int(x) for x in args.batches.split(",") if x]
    ids = bench_ids(args.model, args.data, max(batches) * args.prompt_tokens)
    rows = []
    for batch in batches:
        case = (model, ids, batch, args.prompt_tokens, args.new_tokens, args.device)
        time_generate(*case)  # warm-up
        runs = [time_generate(*case) for _ in range(max(1, args.repeats))]
        best = min(runs, key=lambda r: r["decode_seconds"])
        rows.append(
            {
                "batch": batch,
                **best,
                "hf_decode_tokens_per_second": batch
                * (args.new_tokens - 1)
                / best["decode_seconds"],
            }
        )
    return {
        "engine": "transformers generate",
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "copy_bandwidth_gb_per_second": copy_bandwidth(args.device) / 1e9,
        "rows": rows,
    }


def main(argv=None):
    """Worker mode: each input line is {"batch": B, "prompt_tokens": P, "new_tokens": N},
    each output line the timings of one `generate` of that case. The first line out is
    {"ready": true, "threads": N, "dtype": ..., "device": ...}."""
    args = parse_args(argv)
    model = load_base(args.model, DTYPES[args.dtype], args.device)
    with torch.no_grad():
        if args.standalone:
            print(json.dumps(standalone(args, model)), flush=True)
            return
        ids = json.loads(args.ids.read_text())
        ready = {"ready": True, "threads": torch.get_num_threads()}
        print(json.dumps({**ready, "dtype": args.dtype, "device": args.device}), flush=True)
        for line in sys.stdin:
            case = json.loads(line)
            result = time_generate(
                model,
                ids,
                case["batch"],
                case["prompt_tokens"],
                case["new_tokens"],
                args.device,
            )
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
