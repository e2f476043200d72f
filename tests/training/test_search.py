"""The recipe search's protocol: candidates differ only in their recipe (same seed, same
training windows, same held-out windows, measured at the same examples seen)."""

import random

import pytest

from icae_train.search import Candidate, Protocol, parse_candidate, search, windows

PROTOCOL = Protocol(
    steps=4, batch=2, text_tokens=8, eval_every=2, eval_texts=4, mem_size=4, compression_rate=2
)


def documents(seed, count=6, length=40):
    rng = random.Random(seed)
    return [[rng.randrange(2, 256) for _ in range(length)] for _ in range(count)]


def test_candidates_parse_and_bad_settings_are_named():
    assert parse_candidate("fast:lr=1e-3,slot_projector=1,random_offsets=false") == Candidate(
        "fast", slot_projector=True, lr=1e-3, random_offsets=False
    )
    assert parse_candidate("plain") == Candidate("plain")
    with pytest.raises(ValueError, match="unknown setting 'rank'.*lora_r"):
        parse_candidate("x:rank=64")
    with pytest.raises(ValueError, match="no name"):
        parse_candidate(":lr=1")


def test_windows_come_from_document_starts_or_random_offsets():
    docs = documents(0)
    starts = windows(docs, 8, 5, random.Random(1), random_offsets=False)
    assert all(any(w == d[:8] for d in docs) for w in starts)
    anywhere = windows(docs, 8, 20, random.Random(1), random_offsets=True)
    assert all(len(w) == 8 for w in anywhere)
    assert any(all(w != d[:8] for d in docs) for w in anywhere)
    assert windows(docs, 8, 5, random.Random(1), True) == windows(
        docs, 8, 5, random.Random(1), True
    )
    with pytest.raises(ValueError, match="no document has 64 tokens"):
        windows(docs, 64, 1, random.Random(0), True)


def test_candidates_share_data_seed_and_measurements(tiny_dir):
    candidates = [Candidate("a", lr=1e-2), Candidate("a-again", lr=1e-2), Candidate("b", lr=0.0)]
    report = search(str(tiny_dir), candidates, PROTOCOL, documents(0), documents(1))
    runs = {r["candidate"]["name"]: r["history"] for r in report["results"]}
    for history in runs.values():
        assert [h["step"] for h in history] == [0, 2, 4]
        assert [h["examples"] for h in history] == [0, 4, 8]
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in runs["a"]]
    # Same recipe, same protocol: the same run, measurement for measurement.
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in runs["a-again"]]
    # Every candidate starts from the same model, measured on the same held-out windows.
    assert runs["a"][0]["loss"] == runs["b"][0]["loss"]
    # Training moves the held-out loss, and the LoRA learning rate (the only difference)
    # changes where it ends (the memory tokens train at the protocol's rate in both).
    assert runs["a"][-1]["loss"] != pytest.approx(runs["a"][0]["loss"], abs=1e-3)
    assert runs["a"][-1]["loss"] != pytest.approx(runs["b"][-1]["loss"], abs=1e-4)
    assert [row["accuracy"] for row in report["table"]] == sorted(
        (row["accuracy"] for row in report["table"]), reverse=True
    )
