"""The recipe search, with a fixed protocol so that candidates differ only in
their recipe: every candidate starts from the same seed, trains on the same stream of
short windows (equal examples seen, the same windows in the same order for candidates that
draw them the same way), and is measured at the same steps on the same held-out windows by
teacher-forced AE token accuracy and loss. Short windows (e.g. 64 tokens -> 16 slots), one
segment each, run as one batch per step, so each candidate gets many steps on a CPU."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, fields

import torch

from .config import IcaeConfig, Protocol
from .data import windows
from .model import ICAE
from .train import TrainConfig, optimizer_for

# Held-out windows scored per forward (bounds activation memory, not the result).
EVAL_BATCH = 16


@dataclass(frozen=True)
class Candidate:
    """One recipe: what differs between the runs of a search."""

    name: str
    slot_projector: bool = False
    lr: float = 5e-4
    lora_r: int = 16
    # Windows from random offsets in the documents (False: from document starts).
    random_offsets: bool = True
    # A learned scalar on the slots instead of a projector (starts at the same scale).
    slot_scale: bool = False
    # Weight of the auxiliary loss: each memory token predicts its own stretch of text
    # through the LM head (ICAE.slot_token_loss); 0 = off.
    aux_weight: float = 0.0
    # Short to long windows at the same rate: a quarter, a half, then the full length
    # (with a quarter, a half, all of the memory tokens), a third of the steps each.
    curriculum: bool = False
    # Share of LM examples per batch (context -> the next text_tokens tokens), mixed in
    # once the held-out AE accuracy reaches `lm_after` (0: from the start).
    lm_ratio: float = 0.0
    lm_after: float = 0.0


# The candidates compared; each differs from "official" (or from "projector", for
# the ones named projector+...) in one thing.
DEFAULT_CANDIDATES = [
    Candidate("official", lr=1e-4),
    Candidate("lr5e-4"),
    Candidate("lr1e-3", lr=1e-3),
    Candidate("rank64", lora_r=64),
    Candidate("starts", random_offsets=False),
    Candidate("projector", slot_projector=True),
    Candidate("projector+lr1e-3", slot_projector=True, lr=1e-3),
    Candidate("scale", slot_scale=True),
    Candidate("projector+aux", slot_projector=True, aux_weight=1.0),
    Candidate("projector+curriculum", slot_projector=True, curriculum=True),
    Candidate("projector+lm0.5", slot_projector=True, lm_ratio=0.5),
    Candidate("projector+lm0.5-after0.5", slot_projector=True, lm_ratio=0.5, lm_after=0.5),
]

# Continuation tokens of an LM example without loss (the official default keeps a few).
LM_LEAVE = 0


def parse_candidate(spec: str) -> Candidate:
    """`name:key=value,key=value` (keys are Candidate's fields), e.g.
    `fast:lr=1e-3,slot_projector=1`."""
    name, _, settings = spec.partition(":")
    if not name:
        raise ValueError(f"candidate {spec!r} has no name (expected name:key=value,...)")
    kinds = {f.name: f.type for f in fields(Candidate) if f.name != "name"}
    values = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key not in kinds:
            raise ValueError(
                f"candidate {name!r}: unknown setting {key!r}; known: {', '.join(kinds)}"
            )
        kind = kinds[key]
        if kind == "bool":
            values[key] = value.lower() in ("1", "true", "yes", "on")
        else:
            values[key] = {"float": float, "int": int}[kind](value)
    return Candidate(name, **values)


@torch.no_grad()
def scores(model: ICAE, texts: list[list[int]]) -> dict:
    """Teacher-forced AE loss (per token) and token accuracy over `texts`."""
    model.eval()
    loss_sum = correct = total = 0
    for start in range(0, len(texts), EVAL_BATCH):
        loss, right, n = model.autoencode_batch_scores(texts[start : start + EVAL_BATCH])
        loss_sum, correct, total = loss_sum + loss.item() * n, correct + right, total + n
    model.train()
    return {"loss": loss_sum / total, "accuracy": correct / total}


def run_candidate(
    model_dir: str,
    candidate: Candidate,
    protocol: Protocol,
    train_documents: list[list[int]],
    heldout: list[list[int]],
    dtype=torch.float32,
    device="cpu",
    log=None,
) -> list[dict]:
    """Train one candidate under the protocol; one record per measurement."""
    config = IcaeConfig(
        mem_size=protocol.mem_size,
        compression_rate=protocol.compression_rate,
        lora_r=candidate.lora_r,
        lora_alpha=protocol.lora_alpha,
        target_modules=list(protocol.target_modules),
        slot_projector=candidate.slot_projector,
        slot_scale=candidate.slot_scale,
    )
    torch.manual_seed(protocol.seed)
    model = ICAE(model_dir, config, dtype=dtype, device=device)
    train_config = TrainConfig(
        steps=protocol.steps,
        lr=candidate.lr,
        memory_lr=protocol.memory_lr,
        projector_lr=protocol.projector_lr,
        warmup_steps=0,
        min_lr_ratio=1.0,  # constant: candidates are compared at equal steps
    )
    optimizer, _ = optimizer_for(model, train_config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    data = random.Random(protocol.seed)
    history, started = [], time.time()
    lm_on = candidate.lm_ratio > 0 and candidate.lm_after <= 0
    model.train()
    for step in range(protocol.steps + 1):
        if step % protocol.eval_every == 0 or step == protocol.steps:
            record = {
                "step": step,
                "examples": step * protocol.batch,
                "seconds": time.time() - started,
                **scores(model, heldout),
            }
            lm_on = lm_on or (candidate.lm_ratio > 0 and record["accuracy"] >= candidate.lm_after)
            record["lm_on"] = lm_on
            history.append(record)
            if log:
                log(candidate.name, record)
        if step == protocol.steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = training_loss(model, candidate, protocol, step, train_documents, data, lm_on)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, train_config.max_grad_norm)
        optimizer.step()
    return history


def window_length(candidate: Candidate, protocol: Protocol, step: int) -> tuple[int, int]:
    """(tokens, memory tokens) of the training windows at `step`: the protocol's, or under
    the curriculum a quarter, a half, then all of it by thirds of the run."""
    if not candidate.curriculum:
        return protocol.text_tokens, protocol.mem_size
    share = (4, 2, 1)[min(2, 3 * step // protocol.steps)]
    return protocol.text_tokens // share, protocol.mem_size // share


def training_loss(
    model: ICAE,
    candidate: Candidate,
    protocol: Protocol,
    step: int,
    documents: list[list[int]],
    data: random.Random,
    lm_on: bool,
) -> torch.Tensor:
    """The loss of one step's batch: AE windows (with the auxiliary loss if any), and while
    LM mixing is on, `lm_ratio` of the batch as LM examples, weighted by target tokens."""
    length, memory = window_length(candidate, protocol, step)
    lm_count = round(candidate.lm_ratio * protocol.batch) if lm_on else 0
    parts = []
    if protocol.batch - lm_count:
        texts = windows(
            documents, length, protocol.batch - lm_count, data, candidate.random_offsets
        )
        loss, _, targets = model.autoencode_batch_scores(texts, candidate.aux_weight, memory)
        parts.append((loss, targets))
    if lm_count:
        pairs = windows(documents, 2 * length, lm_count, data, candidate.random_offsets)
        parts.append(
            model.lm_batch_loss([p[:length] for p in pairs], [p[length:] for p in pairs], LM_LEAVE)
        )
    return sum(loss * n for loss, n in parts) / sum(n for _, n in parts)


def search(
    model_dir: str,
    candidates: list[Candidate],
    protocol: Protocol,
    train_documents: list[list[int]],
    heldout_documents: list[list[int]],
    dtype=torch.float32,
    device="cpu",
    log=None,
) -> dict:
    """Every candidate under the same protocol, then a table ranked by final held-out
    accuracy."""
    # Held-out windows from random offsets, fixed by the seed, the same for every candidate.
    heldout = windows(
        heldout_documents,
        protocol.text_tokens,
        protocol.eval_texts,
        random.Random(protocol.seed + 1),
        random_offsets=True,
    )
    results = []
    for candidate in candidates:
        history = run_candidate(
            model_dir, candidate, protocol, train_documents, heldout, dtype, device, log
        )
        results.append({"candidate": asdict(candidate), "history": history})
    table = sorted(
        (
            {"name": r["candidate"]["name"], **r["history"][-1], "start": r["history"][0]}
            for r in results
        ),
        key=lambda row: -row["accuracy"],
    )
    return {"protocol": asdict(protocol), "results": results, "table": table}


def plot_curves(report: dict, path):
    """Held-out accuracy and loss against examples seen, one line per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, result in enumerate(report["results"]):
        examples = [h["examples"] for h in result["history"]]
        candidate = result["candidate"]
        # A colour each (tab20 has enough); solid with the slot projector, dashed without.
        style = {
            "color": plt.cm.tab20(i % 20),
            "linestyle": "-" if candidate.get("slot_projector") else "--",
            "marker": "o",
            "label": candidate["name"],
        }
        acc.plot(examples, [h["accuracy"] for h in result["history"]], **style)
        loss.plot(examples, [h["loss"] for h in result["history"]], **style)
    for ax, label in ((acc, "held-out AE token accuracy"), (loss, "held-out AE loss (nats)")):
        ax.set_xlabel("training examples seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
