"""Fine-tuning data made offline: the default model itself writes one extractive question
and answer per held-in passage; pairs whose answer is not found in the passage are dropped."""

from __future__ import annotations

import json
import random
import re

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = (
    "Read the text and write one question that the text answers, then the answer copied "
    "from the text.\n\nText:\n{passage}\n\nReply in exactly this format:\nQuestion: <question>\nAnswer: <answer>"
)


def passages(documents: list[str], count: int, seed: int, min_chars: int = 300, max_chars: int = 1200):
    rng = random.Random(seed)
    candidates = []
    for doc in documents:
        for paragraph in doc.split("\n\n"):
            paragraph = paragraph.strip()
            if min_chars <= len(paragraph) <= max_chars and sum(c.isalpha() for c in paragraph) > 0.7 * len(paragraph):
                candidates.append(paragraph)
    rng.shuffle(candidates)
    return candidates[:count]


def parse(reply: str):
    q = re.search(r"Question:\s*(.+)", reply)
    a = re.search(r"Answer:\s*(.+)", reply)
    if not q or not a:
        return None
    return q.group(1).strip(), a.group(1).strip().strip('"')


def extractive(answer: str, passage: str) -> bool:
    words = re.findall(r"\w+", answer.lower())
    text = set(re.findall(r"\w+", passage.lower()))
    return 1 <= len(words) <= 30 and sum(w in text for w in words) >= 0.8 * len(words)


@torch.no_grad()
def make_qa(model_dir: str, documents: list[str], count: int, seed: int, out_path: str) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kept = tried = 0
    with open(out_path, "w") as out:
        for passage in tqdm(passages(documents, count, seed), desc="questions"):
            tried += 1
            messages = [{"role": "user", "content": PROMPT.format(passage=passage)}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
            reply_ids = model.generate(ids, max_new_tokens=64, do_sample=False)[0, ids.shape[1] :]
            pair = parse(tokenizer.decode(reply_ids, skip_special_tokens=True))
            if pair and pair[0].endswith("?") and extractive(pair[1], passage):
                out.write(json.dumps({"input": passage, "prompt": pair[0], "answer": pair[1]}) + "\n")
                kept += 1
    return {"passages": tried, "kept": kept}
