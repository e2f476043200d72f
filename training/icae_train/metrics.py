"""Evaluation metrics. BLEU and ROUGE-L are the standard implementations on detokenized text
(sacrebleu, as the ICAE paper reports BLEU; Google's rouge-score), so the numbers compare
with published ones; token accuracy and the exact prefix are on token ids, where they are
defined."""

from __future__ import annotations

import re

import sacrebleu
from rouge_score import rouge_scorer

# One scorer: it is stateless, and building it loads the tokenizer each time.
_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def corpus_bleu(references: list[str], hypotheses: list[str]) -> float:
    """Corpus BLEU-4 from sacrebleu (its default 13a tokenization, brevity penalty, no
    smoothing), on a 0-1 scale instead of sacrebleu's 0-100."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return 0.0
    return sacrebleu.corpus_bleu(hypotheses, [references]).score / 100.0


def rouge_l(reference: str, hypothesis: str) -> float:
    """ROUGE-L F1 from rouge-score (lower-cased, alphanumeric tokens, no stemming)."""
    return _ROUGE_L.score(reference, hypothesis)["rougeL"].fmeasure


def answer_found(reference: str, hypothesis: str) -> bool:
    """Whether the reference's words occur in a row in the hypothesis (lower-cased,
    alphanumeric words, as ROUGE-L reads them): for short extractive answers, a measure that
    a verbose but right answer does not lose, unlike ROUGE-L's F1."""
    words = lambda text: re.findall(r"[a-z0-9]+", text.lower())  # noqa: E731
    ref, hyp = words(reference), words(hypothesis)
    return bool(ref) and any(hyp[i : i + len(ref)] == ref for i in range(len(hyp) - len(ref) + 1))


def prefix_match(reference: list, hypothesis: list) -> float:
    """Share of the reference reproduced exactly before the first mismatch."""
    n = 0
    for r, h in zip(reference, hypothesis, strict=False):
        if r != h:
            break
        n += 1
    return n / max(1, len(reference))


def token_accuracy(references: list[list], hypotheses: list[list]) -> float:
    """Share of reference tokens reproduced at their own position (free-running generation,
    so one early insertion shifts everything after it; see prefix_match)."""
    right = sum(
        sum(a == b for a, b in zip(r, h, strict=False))
        for r, h in zip(references, hypotheses, strict=True)
    )
    return right / max(1, sum(map(len, references)))
