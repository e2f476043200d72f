# Environment shared by every script: source it, don't run it.
# ICAE_HOME holds everything that lives outside the checkout (venv, models, adapters).
export ICAE_HOME="${ICAE_HOME:-$HOME/.cache/icae}"
export ICAE_VENV="$ICAE_HOME/venv"
export ICAE_MODEL_DIR="${ICAE_MODEL_DIR:-$ICAE_HOME/models/smollm2-135m-instruct}"
# tch builds against the venv's PyTorch (torch==2.13.0) and links its libtorch at run time.
export LIBTORCH_USE_PYTORCH=1
export PATH="$ICAE_VENV/bin:$PATH"
export VIRTUAL_ENV="$ICAE_VENV"
# Sourced under `set -euo pipefail` before the venv exists (a fresh machine): nothing here
# may fail when a path is missing, so the glob is expanded by the shell, not by `ls`.
_torch_lib=""
for _candidate in "$ICAE_VENV"/lib/python3*/site-packages/torch/lib; do
  if [ -d "$_candidate" ]; then _torch_lib="$_candidate"; break; fi
done
if [ -n "$_torch_lib" ]; then
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$_torch_lib:"*) ;;
    *) export LD_LIBRARY_PATH="$_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
  esac
fi
unset _torch_lib _candidate
# The deterministic untrained adapter (`icae adapter init`), used for plumbing and tests.
export ICAE_UNTRAINED_ADAPTER="$ICAE_HOME/adapters/untrained-m32"
# The adapter the demo and services use by default: the trained one committed under models/.
_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ICAE_DEFAULT_ADAPTER="${ICAE_DEFAULT_ADAPTER:-$_repo_root/models/smollm2-135m-icae}"
unset _repo_root
