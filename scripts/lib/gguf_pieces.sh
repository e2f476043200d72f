# The default model's GGUF in two pieces that each fit one call to the borrowed GPU machine,
# and joined again there. A call carries 64 MiB in all, this checkout's working tree
# included, so what a piece may hold depends on the tree (with the committed default adapter
# about 11 MiB). Used by scripts/train-gpu.sh and scripts/gpu-check.sh.

CALL_BYTES=$((64 * 1024 * 1024))

# piece_budget ROOT: the bytes one carried piece may hold: a call's 64 MiB less the working
# tree that travels with it (tracked and untracked-not-ignored files) and a 1 MiB margin.
piece_budget() {
  local tree
  tree=$(cd "$1" && git ls-files -z --cached --others --exclude-standard |
    xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
  echo $((CALL_BYTES - tree - 1024 * 1024))
}

# split_gguf_in_two GGUF PACK BYTES: PACK/piece-1/gguf.part-00 (the first BYTES of the GGUF
# less 64 KiB, room for the MANIFEST and what du counts for folders) and
# PACK/piece-2/gguf.part-01 (the rest), each with a MANIFEST (name and checksum).
split_gguf_in_two() {
  local gguf="$1" pack="$2" first=$(($3 - 65536))
  local total
  total=$(stat -c %s "$gguf")
  if [ "$first" -le 0 ] || [ $((total - first)) -gt "$first" ]; then
    echo "error: $gguf ($total bytes) does not fit two pieces of $first bytes" >&2
    exit 1
  fi
  rm -rf "$pack" && mkdir -p "$pack/piece-1" "$pack/piece-2"
  head -c "$first" "$gguf" > "$pack/piece-1/gguf.part-00"
  tail -c +$((first + 1)) "$gguf" > "$pack/piece-2/gguf.part-01"
  {
    echo "gguf_name=$(basename "$gguf")"
    echo "gguf_sha256=$(sha256sum "$gguf" | cut -d' ' -f1)"
  } > "$pack/piece-2/MANIFEST"
  cp "$pack/piece-2/MANIFEST" "$pack/piece-1/MANIFEST"
}

# copy_gguf_package DIR: the pure-Python `gguf` package into DIR/gguf (transformers needs it
# to read GGUF; the GPU image lacks it), with its dist-info: transformers reads the package's
# version from its metadata, and without it refuses the GGUF ("Invalid version: 'N/A'", as
# the first GPU call found).
copy_gguf_package() {
  local gguf_py
  gguf_py="$(python -c 'import gguf, os; print(os.path.dirname(gguf.__file__))')"
  mkdir -p "$1" && rm -rf "$1"/gguf "$1"/gguf-*.dist-info
  cp -r "$gguf_py" "$1/gguf" && cp -r "$(dirname "$gguf_py")"/gguf-*.dist-info "$1/"
  rm -rf "$1/gguf/__pycache__"
}

# check_piece_sizes PACK LIMIT: each piece must hold at most LIMIT bytes.
check_piece_sizes() {
  local piece bytes
  for piece in "$1"/piece-*; do
    bytes=$(du -sb "$piece" | cut -f1)
    if [ "$bytes" -gt "$2" ]; then
      echo "error: $piece is $bytes bytes, over the $2 one call carries beside the tree" >&2
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
