#!/usr/bin/env bash
# Set up everything, then run the main job: start redis-server, encoder-svc and decoder-svc
# on free loopback ports with the default model, compress the example article, reconstruct
# it and answer its questions from the slots and from the full text, then stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
source scripts/lib/services.sh
start_services
target/release/icae demo --encoder "$ENCODER_URL" --decoder "$DECODER_URL" --data examples/pwc_dev.jsonl "$@"
