#!/usr/bin/env bash
# Set up everything, then run the main job: start redis-server, encoder-svc and decoder-svc
# on free loopback ports with the default model, compress the example article, reconstruct
# it and answer its questions from the slots and from the full text, then stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port); encoder_port=$(free_port); decoder_port=$(free_port)

echo "==> redis-server on 127.0.0.1:$redis_port"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --daemonize yes --pidfile "$work/redis.pid" >/dev/null
common=(--model "$ICAE_MODEL_DIR" --adapter "$ICAE_DEFAULT_ADAPTER" --redis-url "redis://127.0.0.1:$redis_port" --host 127.0.0.1)
echo "==> encoder-svc on 127.0.0.1:$encoder_port, decoder-svc on 127.0.0.1:$decoder_port (logs in $work)"
target/release/encoder-svc "${common[@]}" --port "$encoder_port" 2>"$work/encoder.log" &
pids+=($!)
target/release/decoder-svc "${common[@]}" --port "$decoder_port" 2>"$work/decoder.log" &
pids+=($!)

for url in "http://127.0.0.1:$encoder_port" "http://127.0.0.1:$decoder_port"; do
  kind=--encoder; [[ $url == *":$decoder_port" ]] && kind=--decoder
  for _ in $(seq 1 600); do
    target/release/icae client info "$kind" "$url" --timeout-seconds 2 >/dev/null 2>&1 && break
    sleep 0.2
  done
done

target/release/icae demo --encoder "http://127.0.0.1:$encoder_port" --decoder "http://127.0.0.1:$decoder_port" \
  --data examples/pwc_dev.jsonl "$@"
