#!/usr/bin/env bash
# A Python with torch + transformers (the venv of scripts/setup-ct.sh) plus bitsandbytes 0.50.2 and
# accelerate, used by tests/python/test_bnb_nf4.py. Prints the interpreter's path on its last line.
#
#   bash scripts/setup-bnb.sh            # install what is missing
#   bash scripts/setup-bnb.sh --check    # print the path only if it is ready; exit 1 otherwise
#
# bitsandbytes 0.50.2 (the newest on PyPI when written) runs quantize_4bit / dequantize_4bit and the
# 4-bit GEMM on CPU with torch 2.15 (its CPU backend: C++ kernels for dequantize_4bit and the 8-bit
# blockwise map, torch code for quantize_4bit); transformers' bitsandbytes quantizer needs accelerate.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bnb_version=0.50.2
check=0
[[ "${1:-}" == "--check" ]] && check=1

if [[ $check == 1 ]]; then
  py=$(bash "$here/setup-ct.sh" --check | tail -1)
else
  py=$(bash "$here/setup-ct.sh" | tail -1)
fi

# metadata first (cheap), then a real CPU round trip through bitsandbytes' 4-bit kernels
ready() {
  "$py" -c "import importlib.metadata as m, importlib.util as u
assert m.version('bitsandbytes') == '$bnb_version' and u.find_spec('accelerate')" >/dev/null 2>&1 &&
  "$py" -c "import torch, bitsandbytes.functional as F
q, s = F.quantize_4bit(torch.linspace(-1, 1, 128), blocksize=64, quant_type='nf4', compress_statistics=True)
assert torch.allclose(F.dequantize_4bit(q, s), torch.linspace(-1, 1, 128), atol=0.2)" >/dev/null 2>&1
}

if ready; then
  echo "$py"
  exit 0
fi
if [[ $check == 1 ]]; then
  echo "no working bitsandbytes $bnb_version + accelerate beside $py (run bash scripts/setup-bnb.sh)" >&2
  exit 1
fi
"$py" -m pip install -q --disable-pip-version-check "bitsandbytes==$bnb_version" accelerate
ready || { echo "bitsandbytes $bnb_version installed in $py but its CPU 4-bit round trip fails" >&2; exit 1; }
echo "$py"
