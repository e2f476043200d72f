# The default model's GGUF in two pieces that each fit one call to the borrowed GPU machine
# (64 MiB of working tree per call), and joined again there. Used by scripts/train-gpu.sh and
# scripts/gpu-check.sh; sourced, with PIECE_BYTES set by the caller.

# split_gguf_in_two GGUF PACK: PACK/piece-1/gguf.part-00; PACK/piece-2/gguf.part-01, the
# pure-Python `gguf` package (transformers needs it to read GGUF; the GPU image may lack it)
# and a MANIFEST (name and checksum, also copied into piece-1).
split_gguf_in_two() {
  local gguf="$1" pack="$2"
  rm -rf "$pack" && mkdir -p "$pack/piece-1" "$pack/piece-2"
  split -b "$PIECE_BYTES" -d -a 2 "$gguf" "$pack/gguf.part-"
  local parts=("$pack"/gguf.part-*)
  if [ "${#parts[@]}" -gt 2 ]; then
    echo "error: $gguf needs ${#parts[@]} pieces; this script ships two" >&2
    exit 1
  fi
  mv "$pack/gguf.part-00" "$pack/piece-1/"
  [ -f "$pack/gguf.part-01" ] && mv "$pack/gguf.part-01" "$pack/piece-2/"
  local gguf_py
  gguf_py="$(python -c 'import gguf, os; print(os.path.dirname(gguf.__file__))')"
  mkdir -p "$pack/piece-2/site" && cp -r "$gguf_py" "$pack/piece-2/site/gguf"
  rm -rf "$pack/piece-2/site/gguf/__pycache__"
  {
    echo "gguf_name=$(basename "$gguf")"
    echo "gguf_sha256=$(sha256sum "$gguf" | cut -d' ' -f1)"
  } > "$pack/piece-2/MANIFEST"
  cp "$pack/piece-2/MANIFEST" "$pack/piece-1/MANIFEST"
}

# check_piece_sizes PACK: each piece must fit one call (63 MiB leaves room for the script).
check_piece_sizes() {
  local piece bytes
  for piece in "$1"/piece-*; do
    bytes=$(du -sb "$piece" | cut -f1)
    if [ "$bytes" -gt $((63 * 1024 * 1024)) ]; then
      echo "error: $piece is $bytes bytes, over what one call carries" >&2
      exit 1
    fi
  done
  du -sh "$1"/piece-*
}

# join_gguf PART1 PART2 MANIFEST MODEL: the two parts joined into MODEL, checked against
# the MANIFEST's checksum (exits on a mismatch).
join_gguf() {
  local p1="$1" p2="$2" manifest="$3" model="$4"
  cat "$p1" "$p2" > "$model.tmp"
  # shellcheck source=/dev/null
  source "$manifest"
  if [ "$(sha256sum "$model.tmp" | cut -d' ' -f1)" != "$gguf_sha256" ]; then
    echo "error: the reassembled GGUF does not match $gguf_name's checksum" >&2
    rm -f "$model.tmp"
    exit 1
  fi
  mv "$model.tmp" "$model"
}
