"""The cloze generator: extractive (context, question, answer) triples with no model."""

import json
import subprocess
import sys

from icae_train.cloze import clozes_of, make_cloze
from icae_train.data import read_jsonl

ARTICLE = (
    "The bridge over the river was opened on March 3, 2019 after four years of work. "
    "It cost $120 million and carries 40,000 vehicles a day across the valley. "
    "Mayor Anna Kowalski said the bridge would cut travel times by 30 percent for commuters. "
    "Engineers from the Danish firm Larsen and Holm designed the main span, which is "
    "the longest of its kind in the region. The old ferry, which had run since 1911, "
    "stopped on Sunday."
)


def by_answer(sentence):
    return {c.answer: c for c in clozes_of(sentence)}


def test_each_kind_of_span_gets_its_own_question_phrase():
    opened = by_answer("The bridge over the river was opened on March 3, 2019 after four years.")
    assert opened["March 3, 2019"].question == (
        "The bridge over the river was opened on what date after four years?"
    )
    cost = by_answer("It cost $120 million and carries 40,000 vehicles a day across the valley.")
    assert cost["$120 million"].question.startswith("It cost how much money and carries")
    assert cost["40,000"].question.endswith("carries how many vehicles a day across the valley?")
    said = by_answer("Mayor Anna Kowalski said the bridge would cut travel times by 30 percent.")
    assert said["Mayor Anna Kowalski"].question == (
        "Who said the bridge would cut travel times by 30 percent?"
    )
    assert said["30 percent"].question.endswith("cut travel times by what percentage?")
    ferry = by_answer("The old ferry, which had run since 1911, stopped on Sunday.")
    since = "The old ferry, which had run since what year, stopped on Sunday?"
    assert ferry["1911"].question == since
    assert ferry["Sunday"].kind == "day"


def test_names_are_whole_and_never_parts_of_other_words():
    found = by_answer(
        "Staff of the Monaco-based channel met the Ministry of Culture and France's envoy."
    )
    assert "Ministry of Culture" in found
    assert found["Ministry of Culture"].question == (
        "Staff of the Monaco-based channel met what and France's envoy?"
    )
    assert "Monaco" not in found and "France" not in found
    # A capitalised first word is not taken for a name; a sentence without a full stop is skipped.
    assert "Staff" not in found
    assert clozes_of("Is this a question about Paris?") == []


def test_every_answer_is_copied_from_its_passage_and_hidden_in_its_question():
    documents = [ARTICLE, ARTICLE.replace("bridge", "tunnel")]
    records = make_cloze(documents, passages_wanted=10, per_passage=5, seed=3)
    assert len(records) == 10  # two distinct passages, five questions each
    for record in records:
        assert set(record) == {"input", "prompt", "answer", "kind"}
        assert record["answer"] in record["input"]
        assert record["answer"].lower() not in record["prompt"].lower()
        assert record["prompt"].endswith("?")
    assert make_cloze(documents, 10, 5, seed=3) == records
    assert make_cloze(documents, 10, 5, seed=4) != records
    # The same document twice is one passage, not two.
    assert len(make_cloze([ARTICLE, ARTICLE], 10, 5, seed=3)) == 5


def test_the_command_writes_finetuning_jsonl(tmp_path):
    documents = tmp_path / "train.jsonl"
    documents.write_text(json.dumps({"source": "test", "text": ARTICLE}) + "\n")
    out = tmp_path / "cloze.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "icae_train.cli",
            "make-cloze",
            "--documents",
            documents,
            "--passages",
            "5",
            "--per-passage",
            "3",
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(result.stdout)
    records = read_jsonl(out)
    assert summary["triples"] == len(records) == 3
    assert summary["passages"] == 1
    assert sum(summary["kinds"].values()) == 3
    assert all(r["input"] == ARTICLE for r in records)
