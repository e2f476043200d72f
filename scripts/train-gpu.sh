#!/usr/bin/env bash
# Pretrain ICAE adapters on the machine this runs on: on its CUDA GPUs (the frozen base in
# bf16, the trained weights in f32) when it has any, else on its CPU (f32). Each recipe
# trains in its own run directory OUT/RECIPE; the same command run again resumes every run
# from its last checkpoint. See docs/gpu-training.md.
#
#   scripts/train-gpu.sh [--model DIR|FILE.gguf] [--corpus DIR | --tokens FILE.npz]
#                        [--out DIR] [--recipes NAME[,NAME...]] [--steps N]
#                        [--max-minutes M] [--device auto|cuda|cpu] [--processes N]
#                        [-- extra icae-train pretrain flags]
#
#   --model      the base model: an HF directory (default $ICAE_MODEL_DIR, as imported by
#                scripts/setup.sh) or the GGUF file it was imported from (same weights;
#                needs the `gguf` Python package and --tokens; no adapter is exported)
#   --corpus     a corpus directory with train.jsonl (default $ICAE_HOME/data/corpus, built
#                with `icae-train build-corpus` when missing); tokenized once into
#                OUT/tokens.npz
#   --tokens     an already tokenized corpus (`icae-train tokenize`) instead of --corpus
#   --out        where the runs go (default training/runs/gpu)
#   --recipes    comma-separated (default continue):
#                  continue       the committed default adapter, trained further (seed 5,
#                                 one lr of 2e-4 for LoRA, memory tokens and projector)
#                  continue-seg4  the same on windows of 1-4 whole segments
#                  fresh-qv       a fresh adapter, LoRA r16 on q and v at 1e-3 and the slot
#                                 projector (the recipe of the committed default)
#                  fresh-all      the same with LoRA on all seven projections at 5e-4
#                several recipes train side by side, each on its own GPU (round robin)
#   --steps      the length of the cosine schedule (default: the run's own when it resumes,
#                else 20000)
#   --max-minutes  end this invocation with a checkpoint after M minutes (run again to go on)
#   --device     auto (default): cuda when torch sees a GPU, else cpu
#   --processes  data-parallel processes for one recipe (default: every visible GPU, one on
#                a CPU), launched with torch.distributed.run (torchrun)
#   after --     any `icae-train pretrain` flag; it wins over the recipe's (e.g. --seed 6,
#                --batch-windows 16, --stop-after 100)
#
# Outputs per recipe: OUT/RECIPE/{checkpoint/, metrics.jsonl, loss.png, run.json, train.log}
# and OUT/RECIPE/adapter (exported from the latest checkpoint, LoRA in bf16). Environment:
# ICAE_PYTHON (default python3) with torch, transformers, peft and accelerate.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ICAE_PYTHON:-python3}"

usage() {
  sed -n '2,39p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

# The recipes share scripts/lib/long_run_recipe.sh's schedule (AE only, 128-token windows,
# warm-up then cosine, --cpu-autocast auto); on a GPU the batch is 32 windows a step. The
# data stream is a function of (seed, step), so the same flags continue the same run.
# shellcheck source=lib/long_run_recipe.sh
source "$ROOT/scripts/lib/long_run_recipe.sh"
ALL_PROJECTIONS=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
GPU_BATCH=(--batch-windows 32 --checkpoint-every 200)
RECIPES="continue, continue-seg4, fresh-qv, fresh-all"

# recipe_flags NAME: RECIPE_FLAGS = the pretraining flags of recipe NAME.
recipe_flags() {
  case "$1" in
    continue)
      # Seed 5: not one the default adapter was trained on (it would replay those windows).
      RECIPE_FLAGS=("${CONTINUE_RECIPE[@]}" --init-adapter "$ROOT/models/smollm2-135m-icae"
        --seed 5 --lr 2e-4 --memory-lr 2e-4 --projector-lr 2e-4) ;;
    continue-seg4)
      recipe_flags continue
      RECIPE_FLAGS+=(--max-segments 4) ;;
    fresh-qv) RECIPE_FLAGS=("${LONG_RUN_RECIPE[@]}") ;;
    fresh-all)
      RECIPE_FLAGS=("${LONG_RUN_RECIPE[@]}" --target-modules "$ALL_PROJECTIONS" --lr 5e-4) ;;
    *)
      echo "error: unknown recipe '$1' (known: $RECIPES)" >&2
      exit 2
      ;;
  esac
}

# json_field FILE EXPR: a value of a JSON file (EXPR indexes `d`, e.g. 'd["step"]').
json_field() {
  "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# log_tail LOG N: the last N lines of a log written through progress bars (\r-separated).
log_tail() {
  tr '\r' '\n' <"$1" | grep -v '^\s*$' | tail -n "$2"
}

model="" corpus="" tokens="" out="" recipes=continue steps="" minutes="" device=auto
processes=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --corpus) corpus="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --recipes) recipes="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --max-minutes) minutes="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --processes) processes="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) usage 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage ;;
  esac
done
names=()
IFS=, read -r -a names <<<"$recipes"
[ "${#names[@]}" -gt 0 ] || usage
for name in "${names[@]}"; do recipe_flags "$name"; done # unknown names fail here

# shellcheck source=env.sh
source "$ROOT/scripts/env.sh"
export PYTHONPATH="$ROOT/training${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
model="${model:-$ICAE_MODEL_DIR}"
out="${out:-$ROOT/training/runs/gpu}"
gguf=false
case "$model" in *.gguf) gguf=true ;; esac
if [ ! -e "$model" ]; then
  echo "error: no base model at $model: give --model DIR or --model FILE.gguf" \
    "(scripts/setup.sh imports the default into \$ICAE_MODEL_DIR)" >&2
  exit 2
fi

