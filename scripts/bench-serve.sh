#!/usr/bin/env bash
# Service benchmarks (DESIGN.md §9) against real services on loopback: time to first token
# and latency with slots vs the full text per context length, aggregate tokens/s at N
# streams vs 1, bytes stored vs the KV cache, and gRPC + Redis overhead as a share of model
# time.
#
#   scripts/bench-serve.sh [--dtype f32|bf16|auto] [icae-bench serve flags...]
#   e.g. scripts/bench-serve.sh --dtype bf16 --context-tokens 512,2048 --streams 1,4,8,16 --json
#
# --dtype goes to the services this script starts (the client reads it back from their Info
# and reports it); every other flag goes to `icae-bench serve` (see `icae-bench serve --help`).
# ICAE_BENCH_SKIP_SETUP=1 skips scripts/setup.sh (where the set-up is known to be done);
# ICAE_BENCH_DRY_RUN=1 prints the two command lines instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."

service_flags=()
bench_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dtype)
      [ $# -ge 2 ] || { echo "--dtype needs a value (f32, bf16 or auto)" >&2; exit 2; }
      service_flags+=(--dtype "$2"); shift 2 ;;
    --dtype=*) service_flags+=(--dtype "${1#--dtype=}"); shift ;;
    *) bench_flags+=("$1"); shift ;;
  esac
done

if [ "${ICAE_BENCH_DRY_RUN:-0}" = 1 ]; then
  echo "services: ${service_flags[*]}"
  echo "bench: --data examples/pwc_dev.jsonl ${bench_flags[*]}"
  exit 0
fi
if [ "${ICAE_BENCH_SKIP_SETUP:-0}" != 1 ]; then
  scripts/setup.sh >/dev/null
fi
source scripts/env.sh
source scripts/lib/services.sh
start_services "${service_flags[@]}" >&2
target/release/icae-bench serve --encoder "$ENCODER_URL" --decoder "$DECODER_URL" \
  --data examples/pwc_dev.jsonl "${bench_flags[@]}"
