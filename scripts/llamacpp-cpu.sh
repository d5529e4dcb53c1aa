# Sourced by setup-python.sh and setup-llamacpp-tools.sh: llama.cpp is built for this CPU's vector
# extensions (GGML_NATIVE stays off so that AMX stays off): the machines this runs on differ
# (AVX-512 + AMX Xeons, AVX2-only EPYCs), and a build with AVX-512 dies with SIGILL on a CPU without
# it. Sets `cpu_args` (cmake flags, an array) and `tag` (the feature set that keys every cache).
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { [[ "$cpu_flags" == *" $1 "* ]]; }
onoff() { if has "$1"; then echo ON; else echo OFF; fi; }
avx512=OFF
if has avx512f && has avx512bw && has avx512vl && has avx512cd && has avx512dq; then avx512=ON; fi
vnni=OFF; bf16=OFF
if [[ $avx512 == ON ]]; then vnni=$(onoff avx512_vnni); bf16=$(onoff avx512_bf16); fi
cpu_args=(-DGGML_NATIVE=OFF -DGGML_AVX="$(onoff avx)" -DGGML_AVX2="$(onoff avx2)" -DGGML_FMA="$(onoff fma)"
  -DGGML_F16C="$(onoff f16c)" -DGGML_AVX512=$avx512 -DGGML_AVX512_VNNI=$vnni -DGGML_AVX512_BF16=$bf16
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
tag="avx2-$(onoff avx2)-avx512-$avx512-vnni-$vnni-bf16-$bf16"
