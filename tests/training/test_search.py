"""The recipe search's protocol: candidates differ only in their recipe (same seed, same
training windows, same held-out windows, measured at the same examples seen)."""

import math
import random

import pytest
import torch

from icae_train.adapter_io import save_adapter
from icae_train.data import windows
from icae_train.model import ICAE, IcaeConfig
from icae_train.search import (
    Candidate,
    Protocol,
    parse_candidate,
    search,
    window_length,
)

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
    with pytest.raises(ValueError, match=r"a window needs 64 tokens .*\(the longest has \d+\)"):
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


def tiny_icae(tiny_dir, **config):
    torch.manual_seed(0)
    settings = dict(mem_size=4, compression_rate=2, lora_r=4, target_modules=["q_proj", "v_proj"])
    return ICAE(str(tiny_dir), IcaeConfig(**{**settings, **config}))


def test_candidates_of_any_lora_rank_start_from_the_same_memory_tokens(tiny_dir):
    """The LoRA init draws from the global generator (more numbers for a bigger rank); the
    memory tokens do not, so a rank candidate starts from the same model as the others."""
    small, big = tiny_icae(tiny_dir, lora_r=4), tiny_icae(tiny_dir, lora_r=32)
    assert torch.equal(small.memory_token_embed.weight, big.memory_token_embed.weight)
    torch.manual_seed(1)
    other = ICAE(str(tiny_dir), IcaeConfig(mem_size=4, compression_rate=2, lora_r=4))
    assert not torch.equal(small.memory_token_embed.weight, other.memory_token_embed.weight)


def test_new_candidate_settings_parse():
    assert parse_candidate(
        "x:slot_scale=1,aux_weight=0.5,curriculum=yes,lm_ratio=0.25,lm_after=0.4"
    ) == Candidate("x", slot_scale=True, aux_weight=0.5, curriculum=True, lm_ratio=0.25,
                   lm_after=0.4)  # fmt: skip


def test_the_learned_scale_starts_where_the_projector_starts(tiny_dir, tmp_path):
    """Both bring the slots to the token embeddings' scale without turning them: at
    initialisation their slots are the same, and only the scale is a search candidate."""
    texts = documents(3, count=3, length=8)
    scaled, projected = (
        tiny_icae(tiny_dir, slot_scale=True),
        tiny_icae(tiny_dir, slot_projector=True),
    )
    with torch.no_grad():
        a, b = scaled.batch_slots(texts)[1], projected.batch_slots(texts)[1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    raw = tiny_icae(tiny_dir).batch_slots(texts)[1]
    assert not torch.allclose(a, raw)
    assert "slot_scale" in dict(scaled.named_parameters())
    with pytest.raises(ValueError, match="recipe-search candidate only"):
        save_adapter(scaled, str(tiny_dir), tmp_path / "adapter", None, "x")


def test_the_auxiliary_loss_is_each_slot_predicting_its_stretch(tiny_dir):
    model = tiny_icae(tiny_dir, slot_projector=True)
    texts = documents(4, count=2, length=8)
    with torch.no_grad():
        plain, correct, n = model.autoencode_batch_scores(texts)
        with_aux, correct_aux, n_aux = model.autoencode_batch_scores(texts, aux_weight=0.5)
        _, slots = model.batch_slots(texts)
        # Independently: slot i of 4 covers tokens 2i and 2i+1 (8 tokens, rate 2).
        head = model.icae.get_base_model().lm_head
        terms = [
            torch.nn.functional.cross_entropy(
                head(slots[b, j // 2]).float().unsqueeze(0), torch.tensor([texts[b][j]])
            )
            for b in range(2)
            for j in range(8)
        ]
    assert (correct, n) == (correct_aux, n_aux)
    torch.testing.assert_close(with_aux, plain + 0.5 * torch.stack(terms).mean())


@pytest.mark.parametrize("lm_token", [False, True])
def test_batched_lm_loss_is_the_per_example_loss(tiny_dir, lm_token):
    model = tiny_icae(tiny_dir, lm_token=lm_token)
    docs = documents(5, count=3, length=14)
    with torch.no_grad():
        loss, n = model.lm_batch_loss([d[:8] for d in docs], [d[8:] for d in docs], leave=2)
        each = [model.lm_loss(d[:8], d[8:], 2) for d in docs]
    assert n == 3 * 4
    torch.testing.assert_close(loss, torch.stack([value for value, _ in each]).mean())


def test_the_curriculum_goes_short_to_long_at_the_same_rate():
    protocol = Protocol(steps=9, text_tokens=64, mem_size=16)
    lengths = [window_length(Candidate("c", curriculum=True), protocol, s) for s in range(9)]
    assert lengths == [(16, 4)] * 3 + [(32, 8)] * 3 + [(64, 16)] * 3
    assert window_length(Candidate("plain"), protocol, 0) == (64, 16)


def test_lm_mixing_waits_for_its_accuracy_threshold(tiny_dir):
    """Mixing that never starts (threshold above 1) is the AE-only run exactly; mixing from
    the start is another run from the same starting point."""
    candidates = [
        Candidate("ae", lr=1e-2),
        Candidate("never", lr=1e-2, lm_ratio=0.5, lm_after=1.01),
        Candidate("mixed", lr=1e-2, lm_ratio=0.5),
        Candidate("all", lr=1e-2, slot_projector=True, aux_weight=1.0, curriculum=True),
    ]
    report = search(str(tiny_dir), candidates, PROTOCOL, documents(0), documents(1))
    runs = {r["candidate"]["name"]: r["history"] for r in report["results"]}
    drop = lambda h: [{k: v for k, v in m.items() if k != "seconds"} for m in h]  # noqa: E731
    assert drop(runs["ae"]) == drop(runs["never"])
    assert [m["lm_on"] for m in runs["mixed"]] == [True] * 3
    assert not any(m["lm_on"] for m in runs["never"])
    assert runs["mixed"][0]["loss"] == runs["ae"][0]["loss"]
    assert runs["mixed"][-1]["loss"] != pytest.approx(runs["ae"][-1]["loss"], abs=1e-5)
    assert all(math.isfinite(m["loss"]) for m in runs["all"])