# The machine: the device, and the GPUs the runs may use.
read -r found gpu_count < <("$PY" -c 'import torch; n = torch.cuda.device_count(); print("cuda" if n else "cpu", n)') || true
[ -n "${found:-}" ] || { echo "error: $PY cannot import torch" >&2; exit 2; }
[ "$device" = auto ] && device="$found"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
gpus=()
if [ "$device" = cuda ]; then
  [ "$gpu_count" -gt 0 ] || { echo "error: --device cuda, but torch sees no GPU" >&2; exit 2; }
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
  else
    mapfile -t gpus < <(seq 0 $((gpu_count - 1)))
  fi
fi
if [ -z "$processes" ]; then
  processes=1
  [ "$device" = cuda ] && [ "${#names[@]}" = 1 ] && processes="${#gpus[@]}"
fi
if [ "$processes" -gt 1 ] && [ "${#names[@]}" -gt 1 ]; then
  echo "error: --processes $processes trains one recipe on several processes; give one recipe" >&2
  exit 2
fi

# The corpus, tokenized once for every recipe (and every process).
mkdir -p "$out"
if [ -z "$tokens" ]; then
  tokens="$out/tokens.npz"
  if [ ! -f "$tokens" ]; then
    if [ "$gguf" = true ]; then
      echo "error: a GGUF base has no tokenizer directory: tokenize the corpus where the model" \
        "directory is (icae-train tokenize --model DIR --corpus CORPUS --out FILE.npz) and" \
        "pass --tokens FILE.npz" >&2
      exit 2
    fi
    corpus="${corpus:-$ICAE_HOME/data/corpus}"
    if [ ! -f "$corpus/train.jsonl" ]; then
      echo "building the corpus in $corpus (once)"
      "$PY" -m icae_train.cli build-corpus --out "$corpus"
    fi
    echo "tokenizing $corpus/train.jsonl into $tokens (once)"
    "$PY" -m icae_train.cli tokenize --model "$model" --corpus "$corpus" --out "$tokens.tmp"
    mv "$tokens.tmp" "$tokens"
  fi
fi

# launch NAME GPU: train recipe NAME (on GPU, when one is named; on `processes` processes).
launch() {
  local name="$1" gpu="$2" run="$out/$1" total="$steps"
  recipe_flags "$name"
  [ "$device" = cuda ] && RECIPE_FLAGS+=("${GPU_BATCH[@]}")
  # A run that resumes keeps its schedule's length unless --steps says otherwise.
  if [ -z "$total" ] && [ -f "$run/checkpoint/progress.json" ]; then
    total="$(json_field "$run/run.json" 'd["train"]["steps"]')"
  fi
  [ -n "$total" ] && RECIPE_FLAGS+=(--steps "$total")
  [ -n "$minutes" ] && RECIPE_FLAGS+=(--max-minutes "$minutes")
  local cmd=("$PY" -m icae_train.cli)
  if [ "$processes" -gt 1 ]; then
    cmd=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$processes" -m icae_train.cli)
  fi
  local pin=()
  [ -n "$gpu" ] && pin=(CUDA_VISIBLE_DEVICES="$gpu")
  mkdir -p "$run"
  echo "$name: $run on $device${gpu:+ $gpu}, $processes process(es)${total:+, $total steps}"
  env "${pin[@]}" "${cmd[@]}" pretrain --model "$model" \
    --device "$device" --tokens "$tokens" --run-dir "$run" --no-export \
    "${RECIPE_FLAGS[@]}" "${extra[@]}"
}

failed=()
if [ "${#names[@]}" = 1 ]; then
  # One recipe: its output on the terminal and in its log. Several processes share the GPUs.
  mkdir -p "$out/${names[0]}"
  launch "${names[0]}" "" 2>&1 | tee -a "$out/${names[0]}/train.log" || failed+=("${names[0]}")
else
  # Several: side by side, recipe i on GPU i (round robin), each into its own log.
  pids=()
  for i in "${!names[@]}"; do
    gpu=""
    [ "${#gpus[@]}" -gt 0 ] && gpu="${gpus[$((i % ${#gpus[@]}))]}"
    mkdir -p "$out/${names[$i]}"
    launch "${names[$i]}" "$gpu" >>"$out/${names[$i]}/train.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!names[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
  done
  for name in "${names[@]}"; do
    echo "--- $name ($out/$name/train.log)"
    log_tail "$out/$name/train.log" 5
  done
fi

# The adapter of each run's latest checkpoint (needs the model directory, not a GGUF).
for name in "${names[@]}"; do
  run="$out/$name"
  [ -f "$run/checkpoint/progress.json" ] || continue
  step="$(json_field "$run/checkpoint/progress.json" 'd["step"]')"
  total="$(json_field "$run/run.json" 'd["train"]["steps"]')"
  loss="$(json_field "$run/checkpoint/progress.json" \
    'round(sum(h["loss"] for h in d["history"][-20:]) / len(d["history"][-20:]), 4)')"
  if [ "$gguf" = true ]; then
    echo "$name: step $step of $total, loss $loss (mean of the last 20 steps);" \
      "export it with: icae-train export --model DIR --run-dir $run --out ADAPTER --lora-dtype bf16"
    continue
  fi
  "$PY" -m icae_train.cli export --model "$model" --run-dir "$run" --out "$run/adapter" \
    --lora-dtype bf16 \
    --notes "step $step of $total of recipe $name (scripts/train-gpu.sh)" \
    >/dev/null 2>>"$run/train.log" || { echo "error: exporting $run failed (see its train.log)" >&2; exit 1; }
  echo "$name: step $step of $total, loss $loss (mean of the last 20 steps), adapter $run/adapter"
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "error: ${failed[*]} failed (see their train.log)" >&2
  exit 1
fi
