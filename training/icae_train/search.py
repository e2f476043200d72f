"""The recipe search of issue 13, with a fixed protocol so that candidates differ only in
their recipe: every candidate starts from the same seed, trains on the same stream of
short windows (equal examples seen, the same windows in the same order for candidates that
draw them the same way), and is measured at the same steps on the same held-out windows by
teacher-forced AE token accuracy and loss. Short windows (e.g. 64 tokens -> 16 slots), one
segment each, run as one batch per step, so each candidate gets many steps on a CPU."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, fields

import torch

from .model import ICAE, IcaeConfig
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


@dataclass(frozen=True)
class Protocol:
    """What every candidate of a search shares."""

    steps: int = 300
    batch: int = 8
    text_tokens: int = 64
    eval_every: int = 50
    eval_texts: int = 32
    seed: int = 0
    mem_size: int = 16
    compression_rate: int = 4
    lora_alpha: float = 32.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    memory_lr: float = 1e-3
    projector_lr: float = 1e-3


# The candidates the issue names that this harness covers; each differs from
# "official" in one thing, except "projector+lr1e-3".
DEFAULT_CANDIDATES = [
    Candidate("official", lr=1e-4),
    Candidate("lr5e-4"),
    Candidate("lr1e-3", lr=1e-3),
    Candidate("rank64", lora_r=64),
    Candidate("starts", random_offsets=False),
    Candidate("projector", slot_projector=True),
    Candidate("projector+lr1e-3", slot_projector=True, lr=1e-3),
]


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


def windows(
    documents: list[list[int]], length: int, count: int, rng: random.Random, random_offsets: bool
) -> list[list[int]]:
    """`count` windows of `length` tokens, each from a document drawn by `rng`."""
    long_enough = [d for d in documents if len(d) >= length]
    if not long_enough:
        raise ValueError(f"no document has {length} tokens")
    out = []
    for _ in range(count):
        doc = rng.choice(long_enough)
        start = rng.randrange(len(doc) - length + 1) if random_offsets else 0
        out.append(doc[start : start + length])
    return out


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
    )
    torch.manual_seed(protocol.seed)
    model = ICAE(model_dir, config, dtype=dtype, device=device)
    optimizer, _ = optimizer_for(
        model,
        TrainConfig(
            steps=protocol.steps,
            lr=candidate.lr,
            memory_lr=protocol.memory_lr,
            projector_lr=protocol.projector_lr,
            warmup_steps=0,
            min_lr_ratio=1.0,  # constant: candidates are compared at equal steps
        ),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    data = random.Random(protocol.seed)
    history, started = [], time.time()
    model.train()
    for step in range(protocol.steps + 1):
        if step % protocol.eval_every == 0 or step == protocol.steps:
            record = {
                "step": step,
                "examples": step * protocol.batch,
                "seconds": time.time() - started,
                **scores(model, heldout),
            }
            history.append(record)
            if log:
                log(candidate.name, record)
        if step == protocol.steps:
            break
        batch = windows(
            train_documents, protocol.text_tokens, protocol.batch, data, candidate.random_offsets
        )
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = model.autoencode_batch_scores(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
    return history


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
    for result in report["results"]:
        examples = [h["examples"] for h in result["history"]]
        name = result["candidate"]["name"]
        acc.plot(examples, [h["accuracy"] for h in result["history"]], marker="o", label=name)
        loss.plot(examples, [h["loss"] for h in result["history"]], marker="o", label=name)
    for ax, label in ((acc, "held-out AE token accuracy"), (loss, "held-out AE loss (nats)")):
        ax.set_xlabel("training examples seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
