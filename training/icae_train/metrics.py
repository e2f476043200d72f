"""BLEU-4 and ROUGE-L, written out so the numbers do not depend on an extra package."""

from __future__ import annotations

import math
from collections import Counter


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(references: list[list], hypotheses: list[list], max_n: int = 4) -> float:
    """Corpus BLEU-4 (Papineni et al.) with uniform weights and the brevity penalty."""
    matches = [0] * max_n
    totals = [0] * max_n
    ref_len = hyp_len = 0
    # A hypothesis list longer or shorter than the references is cut to the shorter one.
    for ref, hyp in zip(references, hypotheses, strict=False):
        ref_len += len(ref)
        hyp_len += len(hyp)
        for n in range(1, max_n + 1):
            h, r = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def rouge_l(reference: list, hypothesis: list) -> float:
    """ROUGE-L F1 from the longest common subsequence."""
    if not reference or not hypothesis:
        return 0.0
    prev = [0] * (len(hypothesis) + 1)
    for r in reference:
        cur = [0]
        for j, h in enumerate(hypothesis):
            cur.append(prev[j] + 1 if r == h else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hypothesis), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def prefix_match(reference: list, hypothesis: list) -> float:
    """Share of the reference reproduced exactly before the first mismatch."""
    n = 0
    for r, h in zip(reference, hypothesis, strict=False):
        if r != h:
            break
        n += 1
    return n / max(1, len(reference))


def words(text: str) -> list[str]:
    return text.lower().split()
