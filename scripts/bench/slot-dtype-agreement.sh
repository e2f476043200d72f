#!/usr/bin/env bash
# Greedy agreement of bf16-stored slots with f32-stored slots: compress each
# distinct document of a PwC jsonl file twice (--slot-dtype f32 and bf16, same f32 model),
# decode greedily from each (autoencode, continue, and answer for every question), and print
# per output the tokens identical up to the first divergence out of the f32 output's length.
# Usage: scripts/bench/slot-dtype-agreement.sh [file.jsonl] [max_new_tokens] [adapter]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
file="${1:-examples/pwc_dev.jsonl}"
steps="${2:-32}"
adapter="${3:-$ICAE_DEFAULT_ADAPTER}"
icae=target/release/icae
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
common=(--model "$ICAE_MODEL_DIR" --adapter "$adapter" --device cpu --dtype f32)

same_prefix() { # two JSON outputs of `icae generate --json`: "<identical prefix> <f32 length>"
  jq -n --slurpfile a "$1" --slurpfile b "$2" '
    [$a[0].token_ids, $b[0].token_ids] as [$x, $y]
    | ([range(0; [$x, $y] | map(length) | min) | select($x[.] != $y[.])] | first // ([$x, $y] | map(length) | min)) as $n
    | "\($n) \($x | length)"' -r
}

total_same=0 total=0
docs=$(jq -s 'map(.input) | unique | length' "$file")
for doc in $(seq 1 "$docs"); do
  nth='(map(.input) | unique | .[$i - 1]) as $text'
  jq -s -j --argjson i "$doc" "$nth | \$text" "$file" > "$work/doc.txt"
  for dtype in f32 bf16; do
    "$icae" compress "${common[@]}" --slot-dtype "$dtype" --text-file "$work/doc.txt" \
      --out "$work/$dtype.safetensors" --json 2>/dev/null > "$work/$dtype.compress.json"
  done
  run() { # name mode [prompt]
    local name=$1 mode=$2 prompt=${3:-}
    for dtype in f32 bf16; do
      "$icae" generate "${common[@]}" --slots "$work/$dtype.safetensors" --mode "$mode" \
        ${prompt:+--prompt "$prompt"} --greedy --max-new-tokens "$steps" --json 2>/dev/null \
        | tail -1 > "$work/$dtype.out.json"
    done
    if [ ! -s "$work/f32.out.json" ] || [ ! -s "$work/bf16.out.json" ]; then
      echo "doc $doc $name: generation failed (rerun it by hand to see why)"
      return
    fi
    read -r same len < <(same_prefix "$work/f32.out.json" "$work/bf16.out.json")
    total_same=$((total_same + same)) total=$((total + len))
    echo "doc $doc $name: $same/$len identical before the first divergence"
  }
  run autoencode autoencode
  run continue continue
  q=0
  while IFS= read -r prompt; do
    q=$((q + 1))
    run "answer $q" answer "$prompt"
  done < <(jq -s -r --argjson i "$doc" "$nth | .[] | select(.input == \$text) | .prompt" "$file")
  bytes=$(jq -r .bytes "$work/f32.compress.json")/$(jq -r .bytes "$work/bf16.compress.json")
  echo "doc $doc: slot value bytes f32/bf16 = $bytes"
done
echo "overall: $total_same/$total tokens identical before the first divergence"
