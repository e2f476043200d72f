#!/usr/bin/env bash
# Set up everything, then run the whole test suite: formatting and lints (Rust and Python),
# the Rust tests, and the Python suites (parity with HF transformers + peft, end-to-end,
# training, deployment: Dockerfiles and the Helm chart).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

echo "==> ruff (Python lint and format)"
ruff check training clients tests scripts/bench
ruff format --check training clients tests scripts/bench
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --release --workspace --all-targets --locked --quiet -- -D warnings
echo "==> cargo test"
cargo test --release --workspace --locked
echo "==> pytest"
ICAE_BIN="$PWD/target/release/icae" python -m pytest tests -q -p no:cacheprovider
echo "==> all tests passed"
