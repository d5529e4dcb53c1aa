#!/usr/bin/env bash
# llama.cpp's command-line tools — llama-quantize, llama-imatrix, llama-perplexity, llama-bench — built
# from the llama.cpp that llama-cpp-python 0.3.36 vendors (the same code as the Python bindings the
# interop tests use; its sdist's vendor/llama.cpp). The scoreboard (scripts/scoreboard.sh) and the
# benchmark-model checks call them.
#
# Built for this CPU's vector extensions with the same feature tag as setup-python.sh (GGML_NATIVE off
# so that the AMX kernels stay off: ggml's AMX matmul segfaulted on this project's Xeons), static
# libraries, Release, no curl/openssl, only the targets above. Cached per feature set; a second run with
# the tools in place does nothing. Prints the bin directory on the last line.
#
#   bin=$(bash scripts/setup-llamacpp-tools.sh | tail -n 1)   # → ~/.cache/quantkit/llama.cpp-tools/<tag>/bin
#   "$bin/llama-perplexity" -m model.gguf -f wiki.test.raw -c 512 --chunks 20 -t 2
#
# Needs a C/C++ compiler and make; cmake comes from PyPI into the cache when none is on PATH.
# ~6–10 minutes on 2 cores. JOBS=n overrides the parallelism (default 2).
set -euo pipefail
cache=${XDG_CACHE_HOME:-$HOME/.cache}/quantkit
version=0.3.36
llama_commit=0c1e57098   # ggml-org/llama.cpp commit vendored by 0.3.36 (its CHANGELOG)
targets=(llama-quantize llama-imatrix llama-perplexity llama-bench)

# The CPU feature set (cmake flags, cache tag), shared with setup-python.sh.
source "$(dirname "${BASH_SOURCE[0]}")/llamacpp-cpu.sh"

root_dir=$cache/llama.cpp-tools/$tag
bin=$root_dir/bin
have_all() { local t; for t in "${targets[@]}"; do [[ -x "$bin/$t" ]] || return 1; done; }
if have_all && [[ "$(cat "$root_dir/.version" 2>/dev/null)" == "llama-cpp-python-$version" ]]; then
  echo "$bin"
  exit 0
fi

# cmake (and scikit-build-core, which pip needs to read the sdist's metadata) in a small cached venv.
tools_venv=$cache/llama.cpp-tools/venv
if [[ ! -x "$tools_venv/bin/cmake" ]]; then
  python3 -m venv "$tools_venv"
  "$tools_venv/bin/python" -m pip install -q --disable-pip-version-check 'cmake>=3.21' scikit-build-core >&2
fi
cmake=$(command -v cmake || true)
if [[ -z "$cmake" ]] || ! "$cmake" --version >/dev/null 2>&1; then cmake=$tools_venv/bin/cmake; fi

# The source: reuse setup-bench.sh's extraction when it is there (same sdist), else fetch the sdist.
src=$cache/llama.cpp-src
if [[ ! -f "$src/CMakeLists.txt" || ! -d "$src/tools/quantize" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "downloading the llama-cpp-python $version sdist for its vendored llama.cpp..." >&2
  PATH="$tools_venv/bin:$PATH" "$tools_venv/bin/python" -m pip download -q --disable-pip-version-check \
    --no-deps --no-binary :all: --no-build-isolation -d "$tmp" "llama-cpp-python==$version" >&2
  tar -xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp"
  mkdir -p "$(dirname "$src")"
  rm -rf "$src"
  mv "$tmp/llama_cpp_python-$version/vendor/llama.cpp" "$src"
fi

build=$root_dir/build
mkdir -p "$root_dir"
echo "building ${targets[*]} for $tag in $build (several minutes)..." >&2
"$cmake" -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF \
  "${cpu_args[@]}" >"$root_dir/cmake.log" 2>&1 \
  || { tail -n 30 "$root_dir/cmake.log" >&2; exit 1; }
"$cmake" --build "$build" --config Release -j "${JOBS:-2}" --target "${targets[@]}" >"$root_dir/build.log" 2>&1 \
  || { tail -n 30 "$root_dir/build.log" >&2; exit 1; }
mkdir -p "$bin"
for t in "${targets[@]}"; do cp "$build/bin/$t" "$bin/$t"; done
"$bin/llama-quantize" --help >/dev/null 2>&1 || true   # the tools run (static: no libs to find)
echo "$llama_commit" > "$root_dir/llama.cpp-commit"
echo "llama-cpp-python-$version" > "$root_dir/.version"
echo "$bin"
