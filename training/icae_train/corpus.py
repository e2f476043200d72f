"""A plain-text corpus from what package managers installed: Debian's /usr/share/doc, the
documentation inside installed PyPI packages (README bodies of METADATA files, .md/.rst/.txt
files) and the docstrings of Python's standard library. Cleaned, deduplicated (documents and
paragraphs), and split into train / held-out by a hash of each document, so the same
machine image always gives the same corpus."""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import site
import sysconfig
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".rst"}
SKIP_NAMES = re.compile(
    r"(changelog|copyright|license|licence|copying|authors|record|requirements|top_level|entry_points|sources|installer|wheel|requested|direct_url|metadata|dependency_links|not-zip-safe|zip-safe)",
    re.I,
)
LICENSE_TEXT = re.compile(
    r"(permission is hereby granted|gnu (lesser )?general public license|apache license"
    r"|redistribution and use in source and binary forms)",
    re.I,
)
MIN_CHARS = 400
MAX_CHARS = 200_000
# Share of non-empty lines that must read like prose (five or more words).
MIN_PROSE_LINES = 0.3


def prose_share(text: str) -> float:
    lines = [line for line in text.split("\n") if line.strip()]
    wordy = sum(len(re.findall(r"[A-Za-z]{2,}", line)) >= 5 for line in lines)
    return wordy / max(1, len(lines))


def clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    kept = []
    for line in text.split("\n"):
        stripped = line.strip()
        letters = sum(c.isalpha() for c in stripped)
        # Drop rules (====, ----), table borders, bare URLs and lines with hardly any words.
        if stripped and (letters < 0.4 * len(stripped) or re.fullmatch(r"https?://\S+", stripped)):
            continue
        kept.append(line.rstrip())
    text = "\n".join(kept)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _read(path: Path) -> str:
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="ignore")


def debian_docs(root: Path = Path("/usr/share/doc")):
    for path in sorted(root.rglob("*")):
        name = path.name.lower()
        inner = Path(name[:-3]) if name.endswith(".gz") else Path(name)
        if not path.is_file() or SKIP_NAMES.search(name):
            continue
        if inner.suffix in TEXT_SUFFIXES or inner.name.startswith("readme"):
            yield f"debian:{path}", _read(path)


def pypi_docs():
    for sp in sorted({*site.getsitepackages()}):
        for path in sorted(Path(sp).rglob("*")):
            if not path.is_file():
                continue
            if path.name == "METADATA" and path.parent.name.endswith(".dist-info"):
                text = path.read_text(errors="ignore")
                body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
                yield f"pypi:{path.parent.name}", body
            elif (
                path.suffix in TEXT_SUFFIXES
                and not SKIP_NAMES.search(path.stem)
                and ".dist-info" not in str(path)
            ):
                yield f"pypi:{path}", path.read_text(errors="ignore")


def stdlib_docstrings():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        docs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    docs.append(doc)
        if docs:
            yield f"stdlib:{path.relative_to(stdlib)}", "\n\n".join(docs)


def build(out: Path, heldout_percent: int = 5) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    seen_docs, seen_paragraphs = set(), set()
    splits = {"train": [], "heldout": []}
    sources = {}
    for generator in (debian_docs(), pypi_docs(), stdlib_docstrings()):
        for source, raw in generator:
            if LICENSE_TEXT.search(raw[:3000]):
                continue
            paragraphs = []
            for paragraph in clean(raw).split("\n\n"):
                key = hashlib.sha256(" ".join(paragraph.lower().split()).encode()).hexdigest()
                if key not in seen_paragraphs:
                    seen_paragraphs.add(key)
                    paragraphs.append(paragraph)
            text = "\n\n".join(paragraphs)[:MAX_CHARS]
            if len(text) < MIN_CHARS or prose_share(text) < MIN_PROSE_LINES:
                continue
            digest = hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()
            if digest in seen_docs:
                continue
            seen_docs.add(digest)
            split = "heldout" if int(digest[:8], 16) % 100 < heldout_percent else "train"
            splits[split].append({"source": source, "text": text})
            kind = source.split(":", 1)[0]
            sources[kind] = sources.get(kind, 0) + 1
    for split, docs in splits.items():
        with open(out / f"{split}.jsonl", "w") as f:
            for doc in docs:
                f.write(json.dumps(doc) + "\n")
    stats = {
        "documents": {k: len(v) for k, v in splits.items()},
        "characters": {k: sum(len(d["text"]) for d in v) for k, v in splits.items()},
        "by_source": sources,
        "heldout_percent": heldout_percent,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats
