#!/usr/bin/env python3
"""Run llama.cpp's quantizer (what `llama-quantize` runs: `llama_model_quantize`) through
llama-cpp-python and print the wall time as JSON. Used as the peer in `cargo bench --bench quantize`.

    python scripts/llamacpp_quantize.py model-f16.gguf out-q4_k_m.gguf 15 --threads 2
"""
import argparse
import ctypes
import json
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("ftype", type=int, help="llama_ftype, e.g. 15 = Q4_K_M, 12 = Q3_K_M, 10 = Q2_K")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = args.ftype, args.threads
    t = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(args.src.encode(), args.dst.encode(), ctypes.byref(p))
    print(json.dumps({"seconds": time.perf_counter() - t, "rc": rc}))
    raise SystemExit(0 if rc == 0 else 1)


if __name__ == "__main__":
    main()
