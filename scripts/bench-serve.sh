#!/usr/bin/env bash
# Service benchmarks (DESIGN.md §9) against real services on loopback: time to first token
# and latency with slots vs the full text, aggregate tokens/s at N streams vs 1, bytes
# stored vs the KV cache, and gRPC + Redis overhead as a share of model time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
source scripts/env.sh
source scripts/lib/services.sh
start_services
target/release/icae bench serve --encoder "$ENCODER_URL" --decoder "$DECODER_URL" --data examples/pwc_dev.jsonl "$@"
