"""The overfit check: can the training path memorise one fixed batch? A recipe
that cannot reproduce 8 short texts it sees at every step will not learn to compress a
stream of fresh ones, and the check takes minutes instead of days, so it comes first.

Every step trains on the whole batch (one forward of all texts, which have one length and
fit one segment each, then one AdamW step at a constant learning rate) and measures the
batch's teacher-forced AE token accuracy (argmax of the decoder at each position of
`text ++ [EOS]`, given the slots, [AE] and the true tokens before it)."""

from __future__ import annotations

import time

import torch

from .config import OverfitConfig
from .model import ICAE
from .train import TrainConfig, optimizer_for


def overfit(model: ICAE, texts: list[list[int]], cfg: OverfitConfig, log=None) -> list[dict]:
    """Train on `texts` until their accuracy reaches `cfg.target_accuracy` (measured before
    each step, and once after the last) or `cfg.max_steps` steps have run. Returns one record
    per measurement: step, loss, accuracy, seconds since the start."""
    train_cfg = TrainConfig(
        steps=cfg.max_steps,
        lr=cfg.lr,
        memory_lr=cfg.memory_lr,
        projector_lr=cfg.projector_lr,
        warmup_steps=0,
        min_lr_ratio=1.0,  # constant: memorising needs no schedule
        max_grad_norm=cfg.max_grad_norm,
    )
    optimizer, _ = optimizer_for(model, train_cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    history, started = [], time.time()
    model.train()
    for step in range(cfg.max_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss, correct, total = model.autoencode_batch_scores(texts)
        if step < cfg.max_steps:
            loss.backward()
        record = {
            "step": step,
            "loss": loss.item(),
            "accuracy": correct / total,
            "seconds": time.time() - started,
        }
        history.append(record)
        if log:
            log(record)
        if record["accuracy"] >= cfg.target_accuracy or step == cfg.max_steps:
            break
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
    return history
