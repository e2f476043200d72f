"""What several commands share: the base model and device flags, the adapter's and the
training loop's flags (derived from `IcaeConfig` and `TrainConfig`), and the tail of a
training run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..config import IcaeConfig, TrainConfig
from ..flags import add_flags, from_args


def device(name: str) -> tuple[str, torch.dtype]:
    """bf16 on GPU, f32 on CPU (never fp16: slots overflow it). Under a multi-process launch
    (torchrun / accelerate launch) each process takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    return name, (torch.float32 if name == "cpu" else torch.bfloat16)


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _positive_int(text: str) -> int:
    # The name shows in argparse's "invalid _positive_int value" message: keep it.
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of tokens, got {value}")
    return value


def add_model_flags(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True, help="HF-layout base model directory")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def add_icae_flags(p: argparse.ArgumentParser, **defaults):
    """The adapter's shape (IcaeConfig's fields, without --lm-token); defaults differ by
    command."""
    add_flags(p, IcaeConfig, exclude=("lm_token",), defaults=defaults)


def icae_config(args) -> IcaeConfig:
    return from_args(IcaeConfig, args)


def add_train_flags(p: argparse.ArgumentParser):
    """The run directory, TrainConfig's fields, and how this invocation runs."""
    p.add_argument(
        "--run-dir",
        required=True,
        type=Path,
        help="checkpoints, metrics, loss.png and the adapter go here",
    )
    add_flags(p, TrainConfig, exclude=("cpu_autocast",))
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if the run directory has a checkpoint",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="run at most this many steps in this invocation (resumable)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="end this invocation with a checkpoint after this much wall time (resumable)",
    )
    add_flags(p, TrainConfig, only=("cpu_autocast",))
    p.add_argument(
        "--no-export",
        action="store_true",
        help="write only the checkpoint, not run-dir/adapter (e.g. on a machine without the "
        "imported model directory; `icae-train export` later)",
    )


def train_config(args) -> TrainConfig:
    from ..train import use_cpu_autocast

    # Decided here, once, so that run.json records what really ran.
    return from_args(
        TrainConfig,
        args,
        cpu_autocast=use_cpu_autocast(args.cpu_autocast, device(args.device)[0]),
    )


def tokenize_documents(tokenizer, path: Path, limit: int | None) -> list[list[int]]:
    from ..data import read_jsonl

    texts = [d["text"] for d in read_jsonl(path)][:limit]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def train_and_export(args, model, tokenizer, example_for, objective: str, notes: str):
    """The tail pretraining and fine-tuning share: run (or resume) the training loop in
    `args.run_dir`, then, on the main process, write the adapter to `run_dir/adapter`.
    `objective` ("pretrain" or "finetune") is recorded in the checkpoint; a resume checks it."""
    from ..adapter_io import save_adapter
    from ..train import train

    meta = {
        "objective": objective,
        "icae": model.config.__dict__,
        "args": {k: str(v) for k, v in vars(args).items() if k != "func"},
    }
    train(
        model,
        train_config(args),
        args.run_dir,
        example_for,
        meta,
        resume=not args.no_resume,
        stop_after=args.stop_after,
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60,
    )
    if not is_main_process() or args.no_export:
        return
    save_adapter(model, args.model, args.run_dir / "adapter", tokenizer, notes)
    print(f"adapter written to {args.run_dir / 'adapter'}")
