"""The training loop shared by pretraining and fine-tuning: AdamW with warmup and cosine
decay, gradient accumulation and clipping, checkpoints with exact resume, progress bars,
a metrics log and a loss-curve PNG. Data-parallel across processes with accelerate
(`accelerate launch` or `torchrun`): each step takes `grad_accum x processes` examples,
process r computing examples r, r + P, r + 2P, ...; a single process is the same run."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .config import TrainConfig
from .model import ICAE, ObjectiveInput

CHECKPOINT = "checkpoint"


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AMX-BF16 or AVX512-BF16), from the flags
    of /proc/cpuinfo: elsewhere bf16 matmuls are emulated and slower than f32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def use_cpu_autocast(mode: str, device: str, native_bf16=cpu_has_native_bf16) -> bool:
    """`--cpu-autocast off|on|auto` on `device`: never off the CPU (a GPU model is bf16
    already); `auto` only where the CPU has native bf16, read only when asked."""
    return device == "cpu" and (mode == "on" or (mode == "auto" and native_bf16()))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, progress))
    )


def optimizer_for(model: ICAE, cfg: TrainConfig):
    own = ("memory_token_embed", "slot_projector", "slot_scale")
    lora = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(own)]
    memory = [model.memory_token_embed.weight]
    groups = [
        {"params": lora, "lr": cfg.lr},
        {"params": memory, "lr": cfg.memory_lr or cfg.lr},
    ]
    # A third group only with a projector, so runs without one keep their optimizer layout
    # (and their checkpoints resume unchanged).
    projector_lr = cfg.projector_lr or cfg.memory_lr or cfg.lr
    if model.slot_projector is not None:
        groups.append({"params": list(model.slot_projector.parameters()), "lr": projector_lr})
    if model.slot_scale is not None:
        groups.append({"params": [model.slot_scale], "lr": projector_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    return optimizer, scheduler


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path, model: ICAE, optimizer, scheduler, step: int, history: list[dict], meta: dict
):
    """Everything needed to continue exactly: trainable tensors, optimizer and scheduler
    state, the step (= data position), RNG states. Written beside the old one, then swapped."""
    final = run_dir / CHECKPOINT
    staging = run_dir / (CHECKPOINT + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(
        {k: v.contiguous().cpu() for k, v in model.trainable_state().items()},
        str(staging / "trainable.safetensors"),
    )
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        },
        staging / "state.pt",
    )
    (staging / "progress.json").write_text(
        json.dumps({"step": step, "history": history, "meta": meta})
    )
    old = run_dir / (CHECKPOINT + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    run_dir: Path, model: ICAE, optimizer, scheduler
) -> tuple[int, list[dict], dict]:
    ckpt = run_dir / CHECKPOINT
    model.load_trainable(load_file(str(ckpt / "trainable.safetensors")))
    state = torch.load(ckpt / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    progress = json.loads((ckpt / "progress.json").read_text())
    return progress["step"], progress["history"], progress["meta"]


def plot_losses(history: list[dict], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind in sorted({h["kind"] for h in history}):
        points = [(h["step"], h["loss"]) for h in history if h["kind"] == kind]
        steps, losses = zip(*points, strict=True)
        ax.plot(steps, losses, alpha=0.25, linewidth=0.8, label=f"{kind} (per step)")
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, linewidth=2, label=f"{kind} (mean of {window})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def train(
    model: ICAE,
    cfg: TrainConfig,
    run_dir: Path,
    example_for: Callable[[int, int], ObjectiveInput],
    meta: dict,
    resume: bool = True,
    stop_after: int | None = None,
    max_seconds: float | None = None,
) -> list[dict]:
    """Run steps [start, cfg.steps). `example_for(step, index)` gives example `index` of a
    step, typed by its objective (see `ICAE.forward`). `stop_after` (steps) and `max_seconds`
    (wall time of this invocation) end it early with a checkpoint (the run stays resumable),
    e.g. to fit a rented machine's time."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=model.device.type == "cpu")
    world, rank, main = (
        accelerator.num_processes,
        accelerator.process_index,
        accelerator.is_main_process,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    optimizer, scheduler = optimizer_for(model, cfg)
    start, history = 0, []
    if resume and (run_dir / CHECKPOINT).exists():
        start, history, saved_meta = load_checkpoint(run_dir, model, optimizer, scheduler)
        if saved_meta.get("objective") != meta.get("objective"):
            raise ValueError(
                f"{run_dir} holds a {saved_meta.get('objective')} run, not {meta.get('objective')}"
            )
        if main:
            print(f"resuming {run_dir} at step {start}/{cfg.steps}")
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    # The scheduler is stepped by hand once per optimizer step; accelerate only wraps the
    # model (DistributedDataParallel when there are several processes) and the optimizer.
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    metrics = None
    if main:
        (run_dir / "run.json").write_text(
            json.dumps({"train": cfg.__dict__, "processes": world, **meta}, indent=2)
        )
        metrics = open(run_dir / "metrics.jsonl", "a")
    bar = tqdm(
        range(start, end),
        initial=start,
        total=cfg.steps,
        desc=meta.get("objective", "train"),
        dynamic_ncols=True,
        disable=not main,
    )
    window_tokens, window_started = 0, time.time()
    session_started = window_started
    model.train()
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        total, tokens, objectives = 0.0, 0, []
        for micro in range(cfg.grad_accum):
            example = example_for(step, micro * world + rank)
            last = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(ddp_model):
                with torch.autocast("cpu", torch.bfloat16, enabled=cfg.cpu_autocast):
                    loss, n = ddp_model(example)
                accelerator.backward(loss / cfg.grad_accum)
            total += loss.item() / cfg.grad_accum
            tokens += n
            objectives.append(example.objective)
        grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        total = accelerator.reduce(torch.tensor(total, device=accelerator.device), "mean").item()
        tokens = int(
            accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum").item()
        )
        window_tokens += tokens
        elapsed = time.time() - window_started
        record = {
            "step": step + 1,
            "loss": total,
            "kind": objectives[0].value if len(set(objectives)) == 1 else "mixed",
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "tokens": tokens,
            "time": time.time(),
        }
        history.append(record)
        if main:
            metrics.write(json.dumps(record) + "\n")
            bar.set_postfix(
                loss=f"{total:.3f}",
                tok_s=f"{window_tokens / max(elapsed, 1e-9):.0f}",
                lr=f"{record['lr']:.1e}",
            )
        out_of_time = False
        if max_seconds is not None:
            # Any process out of time stops all of them (clocks differ between processes).
            late = torch.tensor(float(time.time() - session_started > max_seconds))
            out_of_time = accelerator.reduce(late.to(accelerator.device), "sum").item() > 0
        if out_of_time:
            end = step + 1
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            if main:
                metrics.flush()
                save_checkpoint(run_dir, model, optimizer, scheduler, step + 1, history, meta)
                plot_losses(
                    history,
                    run_dir / "loss.png",
                    f"{meta.get('objective', 'train')}: {run_dir.name}",
                )
            accelerator.wait_for_everyone()
            window_tokens, window_started = 0, time.time()
        if out_of_time:
            if main:
                print(f"time budget of {max_seconds:.0f} s spent: stopped at step {step + 1}")
            break
    if metrics:
        metrics.close()
    return history
