"""Fine-tuning data made offline: the default model itself writes one question per held-in
passage, then answers it from the passage; pairs whose answer is not found in the passage
are dropped (the 135M model is too small to do both in one reply)."""

from __future__ import annotations

import json
import re

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from .data import passages

ASK = (
    "Read the text and write one question that the text answers.\n\n"
    "Text:\n{passage}\n\n"
    "Reply with the question only."
)
ANSWER = (
    "Text:\n{passage}\n\n"
    "Answer the question with a short phrase copied from the text.\n"
    "Question: {question}"
)


def question_of(reply: str) -> str | None:
    """The first line that reads like a question."""
    for line in reply.splitlines():
        line = re.sub(r"^(Question|Q)\s*:\s*", "", line.strip()).strip('"')
        if 10 <= len(line) <= 200 and line.endswith("?") and line.count("?") == 1:
            return line
    return None


def extractive(answer: str, passage: str) -> bool:
    words = re.findall(r"\w+", answer.lower())
    text = set(re.findall(r"\w+", passage.lower()))
    return 1 <= len(words) <= 30 and sum(w in text for w in words) >= 0.8 * len(words)


def _reply(model, tokenizer, content: str, max_new_tokens: int) -> str:
    messages = [{"role": "user", "content": content}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids.shape[1] :]
    return tokenizer.decode(out, skip_special_tokens=True).strip()


@torch.no_grad()
def make_qa(model_dir: str, documents: list[str], count: int, seed: int, out_path: str) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kept = tried = 0
    with open(out_path, "w") as out:
        for passage in tqdm(passages(documents, count, seed), desc="questions"):
            tried += 1
            question = question_of(_reply(model, tokenizer, ASK.format(passage=passage), 48))
            if question is None:
                continue
            answer = (
                _reply(model, tokenizer, ANSWER.format(passage=passage, question=question), 32)
                .split("\n")[0]
                .strip()
            )
            answer = re.sub(r"^(Answer|A)\s*:\s*", "", answer).strip('"')
            if extractive(answer, passage):
                out.write(
                    json.dumps({"input": passage, "prompt": question, "answer": answer}) + "\n"
                )
                kept += 1
    return {"passages": tried, "kept": kept}
