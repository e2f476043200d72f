#!/usr/bin/env bash
# Profile any command (typically an icae-bench run) with perf and group the samples by kind
# of work: matrix products, attention, elementwise ops, OpenMP waiting, memory, libtorch's
# own bookkeeping. Needs `perf` (Debian: linux-perf) and permission to sample the process.
#
#   scripts/profile.sh target/release/icae-bench decode --model "$ICAE_MODEL_DIR" ...
set -euo pipefail
source "$(dirname "$0")/env.sh"
if ! command -v perf > /dev/null; then
  echo "profile.sh: perf is not installed (Debian: apt-get install linux-perf)" >&2
  exit 1
fi
data="$(mktemp -t icae-perf.XXXXXX)"
trap 'rm -f "$data"' EXIT
# cpu-clock works in VMs without hardware counters; 999 Hz keeps the overhead small.
perf record -q -e cpu-clock -F 999 -o "$data" -- "$@"
perf script -i "$data" -F ip,sym,dso 2> /dev/null | python3 "$(dirname "$0")/bench/perf_categories.py"
