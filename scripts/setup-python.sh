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

# The CPU feature set llama.cpp is built for (cmake flags, cache tag): scripts/llamacpp-cpu.sh.
source "$(dirname "${BASH_SOURCE[0]}")/llamacpp-cpu.sh"
cmake_args="${cpu_args[*]}"

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
