#!/usr/bin/env bash
# A Python with the real compressed-tensors package (0.20.0, which needs torch + transformers), used by
# tests/python/test_quantized_layouts.py to decompress our compressed-tensors checkpoints. Prints the
# interpreter's path on its last line.
#
#   bash scripts/setup-ct.sh            # reuse ~/.cache/quantkit/bench-venv if it has torch, else
#                                       # create ~/.cache/quantkit/ct-venv (CPU torch)
#   bash scripts/setup-ct.sh --check    # print the path only if it is ready; exit 1 otherwise
#   QUANTKIT_CT_VENV=/path              # use (or create) that venv instead
#
# torch: the CPU-only wheel from download.pytorch.org/whl/cpu is tried first (~200 MB, no CUDA
# libraries); where that index is unreachable, PyPI's default wheel is used, which pulls ~2.8 GB of
# CUDA libraries (torch 2.15 + nvidia-* + triton; ~40 s download at 50 MB/s, ~2 min to install on 2 cores).
set -euo pipefail
cache=${XDG_CACHE_HOME:-$HOME/.cache}/quantkit
ct_version=0.20.0
check=0
[[ "${1:-}" == "--check" ]] && check=1

has() { "$1/bin/python" -c "$2" >/dev/null 2>&1; }
# metadata only: importing torch + transformers takes ~9 s
ready() { has "$1" "import importlib.util as u, importlib.metadata as m
assert all(u.find_spec(p) for p in ('torch', 'transformers', 'safetensors', 'compressed_tensors'))
assert m.version('compressed-tensors') == '$ct_version'"; }

if [[ -n "${QUANTKIT_CT_VENV:-}" ]]; then
  venv=$QUANTKIT_CT_VENV
elif [[ -x "$cache/bench-venv/bin/python" ]] && has "$cache/bench-venv" "import importlib.util as u; assert u.find_spec('torch')"; then
  venv=$cache/bench-venv
else
  venv=$cache/ct-venv
fi

if ready "$venv"; then
  echo "$venv/bin/python"
  exit 0
fi
if [[ $check == 1 ]]; then
  echo "no compressed-tensors $ct_version in $venv (run bash scripts/setup-ct.sh)" >&2
  exit 1
fi

pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if ! has "$venv" "import importlib.util as u; assert u.find_spec('torch')"; then
  echo "installing torch into $venv ..." >&2
  if ! "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null; then
    echo "CPU wheel index unreachable; installing torch from the default index (CUDA build, ~2.8 GB)" >&2
    "${pip[@]}" torch
  fi
fi
"${pip[@]}" "compressed-tensors==$ct_version" transformers safetensors numpy
ready "$venv" || { echo "compressed-tensors $ct_version still not importable in $venv" >&2; exit 1; }
echo "$venv/bin/python"
