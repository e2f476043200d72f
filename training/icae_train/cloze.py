"""Extractive (context, question, answer) triples that need no model: cloze questions made
from sentences of held-in passages. In one sentence a date, a number, an amount or a name is
replaced by a question phrase ("on what date", "how many people", "who"), the sentence ends
with "?", and the removed span is the answer. Every answer is copied from its passage, so a
decoder that reads the passage (or its slots) can answer; one that does not, mostly cannot.

The questions keep the sentence's word order ("The report was published on what date?"):
not always idiomatic, but unambiguous about what is asked, and free to make by thousands.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from .data import passages

MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
# Checked in this order: the first kind whose pattern matches a span claims it.
PATTERNS = [
    (
        "date",
        re.compile(
            rf"\b(?:(?:{MONTHS})\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
            rf"|\d{{1,2}}\s+(?:{MONTHS}),?\s+\d{{4}})\b"
        ),
    ),
    ("month", re.compile(rf"\b(?:{MONTHS})\s+\d{{4}}\b")),
    ("day", re.compile(r"\b(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b")),
    ("year", re.compile(r"\b(?:1[5-9]|20)\d\d\b")),
    ("percent", re.compile(r"\b\d+(?:\.\d+)?\s?(?:%|percent\b|per cent\b)")),
    (
        "money",
        re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d+)?(?:\s(?:thousand|million|billion|trillion)\b)?"),
    ),
    ("count", re.compile(r"\b\d[\d,]*(?:\.\d+)?(?=\s+[a-z]{3,}s\b)")),
    # Capitalised words, joined by a few lower-case connectors ("Ministry of Culture"), not
    # part of a hyphenated word ("Monaco-based") nor possessive ("France's").
    (
        "name",
        re.compile(
            r"(?<![-\w])[A-Z][a-zA-Z]+(?:\s+(?:(?:of|for|and|de|van|von)\s+)?[A-Z][a-zA-Z]+){0,4}"
            r"(?![-\w’'])"
        ),
    ),
]
# Words after a name that mark it as the subject of a speech or action: "who".
PERSON_VERBS = re.compile(
    r"\s+(?:said|says|told|wrote|announced|added|explained|argued|claimed|stated|founded|"
    r"led|became|joined|was born)\b"
)
TITLES = re.compile(r"(?:Mr|Mrs|Ms|Dr|Prof|President|Minister|Senator|CEO)\.?\s+$")
FUNCTION_WORDS = set(
    "The A An This That These Those It Its If In On At For From To By With As Or And But So "
    "When Where While What Which Who How Why Otherwise However Also Then Thus There Here Each "
    "Every All Some Any No Not Note See Use Drop Add Fix Fixed Added Refer".split()
)
MARKUP = re.compile(r"[`\[\]$*_<>{}|=/\\]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
MIN_WORDS, MAX_WORDS = 6, 50


@dataclass(frozen=True)
class Cloze:
    question: str
    answer: str
    kind: str


def sentences(passage: str) -> list[str]:
    flat = re.sub(r"\s+", " ", passage).strip()
    return [s for s in SENTENCE_END.split(flat) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]


def _trim_function_words(sentence: str, start: int, end: int) -> tuple[int, int]:
    """Drop capitalised function words ("The", "However") from the front of a name span."""
    while start < end:
        word = sentence[start:end].split(" ", 1)[0]
        if word not in FUNCTION_WORDS:
            break
        start = min(end, start + len(word) + 1)
    return start, end


def _question_phrase(kind: str, sentence: str, start: int, end: int) -> tuple[int, str]:
    """Where the question phrase starts (a preposition before a date may join it) and the
    phrase itself."""
    before = sentence[:start]
    if kind in ("date", "month", "year", "day"):
        return start, f"what {kind}"
    if kind == "percent":
        return start, "what percentage"
    if kind == "money":
        return start, "how much money"
    if kind == "count":
        return start, "how many"
    title = TITLES.search(before)
    if title:
        return title.start(), "who"
    if PERSON_VERBS.match(sentence[end:]):
        return start, "who"
    # "the X" asks for what X is: "the what" would read as a typo.
    if before.endswith("the "):
        start -= len("the ")
    return start, "what"


def clozes_of(sentence: str) -> list[Cloze]:
    """Every cloze one sentence gives, at most one per answer span; spans that overlap an
    earlier kind's span are skipped."""
    if not sentence.endswith("."):
        return []
    taken: list[tuple[int, int]] = []
    found = []
    for kind, pattern in PATTERNS:
        for match in pattern.finditer(sentence):
            start, end = match.span()
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            if kind == "name":
                start, end = _trim_function_words(sentence, start, end)
                if start == end:
                    continue
            # Spans in markup or code (`x`, [x], $x, *x*) are identifiers, not prose.
            if MARKUP.search(sentence[max(0, start - 1) : start] + sentence[end : end + 1]):
                continue
            # One capitalised word opening the sentence is usually not a name.
            if kind == "name" and start == 0 and " " not in sentence[start:end]:
                continue
            answer = sentence[start:end].strip()
            q_start, phrase = _question_phrase(kind, sentence, start, end)
            body = sentence[:q_start] + phrase + sentence[end:-1]
            question = body[0].upper() + body[1:] + "?"
            # The answer must not still show in the question (a repeated name, say).
            if answer.lower() in question.lower():
                continue
            found.append(Cloze(question, answer, kind))
    return found


def make_cloze(
    documents: list[str], passages_wanted: int, per_passage: int, seed: int
) -> list[dict]:
    """Up to `per_passage` triples from each of `passages_wanted` passages, chosen with a
    seeded generator so the same corpus always gives the same data."""
    rng = random.Random(seed)
    records = []
    unique = list(dict.fromkeys(documents))
    for passage in passages(unique, passages_wanted, seed):
        candidates = [c for s in sentences(passage) for c in clozes_of(s)]
        for cloze in rng.sample(candidates, min(per_passage, len(candidates))):
            records.append(
                {
                    "input": passage,
                    "prompt": cloze.question,
                    "answer": cloze.answer,
                    "kind": cloze.kind,
                }
            )
    return records


def write_cloze(records: list[dict], out_path: str) -> dict:
    with open(out_path, "w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    kinds: dict[str, int] = {}
    for record in records:
        kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
    return {"triples": len(records), "passages": len({r["input"] for r in records}), "kinds": kinds}
