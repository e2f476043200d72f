"""Test-time slot refinement, written plainly with torch autograd: the oracle the Rust
engine's refinement (icae-core/src/refine.rs) is checked against, and the tool the quality
measurements of docs/refinement.md use.

Refinement optimises the slot vectors of a document (decoder frozen, no weight changes) so
that the frozen decoder reads the document back from them: Adam on the slots only, against
the teacher-forced AUTOENCODE loss of the exact decoder layout `[slots] [AE] text` → text,
EOS. The objective per document is

    mean(nll) + mean(nll over the targets whose argmax is wrong)

(the second term is 0 once every argmax is right). The plain mean lets one hard target (the
first token after [AE], which the default adapter's decoder reads as `-` on most passages)
sit at 4 nats while the rest fall; the second term gives the targets greedy decoding would
still get wrong half of the gradient however few they are. Teacher-forced argmax right at
every target means the greedy reconstruction is exact.

Each document is refined on its own here (the Rust engine batches them; Adam is elementwise,
so the result does not depend on the batch). The loss that early stopping and the reports use
is the plain mean nll of the slots as they are at that moment (`reconstruction_loss`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .model import ICAE, Objective


@dataclass(frozen=True)
class RefineOptions:
    steps: int
    learning_rate: float = 0.1
    target_loss: float | None = None


@dataclass
class Refined:
    slots: torch.Tensor
    steps_run: int
    reconstruction_loss: float


class SlotRefiner:
    """Adam on the slots of equal-length documents (`ids` `[batch, length]`, `slots`
    `[batch, n, hidden]`) read back by the frozen decoder; each document's objective is its
    own, so a batch gives each document what it would get alone."""

    def __init__(self, model: ICAE, ids: list[list[int]], slots: torch.Tensor, lr: float):
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        eos = model.eos_ids[0]
        self.targets = torch.tensor([row + [eos] for row in ids], device=model.device)
        self.slots = nn.Parameter(slots.detach().float().clone())
        self.optimizer = torch.optim.Adam([self.slots], lr=lr)

    def read(self, slots: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-target nll `[batch, length + 1]` of reading the documents back (EOS last)
        from `slots` (default: the current ones), and which targets' argmax is wrong."""
        model = self.model
        slots = (self.slots if slots is None else slots).to(model.dtype)
        batch = slots.shape[0]
        ae = model.special(Objective.AUTOENCODE).to(slots.dtype).expand(batch, -1, -1)
        x = torch.cat([slots, ae, model._table(self.targets)], dim=1)
        predicted = model.target_logits(x, self.targets.shape[1]).float()
        nll = nn.functional.cross_entropy(
            predicted.flatten(0, 1), self.targets.flatten(), reduction="none"
        ).view_as(self.targets)
        return nll, predicted.argmax(-1) != self.targets

    def step(self, learning_rate: float | None = None) -> torch.Tensor:
        """One optimiser step (at `learning_rate` when given); returns each document's
        reconstruction loss before it."""
        if learning_rate is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate
        nll, wrong = self.read()
        loss = sum(objective(n, w) for n, w in zip(nll, wrong, strict=True))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return nll.detach().mean(-1)

    @torch.no_grad()
    def losses(self) -> torch.Tensor:
        return self.read()[0].mean(-1)


def scheduled_rate(learning_rate: float, step: int, steps: int) -> float:
    """The learning rate of step `step` (from 0): a cosine from `learning_rate` to 0 over
    `steps`."""
    return learning_rate * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))


def objective(nll: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """One document's objective: mean nll plus mean nll of the targets read wrong."""
    loss = nll.mean()
    if wrong.any():
        loss = loss + nll[wrong].mean()
    return loss


def reconstruction_loss(model: ICAE, slots: torch.Tensor, ids: list[int]) -> float:
    """Teacher-forced AE loss (nats per target, EOS included) of reading `ids` back from
    `slots` `[n, hidden]`: the fidelity score a compression reports."""
    return SlotRefiner(model, [ids], slots.unsqueeze(0), 1.0).losses().item()


def refine(model: ICAE, ids: list[int], slots: torch.Tensor, options: RefineOptions) -> Refined:
    """Refine `slots` (`[n, hidden]`, as `model.compress(ids)` gives them) for `ids`: at most
    `options.steps` steps, fewer once the loss of the current slots is at the target."""
    refiner = SlotRefiner(model, [ids], slots.unsqueeze(0), options.learning_rate)
    steps_run = 0
    for step in range(options.steps):
        if options.target_loss is not None and refiner.losses().item() <= options.target_loss:
            break
        refiner.step(scheduled_rate(options.learning_rate, step, options.steps))
        steps_run += 1
    refined = refiner.slots.detach()[0]
    return Refined(refined, steps_run, reconstruction_loss(model, refined, ids))
