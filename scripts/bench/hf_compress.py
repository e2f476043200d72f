"""Time ICAE compression with HF transformers + peft: the reference the Rust engine is
compared with by `icae bench forward`.

The computation is the official `_compress` (getao/icae, modeling_icae_multi_span.py):
segments run one after another, each as [tokens ++ memory tokens] through the LoRA model.
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
from transformers import AutoModelForCausalLM


def load(model_dir: Path, adapter_dir: Path):
    config = json.loads((adapter_dir / "icae_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = LoraConfig(
        r=config["lora_r"],
        lora_alpha=config["lora_alpha"],
        target_modules=config["target_modules"],
        lora_dropout=0.0,
        bias="none",
    )
    model = get_peft_model(model, lora)
    tensors = load_file(str(adapter_dir / "adapter.safetensors"))
    state = {k[len("icae.") :]: v.float() for k, v in tensors.items() if k.startswith("icae.")}
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    model.eval()
    return model, tensors["memory_token_embed.weight"].float(), config


def compress(model, memory, mem_size, rate, ids):
    n_seg = math.ceil(len(ids) / (mem_size * rate))
    seg_len = math.ceil(len(ids) / n_seg)
    embed = model.get_base_model().model.embed_tokens
    out = []
    for s in range(n_seg):
        seg = torch.tensor([ids[s * seg_len : (s + 1) * seg_len]])
        x = torch.cat([embed(seg), memory[:mem_size].unsqueeze(0)], dim=1)
        hidden = model(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
        out.append(hidden[0, -mem_size:])
    return torch.cat(out)


def main():
    """Serve timing requests over stdin/stdout so the caller can alternate its own runs with
    ours: each input line is a token count, each output line {"seconds": ...} for one
    compression of that many tokens. The first line out is {"ready": true, "threads": N}."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--ids", type=Path, required=True, help="JSON list of token ids")
    args = parser.parse_args()

    model, memory, config = load(args.model, args.adapter)
    ids = json.loads(args.ids.read_text())
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    with torch.no_grad():
        for line in sys.stdin:
            length = int(line)
            start = time.perf_counter()
            compress(model, memory, config["mem_size"], config["compression_rate"], ids[:length])
            print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
