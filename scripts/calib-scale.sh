#!/usr/bin/env bash
# Time and peak memory of calibrated quantization per layer, on synthetic 7B- and 70B-shaped
# checkpoints (scripts/synth_llama.py: real layer shapes, random weights) — the measurements behind
# the extrapolation table in docs/calibration.md.
#
#   bash scripts/calib-scale.sh [SAMPLES] [SEQLEN]      # default 4 × 512; results → $cache/runs/scale/
#
# Runs (each a separate process, measured by /usr/bin/time -v):
#   gptq-7b-4l, gptq-7b-8l   GPTQ int4 g128 (gptq layout): the per-layer cost and whether peak RSS
#                            grows with the number of layers (it should not)
#   stats-70b-4l             the 70B-shaped calibration pass without GPTQ's Hessian (--method mse:
#                            forward + per-channel statistics + a cheap clipping search per layer). GPTQ's own solve on the
#                            28672-wide ffn_down needs ~20 GB of f64 work memory, more than this
#                            24 GB machine has beside the rest; docs/calibration.md extrapolates it
#                            from the measured solves (n³).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${QUANTKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quantkit}
shared=${QUANTKIT_SHARED:-$root/../shared}
bin=${QUANTKIT_BIN:-$root/target/release/quantkit}
py=${PYTHON:-$root/.venv/bin/python}
samples=${1:-4}
seqlen=${2:-512}
calib=$shared/data/tinyshakespeare/input.txt
out=$cache/runs/scale
mkdir -p "$cache/synth" "$out"

synth() { # shape layers → path
  local p=$cache/synth/synth-$1-$2l.gguf
  [[ -f "$p" ]] || "$py" "$root/scripts/synth_llama.py" --shape "$1" --type q4_k_m --layers "$2" -o "$p" >&2
  echo "$p"
}

run() { # name model args...
  local name=$1 model=$2; shift 2
  local dir=$out/$name
  rm -rf "$dir"
  echo "== $name ($samples × $seqlen)" >&2
  /usr/bin/time -v "$bin" --json quantize "$model" --calib "$calib" --samples "$samples" --seqlen "$seqlen" \
    -o "$dir" "$@" > "$out/$name.json" 2> "$out/$name.time"
  local rss wall
  rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$out/$name.time")
  wall=$(awk '/Elapsed \(wall clock\)/ {print $NF}' "$out/$name.time")
  "$py" - "$out/$name.json" "$name" "$rss" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["passes"][0] if r["passes"] else None
layers = len({l["name"].split(".")[1] for l in p["layers"]}) if p else None
solve = sum(l["seconds"] for l in p["layers"]) if p else None
print(json.dumps({"run": sys.argv[2], "peak_rss_gb": int(sys.argv[3]) / 1048576, "wall": sys.argv[4],
                  "pass_seconds": p["seconds"] if p else None, "blocks": layers,
                  "quantize_seconds": solve, "spilled": p["spilled"] if p else None}))
PY
}

m7a=$(synth 7b 4); m7b=$(synth 7b 8); m70=$(synth 70b 4)
{
  run gptq-7b-4l "$m7a" --method gptq --format gptq
  run gptq-7b-8l "$m7b" --method gptq --format gptq
  run stats-70b-4l "$m70" --method mse --format gptq
} | tee "$out/summary.jsonl"
