#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input (cargo-fuzz / libFuzzer on nightly).
#
#   bash scripts/fuzz.sh                 all targets, 10^7 executions each
#   bash scripts/fuzz.sh gguf imatrix    some targets
#   RUNS=N      executions per target (default 10000000)
#   TIME=S      stop each target after S seconds instead
#   JOBS=N      targets fuzzed at once (default 1)
#   SANITIZER=address   build with ASan (default none: the parsers are safe Rust; ASan is ~3x slower)
#
# Targets are listed in crates/cli/src/fuzzing.rs (TARGETS); each has a one-line file in
# tests/fuzz/fuzz_targets/. Seeds: tests/fuzz/corpus/<target>/ (small, committed; regenerate with
# scripts/fuzz_seeds.py). What the fuzzer learns goes to tests/fuzz/work/<target>/ (not committed).
# A crash, timeout (> 30 s) or allocation over 1 GiB is copied to tests/fuzz/regressions/<target>/:
# fix it and commit the file; tests/fuzz_corpus.rs replays all of them in CI on stable Rust.
# Summary: tests/fuzz/work/summary.tsv (target, executions, seconds, exec/s, corpus size, crashes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/tests/fuzz"
RUNS=${RUNS:-10000000}
JOBS=${JOBS:-1}
SANITIZER=${SANITIZER:-none}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=($(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^quantkit-fuzz$'))
fi
cargo +nightly fuzz build --fuzz-dir . -O -s "$SANITIZER" >&2
mkdir -p work
limit=(-runs="$RUNS")
[[ -n "${TIME:-}" ]] && limit=(-max_total_time="$TIME")

fuzz_one() {
  local t=$1 log="work/$1.log"
  rm -rf "artifacts/$t"  # earlier finds were copied to regressions/ when they were made
  mkdir -p "work/$t" "artifacts/$t"
  local start=$SECONDS rc=0
  cargo +nightly fuzz run --fuzz-dir . -O -s "$SANITIZER" "$t" "work/$t" "corpus/$t" -- \
    "${limit[@]}" -timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  local secs=$((SECONDS - start))
  local runs eps
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  local crashes=0
  for f in artifacts/"$t"/*; do
    [[ -e "$f" ]] || continue
    mkdir -p "regressions/$t"
    cp "$f" "regressions/$t/"
    crashes=$((crashes + 1))
    echo "$t: $(basename "$f") -> tests/fuzz/regressions/$t/ ($(grep -m1 -E 'panicked|ERROR' "$log" || true))" >&2
  done
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${runs:-0}" "$secs" "${eps:-0}" "$(ls "work/$t" | wc -l)" "$crashes" \
    >>work/summary.tsv
  [[ $rc -eq 0 && $crashes -eq 0 ]]
}
export -f fuzz_one
export SANITIZER
export LIMIT="${limit[*]}"

printf 'target\texecutions\tseconds\texec_per_s\tcorpus\tcrashes\n' >work/summary.tsv
status=0
if [[ $JOBS -gt 1 ]]; then
  printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'limit=($LIMIT); fuzz_one {}' || status=1
else
  for t in "${targets[@]}"; do fuzz_one "$t" || status=1; done
fi
column -t work/summary.tsv
exit $status
