"""Evaluation: autoencoding of held-out passages (sacrebleu BLEU-4 on the detokenized text,
exact prefix and token accuracy on ids of the greedy reconstruction; teacher-forced loss and
accuracy, with a wrong-slots control) at the adapter's compression rate, and for PwC-style
data ROUGE-L (rouge-score) of answers from slots vs answers from the full context vs the
references, with a wrong-slots control (another context's slots)."""

from __future__ import annotations

import random
import time

import torch

from .adapter_io import chat_pieces
from .metrics import answer_found, corpus_bleu, prefix_match, rouge_l, token_accuracy
from .model import ICAE, Objective
from .refine import RefineOptions
from .refine import refine as refine_slots


def heldout_passages(
    documents: list[list[int]], passage_tokens: int, count: int, seed: int
) -> list[list[int]]:
    """The evaluation's passages: `count` documents long enough, in a seeded order, each cut
    to `passage_tokens` at a seeded offset (the same settings give the same passages)."""
    rng = random.Random(seed)
    candidates = [d for d in documents if len(d) >= passage_tokens]
    if not candidates:
        longest = max(map(len, documents), default=0)
        raise ValueError(
            f"no held-out document has {passage_tokens} tokens for a passage "
            f"(the longest has {longest})"
        )
    rng.shuffle(candidates)
    passages = []
    for doc in candidates[:count]:
        start = rng.randint(0, len(doc) - passage_tokens)
        passages.append(doc[start : start + passage_tokens])
    return passages


@torch.no_grad()
def autoencode_eval(
    model: ICAE,
    tokenizer,
    documents: list[list[int]],
    passage_tokens: int,
    count: int,
    seed: int = 0,
) -> dict:
    model.eval()
    passages = heldout_passages(documents, passage_tokens, count, seed)
    started = time.time()
    slots = [model.compress(passage) for passage in passages]
    hypotheses = [model.greedy(model.ae_layout(own), passage_tokens + 8) for own in slots]
    detokenize = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    return {
        "passages": len(passages),
        "passage_tokens": passage_tokens,
        "seed": seed,
        "slots": model.num_segments(passage_tokens) * model.config.mem_size,
        # sacrebleu on text, 0-1 scale (the paper's BLEU); older EVAL.json files held a
        # hand-written BLEU over token ids instead, and no "bleu" entry.
        "bleu": "sacrebleu",
        "bleu4": corpus_bleu(list(map(detokenize, passages)), list(map(detokenize, hypotheses))),
        "exact_prefix": sum(prefix_match(p, h) for p, h in zip(passages, hypotheses, strict=True))
        / max(1, len(passages)),
        "token_accuracy": token_accuracy(passages, hypotheses),
        "teacher_forced": teacher_forced_eval(model, passages, slots),
        "first_token": first_token_eval(model, tokenizer, passages, slots),
        "seconds": time.time() - started,
    }


@torch.no_grad()
def long_teacher_forced_eval(
    model: ICAE, documents: list[list[int]], passage_tokens: int, count: int, seed: int = 0
) -> dict:
    """The teacher-forced read-back of longer held-out passages (several segments each):
    how well the slots of long inputs are read, which one-segment passages do not show (the
    demo's four-segment article degenerates where one segment reads back). No greedy
    reconstruction: on long passages it costs minutes and is ≈0 until the loss is low."""
    model.eval()
    passages = heldout_passages(documents, passage_tokens, count, seed)
    slots = [model.compress(passage) for passage in passages]
    return {
        "passages": len(passages),
        "passage_tokens": passage_tokens,
        "seed": seed,
        "slots": model.num_segments(passage_tokens) * model.config.mem_size,
        "teacher_forced": teacher_forced_eval(model, passages, slots),
    }


