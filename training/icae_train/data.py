"""Training examples. Every example is a pure function of (seed, step, micro-step), so the
data position of a run is just its step: resuming continues the exact same stream."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def passages(
    documents: list[str], count: int, seed: int, min_chars: int = 300, max_chars: int = 1200
):
    """Up to `count` prose paragraphs of the documents, shuffled with `seed`."""
    rng = random.Random(seed)
    candidates = []
    for doc in documents:
        for paragraph in doc.split("\n\n"):
            paragraph = paragraph.strip()
            if min_chars <= len(paragraph) <= max_chars and sum(
                c.isalpha() for c in paragraph
            ) > 0.7 * len(paragraph):
                candidates.append(paragraph)
    rng.shuffle(candidates)
    return candidates[:count]


def write_tokens(path: str | Path, documents: list[list[int]]):
    """Tokenized documents as one compressed .npz (ids, document offsets), readable with numpy
    alone (no tokenizer on the machine that trains). Ids are uint16 when every id fits (a
    vocabulary under 65,536, as SmolLM2's 49,152), else uint32 (half the
    file)."""
    import numpy as np

    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.fromiter((t for d in documents for t in d), dtype=np.uint32, count=int(offsets[-1]))
    if ids.size == 0 or int(ids.max()) < 2**16:
        ids = ids.astype(np.uint16)
    with open(path, "wb") as f:
        np.savez_compressed(f, ids=ids, offsets=offsets)


def read_tokens(path: str | Path) -> list[list[int]]:
    import numpy as np

    with np.load(path) as data:
        ids, offsets = data["ids"], data["offsets"]
    return [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


@dataclass
class PretrainExample:
    context: list[int]
    continuation: list[int]  # empty for autoencoding

    @property
    def is_lm(self) -> bool:
        return bool(self.continuation)


class PretrainStream:
    """Autoencoding and language-modelling examples from tokenized documents, following the
    official `text_extraction`: with probability `lm_ratio` an LM example (a context window
    and the tokens after it), else an AE example (a window of the document)."""

    def __init__(
        self,
        documents: list[list[int]],
        seed: int,
        max_tokens: int,
        min_tokens: int,
        lm_ratio: float,
        min_lm_tokens: int,
    ):
        self.documents = [d for d in documents if len(d) >= min_tokens]
        if not self.documents:
            raise ValueError(f"no document has at least {min_tokens} tokens")
        self.seed = seed
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.lm_ratio = lm_ratio
        self.min_lm_tokens = min_lm_tokens

    def example(self, step: int, micro: int) -> PretrainExample:
        rng = random.Random(f"{self.seed}:{step}:{micro}")
        doc = self.documents[rng.randrange(len(self.documents))]
        length = rng.randint(self.min_tokens, self.max_tokens)
        if rng.random() < self.lm_ratio and len(doc) >= length + self.min_lm_tokens:
            start = rng.randint(0, len(doc) - length - self.min_lm_tokens)
            context = doc[start : start + length]
            continuation = doc[start + length : start + length + self.max_tokens]
            return PretrainExample(context, continuation)
        length = min(length, len(doc))
        start = rng.randint(0, len(doc) - length)
        return PretrainExample(doc[start : start + length], [])

    def window_batch(
        self, step: int, micro: int, count: int, segment_tokens: int | None = None
    ) -> list[list[int]]:
        """The AE windows of one batched step from random offsets of documents long enough,
        a pure function of (seed, step, micro) like `example`. With `segment_tokens` below
        `max_tokens`, the step first draws a segment count s uniformly from 1 to
        max_tokens // segment_tokens, then gives max(1, count // s) windows of s whole
        segments (about `count` segments per step, long inputs among them); otherwise
        `count` windows of exactly `max_tokens` tokens."""
        rng = random.Random(f"{self.seed}:{step}:{micro}:batch")
        length = self.max_tokens
        if segment_tokens and segment_tokens < self.max_tokens:
            # Its own generator, so that one-segment runs keep the windows they always had.
            drawn = random.Random(f"{self.seed}:{step}:{micro}:segments")
            length = segment_tokens * drawn.randint(1, self.max_tokens // segment_tokens)
            count = max(1, count // (length // segment_tokens))
        return windows(self.documents, length, count, rng, random_offsets=True)


def windows(
    documents: list[list[int]], length: int, count: int, rng: random.Random, random_offsets: bool
) -> list[list[int]]:
    """`count` windows of `length` tokens, each from a document drawn by `rng` among those
    long enough, from a random offset or the document's start."""
    long_enough = [d for d in documents if len(d) >= length]
    if not long_enough:
        longest = max((len(d) for d in documents), default=0)
        raise ValueError(
            f"a window needs {length} tokens and no document has that many "
            f"(the longest has {longest})"
        )
    out = []
    for _ in range(count):
        doc = rng.choice(long_enough)
        start = rng.randrange(len(doc) - length + 1) if random_offsets else 0
        out.append(doc[start : start + length])
    return out


@dataclass
class AnswerExample:
    context: list[int]
    prompt: list[int]
    answer: list[int]


class FinetuneStream:
    """(context, prompt, answer) triples in the PwC JSONL format, tokenized without special
    tokens as the official `instruct_ft_tokenize_function`, drawn uniformly per step."""

    def __init__(self, records: list[dict], tokenizer, seed: int, max_context_tokens: int):
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.examples = []
        for r in records:
            context = encode(r["input"])[:max_context_tokens]
            answer = encode(r["answer"])
            if context and answer and r["prompt"].strip():
                self.examples.append(AnswerExample(context, encode(r["prompt"]), answer))
        if not self.examples:
            raise ValueError("no usable (input, prompt, answer) records")
        self.seed = seed

    def example(self, step: int, micro: int) -> AnswerExample:
        rng = random.Random(f"{self.seed}:{step}:{micro}")
        return self.examples[rng.randrange(len(self.examples))]
