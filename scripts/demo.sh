#!/usr/bin/env bash
# Set up everything, then run the main job: compress the example article with the default
# model, reconstruct it and answer its questions from the slots.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
exec target/release/icae demo --model "$ICAE_MODEL_DIR" --adapter "$ICAE_DEFAULT_ADAPTER" --data examples/pwc_dev.jsonl "$@"