def first_token_eval(model: ICAE, tokenizer, passages: list[list[int]], slots: list) -> dict:
    """What the decoder predicts at the [AE] position (the first token of every
    reconstruction): how often its argmax is the passage's first token, the argmaxes it
    gives, most common first, and whether the position reads the slots at all: the first
    token's probability from the passage's own slots against the next passage's, and the
    argmax from [AE] alone (no slots). One argmax for every passage, and the same
    probabilities from other slots, mean the position does not read the slots, and greedy
    reconstruction is wrong from its first token.

    `after_marker` asks the same of passages compressed with the tokenizer's BOS token
    before them (their last token dropped, so the segments stay the same) and read after
    [AE] BOS: whether the first token can be read once a known token precedes it."""

    def read(prefix: torch.Tensor, targets: list[int]) -> torch.Tensor:
        """The distribution of the last of `targets`, the others teacher-forced."""
        predicted, _ = model._predictions(prefix, targets)
        return predicted[-1].float().softmax(-1)

    def counted(tokens: list[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for token in tokens:
            text = tokenizer.decode([token])
            counts[text] = counts.get(text, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def first_tokens(memories: list, lead: list[int]) -> tuple[list[int], list, list]:
        """Per passage: the argmax, and the first token's probability from its own slots
        and from the next passage's, read after [AE] and `lead`."""
        argmaxes, own, other = [], [], []
        for index, (ids, memory) in enumerate(zip(passages, memories, strict=True)):
            probabilities = read(model.ae_layout(memory), lead + ids[:1])
            argmaxes.append(int(probabilities.argmax()))
            own.append(float(probabilities[ids[0]]))
            next_slots = memories[(index + 1) % len(memories)]
            other.append(float(read(model.ae_layout(next_slots), lead + ids[:1])[ids[0]]))
        return argmaxes, own, other

    count = max(1, len(passages))

    def accuracy(argmaxes: list[int]) -> float:
        return sum(a == ids[0] for a, ids in zip(argmaxes, passages, strict=True)) / count

    argmaxes, own, other = first_tokens(slots, [])
    alone = model.special(Objective.AUTOENCODE).to(model.dtype)
    report = {
        "accuracy": accuracy(argmaxes),
        "argmax_counts": counted(argmaxes),
        "probability": sum(own) / count,
        "probability_other_slots": sum(other) / count,
        "argmax_without_slots": tokenizer.decode([int(read(alone, passages[0][:1]).argmax())]),
    }
    marker = tokenizer.bos_token_id
    if marker is not None:
        marked = [model.compress([marker] + ids[:-1]) for ids in passages]
        argmaxes, own, other = first_tokens(marked, [marker])
        report["after_marker"] = {
            "marker": tokenizer.decode([marker]),
            "accuracy": accuracy(argmaxes),
            "probability": sum(own) / count,
            "probability_other_slots": sum(other) / count,
        }
    return report


def teacher_forced_eval(model: ICAE, passages: list[list[int]], slots: list) -> dict:
    """Teacher-forced AE loss (nats per target) and token accuracy over all targets (the
    recipe search's measures; the long run's accuracy milestone), each passage read back
    from its own slots and, as a control, from the next passage's. A decoder that ignores
    its slots scores the same on both: `slot_gain` (control loss - own loss) is what the
    slots tell it, ≈0 on the language-modelling plateau. The control needs two passages."""

    def read_back(pairs) -> tuple[float, float]:
        loss = correct = total = 0
        for ids, memory in pairs:
            mean, right, n = model.read_back_scores(memory, ids)
            loss, correct, total = loss + mean.item() * n, correct + right, total + n
        return loss / max(1, total), correct / max(1, total)

    own_loss, own_accuracy = read_back(zip(passages, slots, strict=True))
    report = {"loss": own_loss, "accuracy": own_accuracy}
    if len(passages) > 1:
        other_loss, other_accuracy = read_back(zip(passages, slots[1:] + slots[:1], strict=True))
        report |= {
            "loss_other_slots": other_loss,
            "accuracy_other_slots": other_accuracy,
            "slot_gain": other_loss - own_loss,
        }
    return report


def other_context(records: list[dict], index: int) -> int | None:
    """The next record (cyclically) whose context differs from record `index`'s, or None
    when every record has the same context (e.g. PwC's questions on one article)."""
    for step in range(1, len(records)):
        other = (index + step) % len(records)
        if records[other]["input"] != records[index]["input"]:
            return other
    return None


@torch.no_grad()
def answer_eval(
    model: ICAE,
    tokenizer,
    records: list[dict],
    max_new_tokens: int = 64,
    max_context_tokens: int = 4096,
    refine: RefineOptions | None = None,
    refine_slots_per_segment: int | None = None,
) -> dict:
    """ROUGE-L (rouge-score) of answers from slots and from the full context, and, as a
    control, from the slots of another record's context: an adapter that answers from
    what it learned rather than from its slots scores the same on both (the teacher-forced
    read-back's `slot_gain`, for answers). The control needs two different contexts. With
    `refine`, each question is also answered from its context's refined slots (compressed
    with `refine_slots_per_segment` slots per segment when given)."""
    model.eval()
    pieces = chat_pieces(tokenizer)
    if pieces is None:
        raise ValueError("the base model has no chat template this trainer knows")
    newline = tokenizer.encode("\n", add_special_tokens=False)
    contexts = [
        tokenizer.encode(r["input"], add_special_tokens=False)[:max_context_tokens] for r in records
    ]
    detokenize = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731

    def answer_from(memory, prompt):
        layout = model.answer_layout(memory, prompt, pieces["prefix_ids"], pieces["suffix_ids"])
        return detokenize(model.greedy(layout, max_new_tokens))

    refined: tuple[list[int], torch.Tensor] | None = None  # the last context's, reused

    rows = []
    for index, (r, context) in enumerate(zip(records, contexts, strict=True)):
        prompt = tokenizer.encode(r["prompt"], add_special_tokens=False)
        slots = model.compress(context)
        slots_text = answer_from(slots, prompt)
        # The baseline: the base model reading the whole context (what icae-core's
        # baseline_input builds).
        full = model.embed(pieces["prefix_ids"] + context + newline + prompt + pieces["suffix_ids"])
        full_text = detokenize(model.greedy(full, max_new_tokens))
        row = {
            "prompt": r["prompt"],
            "reference": r["answer"],
            "from_slots": slots_text,
            "from_full_context": full_text,
            "rouge_l_slots": rouge_l(r["answer"], slots_text),
            "rouge_l_full_context": rouge_l(r["answer"], full_text),
            "found_slots": answer_found(r["answer"], slots_text),
            "found_full_context": answer_found(r["answer"], full_text),
        }
        if refine is not None:
            if refined is None or refined[0] != context:
                start = slots
                if refine_slots_per_segment is not None:
                    start = model.compress(context, refine_slots_per_segment)
                with torch.enable_grad():
                    refined = (context, refine_slots(model, context, start, refine).slots)
            refined_text = answer_from(refined[1], prompt)
            row |= {
                "from_refined_slots": refined_text,
                "rouge_l_refined_slots": rouge_l(r["answer"], refined_text),
                "found_refined_slots": answer_found(r["answer"], refined_text),
            }
        other = other_context(records, index)
        if other is not None:
            # Compressed again rather than kept: memory stays one context's slots however
            # many records there are.
            other_text = answer_from(model.compress(contexts[other]), prompt)
            row |= {
                "from_other_slots": other_text,
                "rouge_l_other_slots": rouge_l(r["answer"], other_text),
                "found_other_slots": answer_found(r["answer"], other_text),
            }
        rows.append(row)
    mean = lambda key: sum(row[key] for row in rows) / max(1, len(rows))  # noqa: E731
    slots_score, full_score = mean("rouge_l_slots"), mean("rouge_l_full_context")
    controlled = bool(rows) and all("rouge_l_other_slots" in row for row in rows)
    return {
        "questions": len(rows),
        "rouge_l_slots": slots_score,
        "rouge_l_full_context": full_score,
        "slots_over_full_context": slots_score / full_score if full_score else None,
        "rouge_l_other_slots": mean("rouge_l_other_slots") if controlled else None,
        "refine_steps": refine.steps if refine else 0,
        "rouge_l_refined_slots": mean("rouge_l_refined_slots") if refine else None,
        "found_refined_slots": mean("found_refined_slots") if refine else None,
        # Shares of answers that contain the reference (`answer_found`).
        "found_slots": mean("found_slots"),
        "found_full_context": mean("found_full_context"),
        "found_other_slots": mean("found_other_slots") if controlled else None,
        "answers": rows,
    }
