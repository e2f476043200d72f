#!/usr/bin/env bash
# A long pretraining run on the CPU, continued whenever there is machine time.
#
#   scripts/long-run.sh [--sessions N] [--segment-minutes M] [--eval-passages P]
#                       [--long-passages L] [--long-passage-tokens T]
#                       [--questions Q] [--corpus DIR] [--run-dir DIR] [--into DIR]
#                       [--from ADAPTER_DIR|none] [-- extra pretrain flags]
#
# Each session trains for M minutes at the lowest priority (`nice -n 19`) and checkpoints
# (the run resumes exactly where the last session stopped: run it again), then evaluates
# the exported adapter on P held-out passages of 128 tokens (sacrebleu BLEU-4, exact
# prefix, token accuracy), L held-out
# passages of T tokens teacher-forced (several segments: default 10 of 512) and Q PwC dev
# questions (ROUGE-L from slots vs the full context) into RUN/eval/step-S.json, then runs
# `icae-train promote`: the adapter, its EVAL.json and the loss curve replace the committed
# default (--into, models/smollm2-135m-icae) only if its held-out teacher-forced AE loss is
# lower (BLEU is reported beside it: at ≈0 it cannot rank adapters). Commit it then.
#
# By default the run (training/runs/warm-default) continues the committed default adapter
# with CONTINUE_RECIPE; --from none starts a fresh adapter with LONG_RUN_RECIPE (both in
# scripts/lib/long_run_recipe.sh). A new run from the default needs a seed the default was
# not trained on (-- --seed 4), given again on every later session of that run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/long_run_recipe.sh
source "$ROOT/scripts/lib/long_run_recipe.sh"

sessions=1 minutes=45 passages=30 questions=10 long_passages=10 long_tokens=512
corpus=""
run="$ROOT/training/runs/warm-default"
into="$ROOT/models/smollm2-135m-icae"
from="$ROOT/models/smollm2-135m-icae"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sessions) sessions="$2"; shift 2 ;;
    --segment-minutes) minutes="$2"; shift 2 ;;
    --eval-passages) passages="$2"; shift 2 ;;
    --long-passages) long_passages="$2"; shift 2 ;;
    --long-passage-tokens) long_tokens="$2"; shift 2 ;;
    --questions) questions="$2"; shift 2 ;;
    --corpus) corpus="$2"; shift 2 ;;
    --run-dir) run="$2"; shift 2 ;;
    --into) into="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done

# shellcheck source=env.sh
source "$ROOT/scripts/env.sh"
# This checkout's training package, whichever checkout the venv's editable install points
# at (CI's fresh clone reuses this machine's ICAE_HOME and may have been deleted since):
# PYTHONPATH comes before the editable finder, and the shared venv is left alone.
export PYTHONPATH="$ROOT/training${PYTHONPATH:+:$PYTHONPATH}"
corpus="${corpus:-$ICAE_HOME/data/corpus}"
if [ ! -f "$corpus/heldout.jsonl" ]; then
  echo "building the corpus in $corpus (once)"
  icae-train build-corpus --out "$corpus"
fi
if [ "$from" = none ]; then
  recipe=("${LONG_RUN_RECIPE[@]}")
  origin="from a fresh adapter (LONG_RUN_RECIPE)"
else
  # On a resume the checkpoint's weights replace the adapter's: the same run goes on even
  # after the default it started from has been replaced by a promotion of the same shape
  # (one of another shape needs a new run: the resume names the tensors that differ).
  recipe=(--init-adapter "$from" "${CONTINUE_RECIPE[@]}")
  origin="continuing the adapter in ${from#"$ROOT"/} (CONTINUE_RECIPE)"
  # A new run from an adapter with the recipe's seed would replay the windows that adapter
  # was trained on (the stream is a function of seed and step): make the seed a choice.
  seeded=false
  for flag in "${extra[@]}"; do
    case "$flag" in --seed | --seed=*) seeded=true ;; esac
  done
  if [ ! -f "$run/checkpoint/progress.json" ] && [ "$seeded" = false ]; then
    echo "error: $run has no checkpoint, so this starts a new run from $from; give it a" \
      "seed the adapter was not trained on, e.g. -- --seed 4 (its icae_config.json notes" \
      "name the run that made it; the recipe's own is seed 3)" >&2
    exit 2
  fi
fi
mkdir -p "$run/eval"
for session in $(seq 1 "$sessions"); do
  echo "session $session/$sessions: training for $minutes minutes in $run"
  nice -n 19 icae-train pretrain --model "$ICAE_MODEL_DIR" --device cpu --corpus "$corpus" \
    --run-dir "$run" "${recipe[@]}" "${extra[@]}" --max-minutes "$minutes" --no-export
  step="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' \
    "$run/checkpoint/progress.json")"
  # Exported with bf16 LoRA, as the committed default is stored.
  icae-train export --model "$ICAE_MODEL_DIR" --run-dir "$run" --out "$run/adapter" \
    --lora-dtype bf16 --notes "step $step of ${run##*/}, pretrained AE-only by \
scripts/long-run.sh $origin; see docs/training.md and EVAL.json"
  report="$run/eval/step-$step.json"
  nice -n 19 icae-train eval --model "$ICAE_MODEL_DIR" --device cpu --adapter "$run/adapter" \
    --heldout "$corpus/heldout.jsonl" --passages "$passages" --passage-tokens 128 \
    --long-passages "$long_passages" --long-passage-tokens "$long_tokens" \
    --pwc "$ROOT/examples/pwc_dev.jsonl" --questions "$questions" --max-new-tokens 48 \
    --out "$report" >/dev/null
  icae-train promote --adapter "$run/adapter" --eval "$report" --into "$into" \
    --curve "$run/loss.png"
done
