"""The README's commands on a fresh machine: scripts/env.sh and scripts/setup.sh must work
under `set -euo pipefail` before anything is installed, decide what is still needed without
doing it (`--plan`), and name the step that failed and how to rerun when one fails.

Nothing here installs or downloads anything: every run points ICAE_HOME at an empty
temporary directory and either plans or fails at the first step that would install.
"""

import os
import subprocess
from pathlib import Path

from conftest import ROOT

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def bare_env(home: Path, path: str = SYSTEM_PATH) -> dict:
    """A fresh machine's environment: nothing of this session's venv, an empty ICAE_HOME."""
    return {"HOME": str(home), "PATH": path, "ICAE_HOME": str(home / "icae")}


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def plan(env: dict) -> dict:
    """`setup.sh --plan` as {step: state}."""
    proc = run(["bash", "scripts/setup.sh", "--plan"], env)
    assert proc.returncode == 0, proc.stderr
    states = {}
    for line in proc.stdout.splitlines():
        state, rest = line.split(maxsplit=1)
        states[rest.split(":")[0]] = state
    return states


def test_env_sh_sources_under_strict_mode_with_an_empty_icae_home(tmp_path):
    script = 'set -euo pipefail; source scripts/env.sh; echo "venv=$ICAE_VENV"'
    proc = run(["bash", "-c", script], bare_env(tmp_path))
    assert proc.returncode == 0, f"env.sh failed on a fresh machine:\n{proc.stderr}"
    assert f"venv={tmp_path}/icae/venv" in proc.stdout
    assert not (tmp_path / "icae").exists(), "sourcing env.sh must not create anything"


def test_the_plan_for_an_empty_icae_home_lists_every_install_step(tmp_path):
    states = plan(bare_env(tmp_path))
    for step in [
        "python_env",
        "training_package",
        "python_client",
        "api_tools",
        "model_import",
        "untrained_adapter",
    ]:
        assert states.get(step) == "needed", states
    assert states.get("rust_build") in ("needed", "check"), states
    assert not (tmp_path / "icae").exists(), "--plan must not install anything"


def test_the_plan_for_this_machine_after_set_up_has_nothing_left():
    # The test command runs setup.sh first, so this machine's ICAE_HOME is complete.
    env = dict(os.environ)
    states = plan(env)
    needed = [step for step, state in states.items() if state == "needed"]
    assert needed == [], f"set-up left steps undone: {states}"


def test_a_failing_step_is_named_with_the_command_to_rerun(tmp_path):
    # A python3 that fails stands in for any broken install step (no network, full disk).
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    stub = stubs / "python3"
    stub.write_text("#!/bin/sh\necho 'simulated failure' >&2\nexit 7\n")
    stub.chmod(0o755)
    env = bare_env(tmp_path, f"{stubs}:{SYSTEM_PATH}")
    states = plan(env)
    assert states.get("system_packages") == "done", (
        "this test needs redis-server and openssl installed (setup.sh installs them)"
    )
    proc = run(["bash", "scripts/setup.sh"], env)
    assert proc.returncode != 0
    assert "setup failed in step 'python_env'" in proc.stderr, proc.stderr
    assert "exit status: 7" in proc.stderr, proc.stderr
    assert "rerun: ICAE_HOME=" in proc.stderr and "./scripts/setup.sh" in proc.stderr


def test_an_unknown_argument_is_refused_by_name(tmp_path):
    proc = run(["bash", "scripts/setup.sh", "--fast"], bare_env(tmp_path))
    assert proc.returncode == 2
    assert "'--fast'" in proc.stderr
