#!/usr/bin/env bash
# The error of top-K KLD bases against the exact in-process KLD (docs/evaluation.md, "How large must K be").
#
#   bash scripts/kld_topk_error.sh BASE.gguf CHUNKS CTX TYPE...    e.g.
#   bash scripts/kld_topk_error.sh ../shared/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf 10 512 q2_k q3_k_m q4_k_m
#
# Each TYPE is made from BASE with `quantkit convert`, then one `kld --measure-top-k` pass per model
# gives the exact KLD and what a top-K base (f32 and f16 log-probs), the full u16 base and llama.cpp's
# file would give; finally a real top-64 file is saved and scored, to show the file gives the same
# number as the measurement. Markdown rows on stdout, JSON beside in $OUT (default /tmp/kld-topk).
set -euo pipefail
base=$1; chunks=$2; ctx=$3; shift 3
QK=${QUANTKIT:-target/release/quantkit}
TEXT=${TEXT:-${QUANTKIT_SHARED:-../shared}/data/wikitext-2-raw/wiki.test.raw}
KS=${KS:-1,4,16,64,256,1024}
TAILS=${TAILS:-64,256}
OUT=${OUT:-/tmp/kld-topk}
mkdir -p "$OUT"
for t in "$@"; do
  m="$OUT/$(basename "$base" .gguf).$t.gguf"
  [[ -f $m ]] || "$QK" convert "$base" --type "$t" -o "$m" >/dev/null
  "$QK" kld "$m" --base "$base" --text "$TEXT" --chunks "$chunks" --ctx "$ctx" --measure-top-k "$KS" --measure-tail "$TAILS" --json \
    > "$OUT/$t.json"
  python3 - "$OUT/$t.json" "$t" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); e = j["exact"]
print(f"| {sys.argv[2]} | exact | | | {e['mean_kld']:.6f} | | | {100*e['same_top_p']:.2f} |")
for r in j["saved"]:
    tail = f" + {r['tail']} tail" if r["tail"] else ""
    name = {"topk": f"top-{r['k']}{tail} {r['dtype']}", "qklogit1": "QKLOGIT1 u16", "llama": "llama.cpp u16"}[r["format"]]
    print(f"| {sys.argv[2]} | {name} | {r['bytes_per_position']} | | {r['mean_kld']:.6f} | {r['abs_err']:+.2e} | {100*r['rel_err']:+.3f} % | {100*r['same_top_p']:.2f} |")
PY
done
# A real file (the default: top 64 + 64 tail samples, f16) saved, then scored against the last model.
"$QK" kld --base "$base" --text "$TEXT" --chunks "$chunks" --ctx "$ctx" --save-base "$OUT/top64.qklogits"
"$QK" kld "$m" --base "$OUT/top64.qklogits" --json > "$OUT/file-top64.json"
python3 -c "import json,sys; print('default file (top 64 + 64 tail, f16), last model: mean KLD', json.load(open(sys.argv[1]))['mean_kld'])" "$OUT/file-top64.json"
ls -l "$OUT/top64.qklogits"
