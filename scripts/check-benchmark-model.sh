#!/usr/bin/env bash
# The must-show checks on the 1.5B benchmark model (Qwen2.5-Coder-1.5B-Instruct, upstream Q4_K_M GGUF):
# every quantkit command runs on it, our perplexity equals llama.cpp's, the HF folder export-hf rebuilds
# tokenizes like llama.cpp and renders the chat template, and generation answers a coding prompt.
# Not part of CI (the model is 1.1 GB and the runs take ~30 minutes on 2 cores); CI covers the same paths
# on stories260K / SmolLM2.
#
#   bash scripts/check-benchmark-model.sh            # everything; logs in $OUT (default /tmp/quantkit-bench-check)
#   CHUNKS=4 bash scripts/check-benchmark-model.sh   # a quicker perplexity comparison (default 20 chunks)
#
# Needs: a release build (`cargo build --release --bin quantkit`), python with llama_cpp + tokenizers
# (PY, default .venv/bin/python: scripts/setup-python.sh --with-llama-cpp) and python with transformers
# (PY_TF, default $PY; only for the chat-template check, skipped when transformers is missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
qk=${QUANTKIT:-${CARGO_TARGET_DIR:-$root/target}/release/quantkit}
py=${PY:-$root/.venv/bin/python}
py_tf=${PY_TF:-$py}
shared=${QUANTKIT_SHARED:-$root/../shared}
[[ -d $shared/data ]] || shared=/work/shared
wiki=$shared/data/wikitext-2-raw/wiki.test.raw
chunks=${CHUNKS:-20}
threads=${THREADS:-2}
out=${OUT:-/tmp/quantkit-bench-check}
mkdir -p "$out"
[[ -x $qk ]] || { echo "no quantkit binary at $qk: cargo build --release --bin quantkit" >&2; exit 1; }

model=$(bash "$root/scripts/fetch-models.sh" | tail -n 1)
bin=$(bash "$root/scripts/setup-llamacpp-tools.sh" | tail -n 1)
step() { echo; echo "== $*"; }

step "inspect"
"$qk" inspect "$model" | tail -n 6

step "perplexity, wiki.test.raw, ctx 512, $chunks chunks: llama.cpp vs quantkit"
t0=$(date +%s)
nice -n 10 "$bin/llama-perplexity" -m "$model" -f "$wiki" -c 512 --chunks "$chunks" -t "$threads" >"$out/llama-ppl.log" 2>&1
t1=$(date +%s)
lppl=$(grep -o 'Final estimate: PPL = [0-9.]*' "$out/llama-ppl.log" | awk '{print $NF}')
echo "llama.cpp: PPL $lppl ($((t1 - t0)) s)"
nice -n 10 "$qk" ppl "$model" --text "$wiki" --ctx 512 --chunks "$chunks" --threads "$threads" --quiet --json >"$out/qk-ppl.json"
qppl=$("$py" -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["ppl"])' "$out/qk-ppl.json")
echo "quantkit:  PPL $qppl ($(date +%s | awk -v t="$t1" '{print $1 - t}') s)"
"$py" - "$lppl" "$qppl" <<'PY'
import sys
l, q = map(float, sys.argv[1:])
d = q / l - 1
print(f"difference {100 * d:+.3f} % (limit 0.5 %)")
sys.exit(0 if abs(d) < 0.005 else 1)
PY

step "kld: our Q3_K_M of the model against the model, 2 chunks"
nice -n 10 "$qk" convert "$model" --type q3_k_m -o "$out/q3_k_m.gguf" --quiet
nice -n 10 "$qk" kld "$out/q3_k_m.gguf" --base "$model" --text "$wiki" --chunks 2 --threads "$threads" --quiet

step "export-hf, then the rebuilt tokenizer against llama.cpp's on the same GGUF"
rm -rf "$out/hf"
nice -n 10 "$qk" export-hf "$model" -o "$out/hf" --dtype bf16 --quiet
"$py" "$root/scripts/check_hf_tokenizer.py" "$model" "$out/hf" "$wiki" "$root/crates/engine/src/tokenizer.rs" 2>/dev/null | tail -n 1

step "generate --chat (greedy): the answer, and our rendered prompt against transformers' apply_chat_template"
prompt="Write a Python function that reverses a string."
nice -n 10 "$qk" generate "$model" --chat -p "$prompt" -n 200 --threads "$threads" --json --quiet >"$out/generate.json"
"$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["text"])' "$out/generate.json"
if "$py_tf" -c 'import transformers' 2>/dev/null; then
  "$py_tf" - "$out/hf" "$prompt" "$out/generate.json" <<'PY'
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
msgs = [{"role": "user", "content": sys.argv[2]}]
ref = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
ours = json.load(open(sys.argv[3]))
assert ours["prompt"] == ref, (ours["prompt"], ref)
assert ours["prompt_tokens"] == tok(ref, add_special_tokens=False)["input_ids"]
print("chat template: transformers on the exported folder renders and tokenizes the same prompt")
PY
else
  echo "(no transformers for $py_tf: chat-template comparison skipped; set PY_TF)"
fi

step "bench"
nice -n 10 "$qk" bench "$model" -p 128 -n 32 --threads "$threads"
echo
echo "all checks passed (logs in $out)"
