"""Tokenization equals a correctly configured HF tokenizer (digits split first)."""

import pytest

from conftest import run_icae_json

TEXTS = [
    "Hello, world!",
    "In 2018, 1,234,567 people paid $3.50 each (≈ €3.05).",
    "π ≈ 3.14159265358979; e^(iπ) + 1 = 0",
    "Ünïcödé façade — naïve café, 東京都, Привет мир, مرحبا",
    "emoji: 🚀🔥👩‍👩‍👧‍👦 and flags 🇫🇷🇰🇵",
    "tabs\tand   multiple     spaces\n\n\nnewlines\r\n end",
    "   leading and trailing   ",
    'code: fn main() { println!("{}", 42); } // comment',
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Phone +33 (0)1 23 45 67 89, ISBN 978-3-16-148410-0, v1.2.3-rc4",
    "don't won't it's we'll they're I'm you've",
    "a" * 300,
    "0123456789" * 20,
]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_tokenization_matches_hf(text, model_dir, hf_tokenizer):
    ours = run_icae_json("tokenize", "--model", model_dir, "--text", text, "--json")["token_ids"]
    expected = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ours == expected


def test_digits_are_split_one_by_one(model_dir, hf_tokenizer):
    ids = run_icae_json("tokenize", "--model", model_dir, "--text", "12345", "--json")["token_ids"]
    assert len(ids) == 5
    assert [hf_tokenizer.decode([i]) for i in ids] == list("12345")
