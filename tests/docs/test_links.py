"""Every relative link in the repository's markdown files points at a file or folder that
exists (the part before any #anchor)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# [text](target) and [text]: target, outside code spans; the target ends at a space or ")".
INLINE = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def markdown_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in listed]


def relative_links(text: str) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = INLINE.findall(text) + REFERENCE.findall(text)
    external = ("http://", "https://", "mailto:", "#", "dns:", "grpc://")
    return [t for t in targets if not t.startswith(external)]


def test_every_relative_link_resolves():
    files = markdown_files()
    assert len(files) > 5, files
    broken, checked = [], 0
    for path in files:
        for target in relative_links(path.read_text(encoding="utf-8")):
            checked += 1
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)
    assert checked > 20, f"only {checked} relative links found: is the pattern right?"


def test_the_checker_sees_links_and_skips_code_and_urls():
    text = (
        "See [deploy](docs/deploy.md#helm) and [x][ref].\n"
        "[ref]: ../shared/x.md\n"
        "`[not](a/link.md)` and https://example.com [web](https://example.com)\n"
        "```\n[fenced](fenced.md)\n```\n"
    )
    assert relative_links(text) == ["docs/deploy.md#helm", "../shared/x.md"]
