#!/usr/bin/env bash
# Create the Python environment the interop tests use: gguf-py (the reference GGUF reader and
# quantizer), numpy, pytest, tokenizers; with --with-llama-cpp also llama-cpp-python (builds
# llama.cpp from source, ~8 minutes on 2 cores; the wheel is cached in ~/.cache/quantkit/wheels).
#
# llama.cpp is built without its AMX kernels: on the Xeon machines the CPU advertises AMX, and
# ggml's AMX matmul segfaults on quantized models (Q4_1/Q8_0) even for llama.cpp's own files.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${QUANTKIT_VENV:-$root/.venv}
with_llama=0
[[ "${1:-}" == "--with-llama-cpp" ]] && with_llama=1

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  'gguf==0.19.0' 'numpy>=1.26' 'pytest>=8' 'tokenizers>=0.20'

# llama.cpp is built for this CPU's vector extensions (GGML_NATIVE stays off so that AMX stays off):
# the machines this runs on differ (AVX-512 + AMX Xeons, AVX2-only EPYCs), and a wheel built with
# AVX-512 dies with SIGILL on a CPU without it. The cached wheel and the installed one are keyed by
# that feature set.
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { [[ "$cpu_flags" == *" $1 "* ]]; }
onoff() { if has "$1"; then echo ON; else echo OFF; fi; }
avx512=OFF
if has avx512f && has avx512bw && has avx512vl && has avx512cd && has avx512dq; then avx512=ON; fi
vnni=OFF; bf16=OFF
if [[ $avx512 == ON ]]; then vnni=$(onoff avx512_vnni); bf16=$(onoff avx512_bf16); fi
cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=$(onoff avx) -DGGML_AVX2=$(onoff avx2) -DGGML_FMA=$(onoff fma) \
  -DGGML_F16C=$(onoff f16c) -DGGML_AVX512=$avx512 -DGGML_AVX512_VNNI=$vnni -DGGML_AVX512_BF16=$bf16 \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
tag="avx2-$(onoff avx2)-avx512-$avx512-vnni-$vnni-bf16-$bf16"

if [[ $with_llama == 1 ]] && { ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null \
    || [[ "$(cat "$venv/.llama-cpp-cpu" 2>/dev/null)" != "$tag" ]]; }; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/quantkit/wheels/$tag
  mkdir -p "$cache"
  if ! ls "$cache"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python 0.3.36 for $tag (llama.cpp from source, several minutes)..." >&2
    CMAKE_ARGS="$cmake_args" \
      "$venv/bin/python" -m pip wheel -q --no-deps --no-cache-dir -w "$cache" 'llama-cpp-python==0.3.36'
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    "$cache"/llama_cpp_python-0.3.36-*.whl
  # Its own dependencies (numpy, typing-extensions, diskcache, jinja2), once.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$cache"/llama_cpp_python-0.3.36-*.whl
  echo "$tag" > "$venv/.llama-cpp-cpu"
fi
echo "$venv"
