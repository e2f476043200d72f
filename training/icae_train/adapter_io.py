"""Adapter directories as `icae`, `encoder-svc` and `decoder-svc` load them:
`adapter.safetensors` (official v2 keys, f32) + `icae_config.json`. An adapter with a slot
projector also holds `slot_projector.weight` / `.bias` (f32) and records
`"slot_projector": true`; without one the directory is exactly what it was before."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import ICAE, IcaeConfig

CONFIG_FILE = "icae_config.json"
TENSORS_FILE = "adapter.safetensors"

# The ANSWER layout's pieces for chat templates we know (as icae-core's tokenizer.rs).
CHAT_FAMILIES = [
    ("<|im_start|>", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", False),
    (
        "<|start_header_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        True,
    ),
    ("[INST]", "[INST]", " [/INST]", True),
]


def chat_pieces(tokenizer) -> dict | None:
    template = getattr(tokenizer, "chat_template", None) or ""
    for marker, prefix, suffix, with_bos in CHAT_FAMILIES:
        if marker in template:
            prefix_ids = ([tokenizer.bos_token_id] if with_bos else []) + tokenizer.encode(
                prefix, add_special_tokens=False
            )
            return {
                "prefix": prefix,
                "suffix": suffix,
                "prefix_ids": prefix_ids,
                "suffix_ids": tokenizer.encode(suffix, add_special_tokens=False),
            }
    return None


def base_fingerprint(model_dir: str | Path) -> str:
    """The same hash as icae-core's fingerprint.rs: config.json then the weight files."""
    model_dir = Path(model_dir)
    files = [model_dir / "config.json"]
    single = model_dir / "model.safetensors"
    if single.exists():
        files.append(single)
    else:
        index = json.loads((model_dir / "model.safetensors.index.json").read_text())
        files += [model_dir / name for name in sorted(set(index["weight_map"].values()))]
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


def save_adapter(
    model: ICAE,
    model_dir: str | Path,
    out: str | Path,
    tokenizer,
    notes: str,
    trained: bool = True,
    lora_dtype=torch.float32,
):
    """Write the adapter directory atomically (assembled beside `out`, then renamed). LoRA
    tensors may be stored in bf16 (as the official release does); memory embeddings stay f32."""
    if model.config.slot_scale:
        raise ValueError(
            "the learned slot scale is a recipe-search candidate only: no adapter file or "
            "engine holds it (train with --slot-projector, which starts at the same scale)"
        )
    out = Path(out)
    staging = out.with_name(out.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tensors = {
        k: (v.to(lora_dtype) if "lora_" in k else v.float()).contiguous().cpu()
        for k, v in model.trainable_state().items()
    }
    save_file(tensors, str(staging / TENSORS_FILE), metadata={"format": "pt"})
    base = model.icae.get_base_model().config
    c = model.config
    config = {
        "mem_size": c.mem_size,
        "compression_rate": c.compression_rate,
        "lora_r": c.lora_r,
        "lora_alpha": float(c.lora_alpha),
        "target_modules": list(c.target_modules),
        "base_model": {
            "name": Path(model_dir).name,
            "fingerprint": base_fingerprint(model_dir),
            "hidden_size": base.hidden_size,
            "num_layers": base.num_hidden_layers,
            "vocab_size": base.vocab_size,
        },
        "chat": chat_pieces(tokenizer),
        "continue_with_lm_token": c.lm_token,
        "trained": trained,
        "notes": notes,
    }
    if c.slot_projector:
        # Only when on, as icae-core writes it: other adapters keep their exact config.
        config["slot_projector"] = True
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)


def read_config(adapter_dir: str | Path) -> IcaeConfig:
    raw = json.loads((Path(adapter_dir) / CONFIG_FILE).read_text())
    return IcaeConfig(
        mem_size=raw["mem_size"],
        compression_rate=raw["compression_rate"],
        lora_r=raw["lora_r"],
        lora_alpha=raw["lora_alpha"],
        target_modules=raw["target_modules"],
        lm_token=raw.get("continue_with_lm_token", False),
        slot_projector=raw.get("slot_projector", False),
    )


def load_adapter(
    model_dir: str | Path, adapter_dir: str | Path, device="cpu", dtype=torch.float32
) -> ICAE:
    model = ICAE(str(model_dir), read_config(adapter_dir), dtype=dtype, device=device)
    tensors = load_file(str(Path(adapter_dir) / TENSORS_FILE))
    model.load_trainable(
        {k: v.to(dtype if "lora" in k else torch.float32) for k, v in tensors.items()}
    )
    return model
