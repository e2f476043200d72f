# Start redis-server, encoder-svc and decoder-svc on free loopback ports for the current
# shell; they are stopped (by PID) when the shell exits. Source after scripts/env.sh.
# Sets ENCODER_URL and DECODER_URL.

_svc_work=$(mktemp -d)
_svc_pids=()
_svc_cleanup() {
  for pid in "${_svc_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${_svc_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$_svc_work/redis.pid" ] && kill "$(cat "$_svc_work/redis.pid")" 2>/dev/null || true
  rm -rf "$_svc_work"
}
trap _svc_cleanup EXIT

_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_services [extra flags for both services...], e.g. start_services --dtype bf16
start_services() {
  local redis_port encoder_port decoder_port
  redis_port=$(_free_port); encoder_port=$(_free_port); decoder_port=$(_free_port)
  echo "==> redis-server on 127.0.0.1:$redis_port"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$_svc_work" \
    --daemonize yes --pidfile "$_svc_work/redis.pid" >/dev/null
  local common=(--model "$ICAE_MODEL_DIR" --adapter "$ICAE_DEFAULT_ADAPTER"
    --redis-url "redis://127.0.0.1:$redis_port" --host 127.0.0.1
    --metrics-host 127.0.0.1 --metrics-port 0 "$@")
  echo "==> encoder-svc on 127.0.0.1:$encoder_port, decoder-svc on 127.0.0.1:$decoder_port (logs in $_svc_work)"
  target/release/encoder-svc "${common[@]}" --port "$encoder_port" 2>"$_svc_work/encoder.log" &
  _svc_pids+=($!)
  target/release/decoder-svc "${common[@]}" --port "$decoder_port" 2>"$_svc_work/decoder.log" &
  _svc_pids+=($!)
  ENCODER_URL="http://127.0.0.1:$encoder_port"
  DECODER_URL="http://127.0.0.1:$decoder_port"
  local kind url ready
  for kind in encoder decoder; do
    url=$ENCODER_URL; [ "$kind" = decoder ] && url=$DECODER_URL
    ready=no
    for _ in $(seq 1 600); do
      if target/release/icae client info "--$kind" "$url" --timeout-seconds 2 >/dev/null 2>&1; then ready=yes; break; fi
      sleep 0.2
    done
    if [ "$ready" != yes ]; then
      echo "$kind-svc did not start; its log:" >&2
      cat "$_svc_work/$kind.log" >&2
      return 1
    fi
  done
}
