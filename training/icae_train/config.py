"""The configurations of the adapter, the training loop, the overfit check and the recipe
search: plain dataclasses, light to import (no torch), so that `icae-train` derives its flags
from them (`flags.add_flags`: a field's type and default, and `metadata["help"]`) without
loading the model code. The modules that use them re-export them (`model.IcaeConfig`,
`train.TrainConfig`, `overfit.OverfitConfig`, `search.Protocol`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .flags import default_of


@dataclass
class IcaeConfig:
    """The adapter's shape (what a fresh ICAE is built with)."""

    mem_size: int = 32
    compression_rate: int = 4
    lora_r: int = 32
    lora_alpha: float = 32.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_dropout: float = field(default=0.0, metadata={"flag": False})
    # Append the LM token after the slots for the LM objective (official default: no).
    lm_token: bool = field(
        default=False,
        metadata={"help": "put the LM special token after the slots for LM examples"},
    )
    # A trainable linear map on the slots (see slot_projector_init); off = official ICAE.
    slot_projector: bool = field(
        default=False,
        metadata={
            "help": "train a linear map on the slots (hidden x hidden + bias, starts at the "
            "token embeddings' scale; the recipe search's strongest lever); recorded in "
            "icae_config.json"
        },
    )
    # A learned scalar on the slots, starting at the projector's initial scale: a candidate
    # of the recipe search only (save_adapter refuses it; the projector subsumes it).
    slot_scale: bool = field(default=False, metadata={"flag": False})


@dataclass
class TrainConfig:
    steps: int = field(metadata={"help": "total optimizer steps of the run"})
    lr: float = 1e-4
    memory_lr: float | None = field(
        default=None,  # defaults to lr
        metadata={"help": "learning rate of memory_token_embed (default: --lr)"},
    )
    projector_lr: float | None = field(
        default=None,  # the slot projector's; defaults to memory_lr
        metadata={
            "help": "learning rate of the slot projector, if the adapter has one "
            "(default: --memory-lr)"
        },
    )
    warmup_steps: int = 100
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "cosine decay floor as a share of the peak lr"}
    )
    weight_decay: float = 0.0
    grad_accum: int = field(default=1, metadata={"help": "examples per optimizer step"})
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    # bf16 autocast of the forward on a CPU (the weights and optimizer stay f32); worth it
    # only where the CPU multiplies bf16 natively. Set through `use_cpu_autocast`: True only
    # for a model on the CPU, so that run.json records what ran. Its flag is the mode
    # (off|on|auto) that `use_cpu_autocast` decides from.
    cpu_autocast: bool = field(
        default=False,
        metadata={
            "help": "bf16 autocast of the forward on a CPU; auto: only where the CPU has "
            "AMX-BF16 or AVX512-BF16 (elsewhere bf16 is emulated and slower than f32)",
            "argparse": {"choices": ["off", "on", "auto"], "default": "off"},
        },
    )


@dataclass
class OverfitConfig:
    max_steps: int = field(
        default=200, metadata={"flag": "--steps", "help": "most optimizer steps"}
    )
    target_accuracy: float = 0.95
    lr: float = 5e-4
    memory_lr: float = 1e-3
    projector_lr: float = 1e-3
    max_grad_norm: float = field(default=TrainConfig.max_grad_norm, metadata={"flag": False})


@dataclass(frozen=True)
class Protocol:
    """What every candidate of a search shares."""

    steps: int = 300
    batch: int = 8
    text_tokens: int = field(default=64, metadata={"help": "one segment: mem = this / rate"})
    eval_every: int = 50
    eval_texts: int = 32
    seed: int = TrainConfig.seed
    # text_tokens // compression_rate: one segment per window (`icae-train search` derives it).
    mem_size: int = field(default=16, metadata={"flag": False})
    compression_rate: int = IcaeConfig.compression_rate
    lora_alpha: float = field(default=IcaeConfig.lora_alpha, metadata={"flag": False})
    target_modules: list[str] = field(
        default_factory=lambda: default_of(IcaeConfig, "target_modules")
    )
    memory_lr: float = field(default=1e-3, metadata={"flag": False})
    projector_lr: float = field(default=1e-3, metadata={"flag": False})
