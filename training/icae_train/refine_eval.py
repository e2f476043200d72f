"""Quality of test-time slot refinement on held-out passages, against the number of steps:
sacrebleu BLEU-4 of the greedy reconstruction, the share of passages reconstructed exactly,
the exact prefix, and the teacher-forced loss and accuracy, starting from the encoder's slots
or from a cold start (every slot the mean slot: what refinement reaches without the ICAE
encoder). All passages are refined together as one batch (each with its own objective)."""

from __future__ import annotations

import time

import torch

from .evaluate import heldout_passages
from .metrics import corpus_bleu, prefix_match
from .model import ICAE
from .refine import SlotRefiner, scheduled_rate


def one_segment_slots(model: ICAE, passages: list[list[int]], k: int) -> torch.Tensor:
    """Slots `[batch, k, hidden]` of each passage read as one segment with the first `k`
    memory tokens: the encoder at a higher rate than it was trained for, as a warm start."""
    if k > model.config.mem_size:
        raise ValueError(f"--slots {k} is more than the adapter's {model.config.mem_size}")
    ids = torch.tensor(passages, dtype=torch.long, device=model.device)
    memory = model.memory_token_embed.weight[:k].to(model.dtype).expand(len(passages), -1, -1)
    x = torch.cat([model._table(ids), memory], dim=1)
    return model.to_decoder(model.encoder_states(x)[:, -k:])


def refine_eval(
    model: ICAE,
    tokenizer,
    documents: list[list[int]],
    passage_tokens: int,
    count: int,
    checkpoints: list[int],
    learning_rate: float,
    cold_start: bool = False,
    slots_per_passage: int | None = None,
    seed: int = 0,
) -> dict:
    model.eval()
    passages = heldout_passages(documents, passage_tokens, count, seed)
    with torch.no_grad():
        if slots_per_passage is None:
            slots = torch.stack([model.compress(p) for p in passages])
        else:
            slots = one_segment_slots(model, passages, slots_per_passage)
    if cold_start:
        slots = slots.mean(dim=(0, 1), keepdim=True).expand_as(slots)
    detokenize = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    rows = []
    # Each row is its own refinement of `steps` steps, as `--refine-steps steps` runs it
    # (the learning rate decays over the steps asked for).
    for steps in sorted(set(checkpoints)):
        refiner = SlotRefiner(model, passages, slots, learning_rate)
        started = time.time()
        for step in range(steps):
            refiner.step(scheduled_rate(learning_rate, step, steps))
        refine_seconds = time.time() - started
        with torch.no_grad():
            nll, wrong = refiner.read()
            hypotheses = [
                model.greedy(model.ae_layout(s.to(model.dtype)), passage_tokens + 8)
                for s in refiner.slots.detach()
            ]
        rows.append(
            {
                "steps": steps,
                "bleu4": corpus_bleu(
                    list(map(detokenize, passages)), list(map(detokenize, hypotheses))
                ),
                "exact": sum(h == p for p, h in zip(passages, hypotheses, strict=True))
                / len(passages),
                "exact_prefix": sum(
                    prefix_match(p, h) for p, h in zip(passages, hypotheses, strict=True)
                )
                / len(passages),
                "teacher_forced_loss": nll.mean().item(),
                "teacher_forced_accuracy": 1.0 - wrong.float().mean().item(),
                "refine_seconds": refine_seconds,
            }
        )
        print(rows[-1], flush=True)
    return {
        "passages": len(passages),
        "passage_tokens": passage_tokens,
        "slots": slots.shape[1],
        "seed": seed,
        "learning_rate": learning_rate,
        "start": "mean slot" if cold_start else "encoder",
        "steps": rows,
    }
