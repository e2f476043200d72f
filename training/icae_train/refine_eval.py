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
from .refine import SlotRefiner


def refine_eval(
    model: ICAE,
    tokenizer,
    documents: list[list[int]],
    passage_tokens: int,
    count: int,
    checkpoints: list[int],
    learning_rate: float,
    cold_start: bool = False,
    seed: int = 0,
) -> dict:
    model.eval()
    passages = heldout_passages(documents, passage_tokens, count, seed)
    with torch.no_grad():
        slots = torch.stack([model.compress(p) for p in passages])
    if cold_start:
        slots = slots.mean(dim=(0, 1), keepdim=True).expand_as(slots)
    refiner = SlotRefiner(model, passages, slots, learning_rate)
    detokenize = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    rows, done, refine_seconds = [], 0, 0.0
    for checkpoint in sorted(set(checkpoints)):
        started = time.time()
        while done < checkpoint:
            refiner.step()
            done += 1
        refine_seconds += time.time() - started
        with torch.no_grad():
            nll, wrong = refiner.read()
            current = refiner.slots.detach()
            hypotheses = [
                model.greedy(model.ae_layout(s.to(model.dtype)), passage_tokens + 8)
                for s in current
            ]
        rows.append(
            {
                "steps": checkpoint,
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
