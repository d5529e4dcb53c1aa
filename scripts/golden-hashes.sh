#!/usr/bin/env bash
# Behaviour, byte for byte: sha256 of every output file of a fixed set of commands on the real
# fixtures (stories260K and SmolLM2-135M from ../shared), one line per file, so that a refactor can
# prove it changed nothing.
#
#   bash scripts/golden-hashes.sh [BIN] > hashes.txt        record (BIN: default target/release/quantkit)
#   bash scripts/golden-hashes.sh --check FILE [BIN]         compare with a recording (exit 1 on a difference)
#
# Covered: `convert` with every llama-quantize type/mix, with and without an imatrix (the imatrix comes
# from `quantize --method rtn --imatrix` on tinyshakespeare); `quantize` rtn/gptq/awq into every
# integer layout (gptq, gptq-v2, awq, compressed-tensors) and gguf:q4_k_m; `export-hf` of a GGUF and of
# a GPTQ folder. report.json files (timings) are left out. The calibration pass runs the engine, whose
# batch path depends on the CPU (AMX or not): compare recordings made on the same kind of machine.
# tests/fixtures/golden-hashes.txt is the recording made by the code before the seams refactor
# (issue 19) on this project's x86-64 machines.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
check=""
if [[ "${1:-}" == "--check" ]]; then
  check=$(realpath "$2")
  shift 2
fi
bin=${1:-$root/target/release/quantkit}
shared=${QUANTKIT_SHARED:-$root/../shared}
stories=$shared/models/stories260K
smol=$shared/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
calib=$shared/data/tinyshakespeare/input.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
q() { "$bin" --quiet --threads 2 "$@" > /dev/null; }

types="f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k"
run_model() {
  local tag=$1 model=$2 samples=$3 seqlen=$4
  local d=$work/$tag
  mkdir -p "$d"
  # Relative paths from here on: a GGUF converted with --imatrix records the imatrix path as given.
  cd "$d"
  d=.
  q quantize "$model" --method rtn --calib "$calib" --samples "$samples" --seqlen "$seqlen" \
    --format gguf:q4_k_m --imatrix -o "$d/im"
  for t in $types; do
    q convert "$model" --type "$t" -o "$d/convert-$t.gguf"
    case $t in f32|f16|bf16|q8_0) ;; *)
      q convert "$model" --type "$t" --imatrix "$d/im/imatrix.gguf" -o "$d/convert-$t-imatrix.gguf" ;;
    esac
  done
  for m in rtn gptq awq; do
    local fmts=(--format gptq --format gptq-v2 --format awq --format compressed-tensors)
    local extra=()
    [[ $m == awq ]] || fmts+=(--format gguf:q4_k_m)
    # act-order needs g_idx, which awq/compressed-tensors lack: static groups (as the CLI asks).
    [[ $m == gptq ]] && extra=(--static-groups)
    q quantize "$model" --method "$m" --calib "$calib" --samples "$samples" --seqlen "$seqlen" \
      "${fmts[@]}" "${extra[@]}" -o "$d/quantize-$m"
  done
  q quantize "$model" --method gptq --no-act-order --calib "$calib" --samples "$samples" --seqlen "$seqlen" \
    --format gptq --format gguf:q3_k_m -o "$d/quantize-gptq-noact"
  q export-hf "$d/convert-q4_k_m.gguf" -o "$d/export-gguf"
  q export-hf "$d/quantize-gptq/gptq" -o "$d/export-gptq"
  rm -f "$d"/*/report.json
  cd "$work"
}
run_model stories "$stories" 8 64
run_model smollm2 "$smol" 4 64

out=$(cd "$work" && find . -type f | LC_ALL=C sort | xargs sha256sum)
if [[ -z "$check" ]]; then
  echo "$out"
else
  if diff <(echo "$out") "$check"; then
    echo "golden hashes: all $(echo "$out" | wc -l) outputs identical to $check"
  else
    echo "golden hashes: outputs differ from $check (lines above: < now, > recorded)" >&2
    exit 1
  fi
fi
