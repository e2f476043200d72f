"""The icae.v1 API passes buf's STANDARD lint (exceptions justified in proto/buf.yaml) and
stays wire- and JSON-compatible with the frozen v1 surface (proto/v1-frozen.binpb): fields
and RPCs may be added, none renamed, renumbered, retyped or removed."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

PROTO = ROOT / "proto"
FROZEN = PROTO / "v1-frozen.binpb"


def buf() -> str:
    path = (
        Path(os.environ.get("ICAE_HOME", Path.home() / ".cache/icae")) / "buf/node_modules/.bin/buf"
    )
    if not path.exists():
        pytest.fail(f"buf is missing at {path}: run scripts/setup.sh (step api_tools)")
    return str(path)


def run_buf(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [buf(), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_api_passes_the_standard_lint():
    proc = run_buf("lint", ".", cwd=PROTO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_api_is_compatible_with_the_frozen_v1():
    proc = run_buf("breaking", ".", "--against", FROZEN, cwd=PROTO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_breaking_check_catches_a_renamed_field(tmp_path):
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy, ignore=shutil.ignore_patterns("src", "*.rs", "Cargo.toml"))
    api = copy / "icae" / "v1" / "icae.proto"
    text = api.read_text()
    assert "google.protobuf.Duration ttl = " in text
    api.write_text(
        text.replace("google.protobuf.Duration ttl = ", "google.protobuf.Duration lifetime = ")
    )
    proc = run_buf("breaking", ".", "--against", FROZEN, cwd=copy)
    assert proc.returncode != 0 and '"ttl"' in proc.stdout, proc.stdout + proc.stderr


def test_the_breaking_check_catches_a_reused_number(tmp_path):
    """The numbers and names of the fields that became Timestamps and Durations are
    reserved: a field that took one back would be read wrongly by a client built from an
    older definition."""
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy, ignore=shutil.ignore_patterns("src", "*.rs", "Cargo.toml"))
    api = copy / "icae" / "v1" / "icae.proto"
    text = api.read_text()
    reserved = '  reserved 6;\n  reserved "expires_at_unix";\n'
    assert reserved in text
    api.write_text(text.replace(reserved, "  int64 expires_at_unix = 6;\n"))
    proc = run_buf("breaking", ".", "--against", FROZEN, cwd=copy)
    assert proc.returncode != 0 and "expires_at_unix" in proc.stdout, proc.stdout + proc.stderr
