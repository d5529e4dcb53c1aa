#!/usr/bin/env bash
# The project's test command (README, .ci/run): Rust unit + end-to-end tests, then the Python interop
# tests that check our files with independent readers (gguf-py; llama.cpp via llama-cpp-python).
#
#   QUANTKIT_SHARED   fixtures folder (default ../shared)
#   QUANTKIT_LLAMA_CPP=0  skip building llama-cpp-python (its tests then skip)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export QUANTKIT_SHARED=${QUANTKIT_SHARED:-$root/../shared}

echo "== cargo build + tests (release) =="
cargo build --release 2>&1 | tail -n 3
cargo test --release --workspace 2>&1 | tee /tmp/quantkit-cargo-test.log | grep -E "^(test |test result|running|error|warning: unused)" || true
if grep -qE "^test result: FAILED|^error" /tmp/quantkit-cargo-test.log || ! grep -q "^test result: ok" /tmp/quantkit-cargo-test.log; then
  echo "cargo tests failed" >&2
  tail -n 60 /tmp/quantkit-cargo-test.log >&2
  exit 1
fi

echo "== python interop tests =="
if [[ "${QUANTKIT_LLAMA_CPP:-1}" == "1" ]]; then
  venv=$(bash scripts/setup-python.sh --with-llama-cpp | tail -n 1)
else
  venv=$(bash scripts/setup-python.sh | tail -n 1)
fi
QUANTKIT_BIN="$root/target/release/quantkit" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python
