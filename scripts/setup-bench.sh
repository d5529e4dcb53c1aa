#!/usr/bin/env bash
# Peers for `cargo bench --bench quantize`: llama.cpp's own converter (convert_hf_to_gguf.py, which
# needs torch + transformers) and llama.cpp's quantizer (llama-cpp-python, see setup-python.sh).
# Not needed by the tests; several GB of downloads (torch), so it is a separate, opt-in step.
#
#   bash scripts/setup-bench.sh        # → ~/.cache/quantkit/bench-venv, ~/.cache/quantkit/llama.cpp-src
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/quantkit
venv=$cache/bench-venv
src=$cache/llama.cpp-src

bash "$root/scripts/setup-python.sh" --with-llama-cpp >/dev/null
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check torch transformers sentencepiece \
  protobuf safetensors numpy cmake scikit-build-core
# The converter of the same llama.cpp commit that llama-cpp-python 0.3.36 vendors: its sdist.
if [[ ! -f "$src/convert_hf_to_gguf.py" ]]; then
  tmp=$(mktemp -d)
  PATH="$venv/bin:$PATH" "$venv/bin/python" -m pip download -q --no-deps --no-binary :all: \
    --no-build-isolation -d "$tmp" 'llama-cpp-python==0.3.36'
  tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
  mkdir -p "$(dirname "$src")"
  rm -rf "$src"
  mv "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp" "$src"
  rm -rf "$tmp"
fi
echo "bench peers ready: $venv/bin/python $src/convert_hf_to_gguf.py"
