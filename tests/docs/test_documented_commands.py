"""Every command line in the markdown files' shell examples that runs one of the project's
programs (icae, icae-bench, encoder-svc, decoder-svc, icae-train) names subcommands and
flags that program has: each is checked against the program's own `--help`."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import pytest
from test_links import markdown_files

from conftest import ROOT

RUST_PROGRAMS = ("icae", "icae-bench", "encoder-svc", "decoder-svc")
PROGRAMS = (*RUST_PROGRAMS, "icae-train")
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# clap lists `  -p, --port <PORT>`, argparse `  --port PORT` or `  -p PORT, --port PORT`.
FLAG = re.compile(r"^\s+(?:-\w(?: \S+)?, )?(--[a-z][a-z0-9-]*)", re.MULTILINE)


def executable(program: str) -> str | None:
    if program in RUST_PROGRAMS:
        path = ROOT / "target" / "release" / program
        return str(path) if path.exists() else None
    return shutil.which(program)


@functools.cache
def help_text(command: tuple[str, ...]) -> str:
    path = executable(command[0])
    if path is None:
        pytest.skip(f"{command[0]} is not built or installed")
    proc = subprocess.run(
        [path, *command[1:], "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{' '.join(command)} --help: {proc.stderr[-500:]}"
    return proc.stdout


def subcommands(help_: str) -> set[str]:
    """clap's `Commands:` section, or argparse's `{a,b,c}`."""
    clap = re.search(r"^Commands:\n((?:  .*\n)+)", help_, re.MULTILINE)
    if clap:
        return {line.split()[0] for line in clap.group(1).splitlines() if line.strip()}
    argparse = re.search(r"\{([a-z0-9,-]+)\}", help_)
    return set(argparse.group(1).split(",")) if argparse else set()


def flags(help_: str) -> set[str]:
    return set(FLAG.findall(help_)) | {"--help", "--version"}


def command_lines(text: str) -> list[str]:
    """The shell lines of the text's code blocks, continuations joined, split at `&&`,
    `||`, `;` and `|`."""
    lines = []
    for block in SHELL_BLOCK.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            lines += [part.strip() for part in re.split(r"&&|\|\||;|\|", line) if part.strip()]
    return lines


def program_at(token: str) -> str | None:
    """The program a word runs: its name alone or at the end of a path."""
    if token.startswith("-") or "=" in token:
        return None
    name = token.rsplit("/", 1)[-1]
    return name if name in PROGRAMS else None


# Commands that run the command after them: `nice -n 19 icae-train ...`.
WRAPPERS = {"nice": 2, "timeout": 1, "time": 0, "nohup": 0, "exec": 0, "env": 0}


def invocation(line: str) -> tuple[str, list[str]] | None:
    """(program, its arguments) when the line runs one of ours: as its command, after
    environment assignments and wrappers, or after a `--` (`kubectl exec ... -- icae`)."""
    words = line.split()
    starts = [0] + [i + 1 for i, word in enumerate(words) if word == "--"]
    for i in starts:
        while i < len(words):
            word = words[i]
            if re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", word):
                i += 1
            elif word in WRAPPERS:
                i += 1 + WRAPPERS[word]
            elif word.endswith("profile.sh"):
                i += 1
            else:
                break
        if i < len(words) and (program := program_at(words[i])):
            return program, words[i + 1 :]
    return None


def mistakes(line: str) -> list[str]:
    found = invocation(line)
    if found is None:
        return []
    program, rest = found
    command = (program,)
    while rest and not rest[0].startswith("-") and rest[0] in subcommands(help_text(command)):
        command += (rest.pop(0),)
    known = flags(help_text(command))
    wrong = []
    for word in rest:
        if word == "--":
            break
        flag = re.match(r"--[a-z][a-z0-9-]*", word)
        if flag and flag.group(0) not in known:
            wrong.append(f"{' '.join(command)} has no {flag.group(0)}")
    return wrong


def test_documented_commands_use_existing_subcommands_and_flags():
    found = {}
    checked = 0
    for path in markdown_files():
        for line in command_lines(path.read_text()):
            checked += invocation(line) is not None
            if problems := mistakes(line):
                found.setdefault(str(path.relative_to(ROOT)), []).append((line, problems))
    assert checked > 20, "the documents' commands were not found"
    assert found == {}


def test_a_wrong_flag_is_found():
    text = "```bash\ntarget/release/icae-bench decode --batchez 1 \\\n    --repeats 2\n```\n"
    (line,) = command_lines(text)
    assert mistakes(line) == ["icae-bench decode has no --batchez"]
    assert mistakes(line.replace("--batchez", "--batches")) == []
