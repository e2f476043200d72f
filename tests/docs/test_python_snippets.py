"""The Python examples in the markdown files parse and use no name they do not define or
import. A file's examples are read in order as one program, as a reader runs them, so a
later one may use what an earlier one made (a client, a handle)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from test_links import markdown_files

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_examples(text: str) -> str:
    return "\n".join(PYTHON_BLOCK.findall(text))


def undefined_names(program: str) -> list[str]:
    """ruff's findings for undefined names and syntax errors, one line each."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    proc = subprocess.run(
        [ruff, "check", "--isolated", "--select", "F821", "--output-format", "concise"]
        + ["--stdin-filename", "examples.py", "-"],
        input=program,
        capture_output=True,
        text=True,
    )
    return [line for line in proc.stdout.splitlines() if line.startswith("examples.py:")]


def test_examples_use_only_names_they_define_or_import():
    found = {}
    for path in markdown_files():
        program = python_examples(path.read_text())
        if program and (problems := undefined_names(program)):
            found[str(path)] = problems
    assert found == {}


def test_a_missing_import_and_a_syntax_error_are_found():
    text = "```python\nchannel = grpc.insecure_channel('x')\n```\n"
    assert any("grpc" in line for line in undefined_names(python_examples(text)))
    assert undefined_names(python_examples("```python\nimport grpc\ngrpc.x(\n```\n"))
    assert undefined_names(python_examples("```python\nimport grpc\ngrpc.x()\n```\n")) == []
