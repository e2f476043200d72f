"""Time ICAE compression with HF transformers + peft: the reference the Rust engine is
compared with by `icae-bench forward`.

The computation is the official `_compress` (getao/icae, modeling_icae_multi_span.py):
segments run one after another, each as [tokens ++ memory tokens] through the LoRA model,
and the documents of a batch one after another.

Two ways to run it:
- as `icae-bench forward`'s worker (`--ids FILE`): it answers timing requests on stdin so
  the caller can alternate its own runs with these;
- standalone (`--standalone`), where no Rust build exists (a GPU machine without cargo):
  it tokenizes the bench text itself, times every case and prints one JSON report.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def pretrained_args(model: Path) -> tuple[str, dict]:
    """from_pretrained arguments for an HF model directory or a GGUF file."""
    if model.suffix == ".gguf":
        return str(model.parent), {"gguf_file": model.name}
    return str(model), {}


def load_base(model: Path, dtype: torch.dtype, device: str):
    path, extra = pretrained_args(model)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    return base.to(device).eval()


def load(model_path: Path, adapter_dir: Path, dtype: torch.dtype, device: str):
    config = json.loads((adapter_dir / "icae_config.json").read_text())
    model = load_base(model_path, dtype, device)
    lora = LoraConfig(
        r=config["lora_r"],
        lora_alpha=config["lora_alpha"],
        target_modules=config["target_modules"],
        lora_dropout=0.0,
        bias="none",
    )
    # autocast_adapter_dtype=False keeps the LoRA weights in the base model's dtype (peft
    # would otherwise upcast bf16 adapters to f32): the same dtype everywhere, as ours.
    model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    tensors = load_file(str(adapter_dir / "adapter.safetensors"))
    state = {
        k[len("icae.") :]: v.to(device=device, dtype=dtype)
        for k, v in tensors.items()
        if k.startswith("icae.")
    }
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    model.eval()
    memory = tensors["memory_token_embed.weight"].to(device=device, dtype=dtype)
    return model, memory, config


def compress(model, memory, mem_size, rate, ids):
    n_seg = math.ceil(len(ids) / (mem_size * rate))
    seg_len = math.ceil(len(ids) / n_seg)
    embed = model.get_base_model().model.embed_tokens
    out = []
    for s in range(n_seg):
        seg = torch.tensor([ids[s * seg_len : (s + 1) * seg_len]], device=memory.device)
        x = torch.cat([embed(seg), memory[:mem_size].unsqueeze(0)], dim=1)
        hidden = model(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
        out.append(hidden[0, -mem_size:])
    return torch.cat(out)


def batch_documents(ids, length, batch):
    """The `batch` documents of `length` tokens a case compresses: consecutive windows of the
    (repeated) bench text, so no two are equal. `icae-bench forward` cuts the same ones."""
    return [ids[b * length : (b + 1) * length] for b in range(batch)]


def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_case(model, memory, config, ids, length, batch, device):
    """Seconds to compress `batch` documents of `length` tokens, one after another."""
    docs = batch_documents(ids, length, batch)
    synchronize(device)
    start = time.perf_counter()
    for doc in docs:
        compress(model, memory, config["mem_size"], config["compression_rate"], doc)
    synchronize(device)
    return time.perf_counter() - start


def bench_ids(model: Path, data: Path, needed: int):
    """Token ids of the first record's text, repeated to `needed` (standalone mode)."""
    path, extra = pretrained_args(model)
    tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    text = json.loads(data.read_text().splitlines()[0])["input"]
    one = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (one * (needed // len(one) + 1))[:needed]


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True, help="HF model dir or .gguf file")
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--ids", type=Path, help="JSON list of token ids (worker mode)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--standalone", action="store_true")
    parser.add_argument("--data", type=Path, default=Path("examples/pwc_dev.jsonl"))
    parser.add_argument("--lengths", default="128,512,2048")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.standalone and args.ids is None:
        parser.error("give --ids (worker mode) or --standalone")
    return args


def standalone(args, model, memory, config):
    lengths = [int(x) for x in args.lengths.split(",") if x]
    cases = [(n, 1) for n in lengths]
    if args.batch > 0:
        cases.append((args.batch_tokens, args.batch))
    needed = max(n * b for n, b in cases)
    ids = bench_ids(args.model, args.data, needed)
    rows = []
    for length, batch in cases:
        time_case(model, memory, config, ids, length, batch, args.device)  # warm-up
        best = min(
            time_case(model, memory, config, ids, length, batch, args.device)
            for _ in range(max(1, args.repeats))
        )
        rows.append(
            {
                "tokens": length,
                "batch": batch,
                "seconds": best,
                "hf_tokens_per_second": length * batch / best,
            }
        )
    return {
        "engine": "transformers+peft",
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "rows": rows,
    }


def main(argv=None):
    """Worker mode: each input line is {"length": L, "batch": B}, each output line
    {"seconds": ...} for compressing that case once. The first line out is
    {"ready": true, "threads": N, "dtype": ..., "device": ...}."""
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    model, memory, config = load(args.model, args.adapter, dtype, args.device)
    with torch.no_grad():
        if args.standalone:
            print(json.dumps(standalone(args, model, memory, config)), flush=True)
            return
        ids = json.loads(args.ids.read_text())
        ready = {"ready": True, "threads": torch.get_num_threads()}
        print(json.dumps({**ready, "dtype": args.dtype, "device": args.device}), flush=True)
        for line in sys.stdin:
            case = json.loads(line)
            seconds = time_case(
                model, memory, config, ids, case["length"], case.get("batch", 1), args.device
            )
            print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
