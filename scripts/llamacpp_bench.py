#!/usr/bin/env python3
"""The peer for `quantkit bench`: llama.cpp's prompt-processing and generation speed on the same GGUF,
measured the way `llama-bench` does (through llama-cpp-python's C API, which is llama.cpp itself):

- pp: one `llama_decode` of P tokens (n_batch = n_ubatch = P) into an empty cache, logits for the
  last token only;
- tg: N `llama_decode` calls of one token each, after a one-token warm-up.

Each test is repeated --reps times after a warm-up run; the best run is printed as one JSON line
per model:

    .venv/bin/python scripts/llamacpp_bench.py -p 512 -n 128 --threads 2 model.gguf
"""
import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("-p", "--prompt", type=int, default=512)
    ap.add_argument("-n", "--gen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import llama_cpp as L

    L.llama_backend_init()
    for path in args.models:
        mp = L.llama_model_default_params()
        mp.use_mmap = True
        model = L.llama_model_load_from_file(path.encode(), mp)
        if not model:
            raise SystemExit(f"{path}: llama.cpp could not load it")
        cp = L.llama_context_default_params()
        cp.n_ctx = args.prompt + args.gen + 8
        cp.n_batch = max(args.prompt, 1)
        cp.n_ubatch = max(args.prompt, 1)
        cp.n_threads = args.threads
        cp.n_threads_batch = args.threads
        cp.no_perf = True
        ctx = L.llama_init_from_model(model, cp)
        vocab = L.llama_model_get_vocab(model)
        n_vocab = L.llama_vocab_n_tokens(vocab)
        mem = L.llama_get_memory(ctx)

        def decode(tokens):
            arr = (L.llama_token * len(tokens))(*tokens)
            b = L.llama_batch_get_one(arr, len(tokens))
            rc = L.llama_decode(ctx, b)
            if rc != 0:
                raise SystemExit(f"llama_decode failed: {rc}")

        # The same pseudo-random tokens llama-bench uses (any token ids do).
        import random

        rng = random.Random(1234)
        prompt = [rng.randrange(n_vocab) for _ in range(args.prompt)]

        def run_pp():
            L.llama_memory_clear(mem, True)
            t = time.perf_counter()
            decode(prompt)
            L.llama_synchronize(ctx)
            return time.perf_counter() - t

        def run_tg():
            L.llama_memory_clear(mem, True)
            decode([prompt[0]])
            t = time.perf_counter()
            for i in range(args.gen):
                decode([prompt[(i + 1) % len(prompt)]])
            L.llama_synchronize(ctx)
            return time.perf_counter() - t

        out = {"model": path, "threads": args.threads, "engine": "llama.cpp (llama-cpp-python "
               + L.__version__ + ")"}
        if args.prompt:
            run_pp()
            best = min(run_pp() for _ in range(args.reps))
            out["pp"] = args.prompt
            out["pp_tok_s"] = round(args.prompt / best, 2)
        if args.gen:
            run_tg()
            best = min(run_tg() for _ in range(args.reps))
            out["tg"] = args.gen
            out["tg_tok_s"] = round(args.gen / best, 2)
        print(json.dumps(out), flush=True)
        L.llama_free(ctx)
        L.llama_model_free(model)


if __name__ == "__main__":
    main()
